"""Start and stop the Triton server that the `nvidia-pytriton` wheel ships.

The wheel holds the `tritonserver` binary, its Python backend and one backend stub per Python
version. The stub runs the first `python` on PATH, so this environment's `bin/` goes first,
and the interpreter's own `lib/` joins LD_LIBRARY_PATH so the stub loads the same libpython.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plantdx.exceptions import ServerError
from plantdx.model_repository.names import ADMIN_HEADER

PR_SET_PDEATHSIG = 1
log = logging.getLogger(__name__)


def pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as exc:
        raise ServerError(
            "nvidia-pytriton is not installed: it provides the Triton server"
        ) from exc
    root = Path(pytriton.__file__).parent / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise ServerError(f"no tritonserver binary under {root}")
    return root


def _libs_dir() -> Path:
    import pytriton

    return Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"


def prepare_backend_dir(cache_dir: Path | None = None) -> Path:
    """A backend directory with the Python backend and the stub for this Python version."""
    root = pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"the Triton wheel has no Python-backend stub for Python {version}")
    base = cache_dir or Path(tempfile.gettempdir()) / f"plantdx-backends-{os.getuid()}-{version}"
    python_dir = base / "python"
    marker = python_dir / ".source"
    if not (marker.is_file() and marker.read_text() == str(root)):
        tmp = Path(tempfile.mkdtemp(prefix=".backends-", dir=base.parent))
        shutil.copytree(root / "backends" / "python", tmp / "python")
        shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
        os.chmod(tmp / "python" / "triton_python_backend_stub", 0o755)
        (tmp / "python" / ".source").write_text(str(root))
        shutil.rmtree(base, ignore_errors=True)
        os.rename(tmp, base)
    return base


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    libdirs = [str(_libs_dir()), str(sysconfig.get_config_var("LIBDIR") or "")]
    if env.get("LD_LIBRARY_PATH"):
        libdirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in libdirs if d)
    # The stub must see this environment's packages even when started from elsewhere.
    env.setdefault("PYTHONNOUSERSITE", "1")
    return env


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host if host not in ("", "0.0.0.0") else "0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...: field 3 of
    proc(5) is index 0), or None when the process is gone. The name may hold spaces and
    parentheses, so the split is after the last ')'."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split() or None


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").glob("[0-9]*"):
        fields = proc_stat(entry.name)
        if fields is not None and len(fields) > 1 and fields[1] == str(pid):
            out.append(int(entry.name))
    return out


def _process_state(pid: int) -> str | None:
    """The state letter of a process (R, S, Z...), or None when it is gone."""
    fields = proc_stat(pid)
    return fields[0] if fields else None


SHM_PREFIX = "/dev/shm/triton_python_backend_shm_region_"


def _shm_regions(pids: Sequence[int]) -> set[Path]:
    """The Python backend's shared-memory regions these processes have mapped."""
    out = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            at = line.find(SHM_PREFIX)
            if at >= 0 and not line.endswith("(deleted)"):
                out.add(Path(line[at:].strip()))
    return out


def _parse_flags(argv: Sequence[str]) -> dict[str, list[str]]:
    """tritonserver's flags, `--name=value` or `--name value`, every value of each kept."""
    out: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
                i += 1
            out.setdefault(name, []).append(value)
        i += 1
    return out


def _die_with_parent() -> None:
    # The server must not outlive the process that started it (Ctrl-C, kill, crash).
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    os.setpgrp()


def default_models(repository: Path) -> list[str]:
    """The models a server loads at start: the ensembles the repository has (plantdx first)."""
    explain = (repository / "plantdx_explain" / "config.pbtxt").is_file()
    return ["plantdx", *(["plantdx_explain"] if explain else [])]


class TritonServer:
    """One tritonserver child process; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        *,
        repository: str | Path,
        host: str = "127.0.0.1",
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        model_control: str = "explicit",
        load_models: Sequence[str] | None = None,
        admin_key: str | None = None,
        response_cache_bytes: int = 64 * 1024 * 1024,
        log_verbose: int = 0,
        log_file: str | Path | None = None,
        extra_args: Sequence[str] = (),
        exit_timeout_s: int = 30,
        restart_dead_stubs: bool = True,
        gpu_metrics: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.repository = Path(repository).resolve()
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.model_control = model_control
        # Default: the `plantdx` ensemble, and `plantdx_explain` when the repository has it.
        self.load_models = (
            list(load_models) if load_models is not None else default_models(self.repository)
        )
        self._admin_key = admin_key
        self.response_cache_bytes = response_cache_bytes
        self.log_verbose = log_verbose
        self.log_file = Path(log_file) if log_file else None
        self.extra_args = list(extra_args)
        self.exit_timeout_s = exit_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_handle: object | None = None
        self.restart_dead_stubs = restart_dead_stubs
        self.gpu_metrics = gpu_metrics
        # Added to the server's environment, which the Python-backend stubs inherit
        # (the capture settings, plantdx.capture).
        self.env = dict(env or {})
        # A command line supervised as given (see `wrapping`): binary and flags.
        self._wrapped: list[str] | None = None
        self._own_log: Path | None = None  # a log kept for error messages when none was asked
        self._watchdog: threading.Thread | None = None
        self._stopping = threading.Event()  # stubs die on purpose during shutdown
        self._abort = threading.Event()  # a stop asked for while starting
        self.stub_restarts: list[str] = []  # models reloaded because a stub died

    @classmethod
    def wrapping(cls, binary: str, argv: Sequence[str]) -> TritonServer:
        """Supervise a tritonserver command line as given: a container's own binary and
        backends, any repository location (s3://...). The stub watchdog and the drain on stop
        take the HTTP port, startup models, control mode, exit timeout and admin key from the
        flags; Triton's log goes to this process's stdout."""
        flags = _parse_flags(argv)

        def last(name: str, default: str) -> str:
            return flags.get(name, [default])[-1]

        key = None
        restricted = last("--http-restricted-api", "")
        if restricted.startswith("model-repository:") and "=" in restricted:
            header, _, key = restricted.split(":", 1)[1].partition("=")
            if header != ADMIN_HEADER:
                raise ServerError(
                    f"--http-restricted-api names header {header!r}; the supervisor sends "
                    f"{ADMIN_HEADER!r} for the drain and stub restarts"
                )
        server = cls(
            repository=last("--model-repository", "."),
            host=last("--http-address", "0.0.0.0"),
            http_port=int(last("--http-port", "8000")),
            grpc_port=int(last("--grpc-port", "8001")),
            metrics_port=int(last("--metrics-port", "8002")),
            model_control=last("--model-control-mode", "none"),
            load_models=flags.get("--load-model", []),
            admin_key=key or None,
            exit_timeout_s=int(last("--exit-timeout-secs", "30")),
        )
        server._wrapped = [binary, *argv]
        return server

    # -- addresses -------------------------------------------------------------------------
    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host

    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def command(self) -> list[str]:
        if self._wrapped is not None:
            return list(self._wrapped)
        binary = pytriton_root() / "bin" / "tritonserver"
        cmd = [
            str(binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={prepare_backend_dir()}",
            f"--cache-directory={pytriton_root() / 'caches'}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-metrics=true",
            f"--allow-gpu-metrics={str(self.gpu_metrics).lower()}",
            "--metrics-config=summary_latencies=true",
            "--metrics-interval-ms=1000",
            f"--model-control-mode={self.model_control}",
            "--strict-readiness=true",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--log-verbose={self.log_verbose}",
        ]
        if self.response_cache_bytes:
            cmd.append(f"--cache-config=local,size={self.response_cache_bytes}")
        if self.model_control == "explicit":
            cmd += [f"--load-model={m}" for m in self.load_models]
        if self._admin_key:
            cmd += [
                f"--http-restricted-api=model-repository:{ADMIN_HEADER}={self._admin_key}",
                f"--grpc-restricted-protocol=model-repository:{ADMIN_HEADER}={self._admin_key}",
            ]
        return cmd + self.extra_args

    def redacted_command(self) -> list[str]:
        key = self._admin_key
        return [a.replace(key, "***") if key else a for a in self.command()]

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, *, timeout_s: float = 120.0, wait_for: str | None = "plantdx") -> TritonServer:
        if self.is_alive():
            return self
        self._abort.clear()
        self._stopping.clear()
        if self._wrapped is None and not self.repository.is_dir():
            raise ServerError(f"model repository {self.repository} does not exist")
        for name, port in (
            ("HTTP", self.http_port),
            ("gRPC", self.grpc_port),
            ("metrics", self.metrics_port),
        ):
            if not port_free(self.host, port):
                raise ServerError(
                    f"{name} port {port} on {self.host} is already in use: stop whatever holds "
                    f"it or choose another port (--{name.lower().replace('grpc', 'grpc')}-port)"
                )
        out: Any = None  # inherit: a supervised container's log is its stdout
        if self._wrapped is None:
            if not self.log_file:
                # No log asked for: keep one anyway, so a failed start can say why.
                fd, name = tempfile.mkstemp(prefix="plantdx-triton-", suffix=".log")
                os.close(fd)
                self._own_log = Path(name)
            log_path = self.log_file or self._own_log
            assert log_path is not None
            log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(log_path, "ab")  # noqa: SIM115
        self._log_handle = out
        self._proc = subprocess.Popen(
            self.command(),
            env={**server_env(), **self.env} if self._wrapped is None else None,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            preexec_fn=_die_with_parent,
        )
        try:
            self.wait_ready(timeout_s=timeout_s, model=wait_for)
        except BaseException:
            self.stop()
            raise
        if self.restart_dead_stubs and self.model_control == "explicit":
            # The first scan before returning: a zombie's command line is empty, so a stub
            # must be seen alive once for its death to be attributed to its model.
            self._watchdog = threading.Thread(
                target=self._watch_stubs, args=(self.stubs(),), daemon=True
            )
            self._watchdog.start()
        return self

    # -- stub watchdog -----------------------------------------------------------------------
    def stubs(self) -> dict[int, tuple[str, str]]:
        """Live Python-backend stubs of this server: pid → (model, version)."""
        out = {}
        for pid in _children(self.pid or -1):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if len(cmd) > 1 and cmd[0].endswith(b"triton_python_backend_stub"):
                # argv[1] is <repository>/<model>/<version>/model.py
                version_dir = Path(cmd[1].decode(errors="replace")).parent
                out[pid] = (version_dir.parent.name, version_dir.name)
        return out

    def _ready_versions(self) -> set[tuple[str, str]] | None:
        try:
            index = self._repository_call("/index")
        except (urllib.error.URLError, OSError, ValueError):
            return None
        return {
            (str(m.get("name")), str(m.get("version")))
            for m in (index if isinstance(index, list) else [])
            if m.get("state") == "READY"
        }

    def _watch_stubs(self, known: dict[int, tuple[str, str]], interval_s: float = 1.0) -> None:
        """Reload a model whose stub died: Triton 2.51 does not restart it, and answers
        "Stub process is not healthy" for that instance until the model is reloaded."""
        suspects: set[int] = set()
        while self.is_alive() and not self._stopping.is_set():
            known.update(self.stubs())
            # Triton reaps the stubs it stops (unload, reload, failed load) with a blocking
            # waitpid, so they vanish; a stub killed behind its back stays a zombie until the
            # model is reloaded. Only a zombie seen on two scans in a row counts as dead.
            zombies = {pid for pid in known if _process_state(pid) == "Z"}
            confirmed = zombies & suspects
            suspects = zombies - confirmed
            if confirmed:
                ready = self._ready_versions() or set()
                for model in sorted({known[pid][0] for pid in confirmed if known[pid] in ready}):
                    if not self._stopping.is_set():
                        self._reload(model)
            for pid in confirmed:
                known.pop(pid, None)
            for pid in [p for p in known if _process_state(p) is None]:
                known.pop(pid, None)
            time.sleep(interval_s)

    def _reload(self, model: str) -> None:
        try:
            with urllib.request.urlopen(
                f"http://{self.http_url}/v2/models/{model}/config", timeout=10
            ) as resp:
                cfg = json.loads(resp.read())
            # Triton skips a load whose config is unchanged; a fresh parameter forces it.
            cfg.setdefault("parameters", {})["plantdx_restarted_at"] = {
                "string_value": str(time.time())
            }
            self._repository_call(
                f"/models/{model}/load", {"parameters": {"config": json.dumps(cfg)}}
            )
            self.stub_restarts.append(model)
            log.warning("a Python-backend stub of %s died; the model was reloaded", model)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.error("a stub of %s died and reloading it failed: %s", model, exc)

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _get(self, path: str, timeout: float = 2.0) -> int:
        url = f"http://{self.http_url}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return 0

    def is_ready(self, model: str | None = "plantdx") -> bool:
        if not self.is_alive():
            return False
        path = f"/v2/models/{model}/ready" if model else "/v2/health/ready"
        return self._get(path) == 200

    def wait_ready(self, *, timeout_s: float = 120.0, model: str | None = "plantdx") -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._abort.is_set():
                raise ServerError("stopped before the server was ready")
            if not self.is_alive():
                code = self._proc.returncode if self._proc else None
                raise ServerError(
                    f"tritonserver exited with code {code} while starting"
                    + (f"; see its log {self.log_file}" if self.log_file else "")
                    + self._log_tail()
                )
            if self.is_ready(model):
                return
            time.sleep(0.2)
        raise ServerError(
            f"tritonserver did not become ready within {timeout_s:.0f} s" + self._log_tail()
        )

    def request_stop(self) -> None:
        """Safe from a signal handler: a start in progress gives up (and stops the server)."""
        self._abort.set()

    def _log_tail(self, n: int = 8) -> str:
        path = self.log_file or self._own_log
        if not path or not path.is_file():
            return ""
        lines = path.read_text(errors="replace").splitlines()
        # Triton's error lines (E<date> ...) say why; the last lines say where it stopped.
        errors = [i for i, line in enumerate(lines) if line[:1] == "E" and line[1:5].isdigit()]
        keep = sorted(set(errors[-8:]) | set(range(max(0, len(lines) - n), len(lines))))
        key = self._admin_key
        text = "\n".join(lines[i].replace(key, "***") if key else lines[i] for i in keep)
        return "\nlast lines of the server log (and its errors):\n" + text

    def stop(self, *, timeout_s: float | None = None, drain: bool = True) -> int | None:
        """Drain, then SIGTERM, then SIGKILL after the timeout.

        Triton 2.51's SIGTERM stops every model's scheduler at once, so an ensemble request
        that is still in preprocessing fails at the classifier step. Draining first unloads
        the ensemble: requests already inside finish, new ones get "no available versions".
        """
        proc = self._proc
        if proc is None:
            return None
        self._stopping.set()
        if proc.poll() is None:
            if drain:
                self.drain(timeout_s=self.exit_timeout_s)
            # Triton removes these itself on a clean exit, but not those of stubs that were
            # killed, nor any after a SIGKILL: /dev/shm would fill up run after run.
            regions = _shm_regions([proc.pid, *_children(proc.pid)])
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s if timeout_s is not None else self.exit_timeout_s + 5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            # Unlinking only removes the name: a stub still exiting keeps its mapping.
            for region in regions:
                region.unlink(missing_ok=True)
        handle = self._log_handle
        if handle is not None and hasattr(handle, "close"):
            handle.close()
        self._log_handle = None
        if self._own_log is not None:
            self._own_log.unlink(missing_ok=True)
            self._own_log = None
        return proc.returncode

    def _repository_call(self, path: str, body: dict[str, object] | None = None) -> object:
        """POST to Triton's repository API with the admin key (never logged)."""
        headers = {"Content-Type": "application/json"}
        if self._admin_key:
            headers[ADMIN_HEADER] = self._admin_key
        data = json.dumps(body or {}).encode()
        req = urllib.request.Request(
            f"http://{self.http_url}/v2/repository{path}", data=data, headers=headers
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def drain(self, *, timeout_s: float = 30.0) -> bool:
        """Unload the served models and wait until their in-flight requests are done.

        Only in explicit model-control mode (the only mode with an unload API); returns
        whether everything drained within the timeout."""
        if self.model_control != "explicit" or not self.is_alive() or not self.load_models:
            return False
        try:
            for model in self.load_models:
                self._repository_call(f"/models/{model}/unload")
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.is_alive():
                index = self._repository_call("/index")
                busy = [
                    m
                    for m in (index if isinstance(index, list) else [])
                    if m.get("name") in self.load_models
                    and m.get("state") in ("READY", "UNLOADING")
                ]
                if not busy:
                    return True
                time.sleep(0.05)
        except (urllib.error.URLError, OSError, ValueError):
            pass  # the server is going down anyway; SIGTERM follows
        return False

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
