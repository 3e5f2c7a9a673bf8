"""`TritonServer`: start and stop the Triton server that the `nvidia-pytriton` wheel ships (or
supervise a given tritonserver command line), wait for readiness, drain before stopping.

Its rooms: `install.py` (where the wheel's binary, backend and stub live, the environment the
stubs need), `stub_env.py` (the allow-listed environment they get), `admin_key.py` (the key
that restricts every non-inference API: given, or made per run), `procs.py` (ports and /proc),
`repository_api.py` (Triton's repository API over HTTP), `watchdog.py` (reloading a model whose
stub died), `startup.py` (what a start checks and loads, and its log when it fails).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plantdx.exceptions import ServerError

from . import admin_key as keys
from .flags import parse_flags, server_settings
from .install import prepare_backend_dir, pytriton_root, server_env
from .procs import children, die_with_parent, free_port, port_free, proc_stat, shm_regions
from .repository_api import CallError, RepositoryApi
from .startup import (
    START_ATTEMPTS,
    crashed,
    default_models,
    http_status,
    log_tail,
    refuse_half_published,
    require_free_ports,
)
from .stub_env import scrubbed
from .watchdog import StubWatchdog, stubs_of

__all__ = [  # what callers import from here
    "TritonServer",
    "default_models",
    "free_port",
    "port_free",
    "prepare_backend_dir",
    "proc_stat",
    "pytriton_root",
    "refuse_half_published",
    "server_env",
]

log = logging.getLogger(__name__)


# Triton's response cache when one is asked for (`plantdx serve --response-cache`).
RESPONSE_CACHE_BYTES = 64 * 1024 * 1024


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
        response_cache_bytes: int = RESPONSE_CACHE_BYTES,
        log_verbose: int = 0,
        log_file: str | Path | None = None,
        extra_args: Sequence[str] = (),
        exit_timeout_s: int = 30,
        restart_dead_stubs: bool = True,
        gpu_metrics: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.location = str(repository)  # as given: a folder, or s3://...
        self.remote = "://" in self.location  # Triton reads it (s3://, gs://, as://)
        self.repository = Path(self.location) if self.remote else Path(repository).resolve()
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.model_control = model_control
        # Default: the `plantdx` ensemble, and `plantdx_explain` when the repository has it.
        self.load_models = (
            list(load_models) if load_models is not None else default_models(self.location)
        )
        self.extra_args = list(extra_args)
        # Every non-inference API is restricted (admin_key.RESTRICTED): by the key given, the
        # one the extra flags already use, or one made for this run and kept in a 0600 file.
        self._admin_key, self.key_generated = keys.resolve_key(
            parse_flags(self.extra_args), admin_key
        )
        self._key_files: list[Path] = []
        self.response_cache_bytes = response_cache_bytes
        self.log_verbose = log_verbose
        self.log_file = Path(log_file) if log_file else None
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
        self._watchdog: StubWatchdog | None = None
        self._stopping = threading.Event()  # stubs die on purpose during shutdown
        self._abort = threading.Event()  # a stop asked for while starting

    @classmethod
    def wrapping(
        cls, binary: str, argv: Sequence[str], admin_key: str | None = None
    ) -> TritonServer:
        """Supervise a tritonserver command line: a container's own binary and backends, any
        repository location (s3://...). The stub watchdog and the drain on stop take the HTTP
        port, startup models, control mode, exit timeout and admin key from the flags (the
        restricted categories in any order); the categories of admin_key.RESTRICTED the flags
        leave open are restricted with that key, or with `admin_key`, or with one made for this
        run. Triton's log goes to this process's stdout."""
        flags = parse_flags(argv)
        key, made = keys.resolve_key(flags, admin_key)
        settings = server_settings(flags)
        server = cls(**settings, admin_key=key)
        server.location, server.key_generated = settings["repository"], made
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

    @property
    def admin_key(self) -> str:
        """The key that unlocks the restricted APIs (never log or print it)."""
        return self._admin_key

    @property
    def key_file(self) -> Path | None:
        """The 0600 file holding a key made for this run, while the server runs."""
        return self._key_files[0] if self._key_files else None

    def _restrictions(self) -> list[str]:
        given = parse_flags(self._wrapped[1:] if self._wrapped is not None else self.extra_args)
        return keys.restriction_flags(
            self._admin_key, given.get(keys.HTTP_FLAG, []), given.get(keys.GRPC_FLAG, [])
        )

    def command(self) -> list[str]:
        if self._wrapped is not None:
            return [*self._wrapped, *self._restrictions()]
        binary = pytriton_root() / "bin" / "tritonserver"
        cmd = [
            str(binary),
            f"--model-repository={self.location if self.remote else self.repository}",
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
        return cmd + self.extra_args + self._restrictions()

    def redacted_command(self) -> list[str]:
        key = self._admin_key
        return [a.replace(key, "***") if key else a for a in self.command()]

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, *, timeout_s: float = 120.0, wait_for: str | None = "plantdx") -> TritonServer:
        """Start tritonserver and wait until `wait_for` is ready (None: the server itself); one
        that crashed while starting (startup.CRASH_SIGNALS) is started once more."""
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                return self._start_once(timeout_s=timeout_s, wait_for=wait_for)
            except ServerError as exc:
                code = self._proc.returncode if self._proc is not None else None
                if not crashed(code) or self._abort.is_set() or attempt == START_ATTEMPTS:
                    raise
                log.warning("tritonserver crashed while starting; starting it again: %s", exc)
        raise AssertionError("unreachable")

    def _start_once(self, *, timeout_s: float, wait_for: str | None) -> TritonServer:
        if self.is_alive():
            return self
        self._abort.clear()
        self._stopping.clear()
        if self._wrapped is None and not self.remote and not self.repository.is_dir():
            raise ServerError(f"model repository {self.repository} does not exist")
        if not self.remote and self.repository.is_dir():
            refuse_half_published(self.repository)
        require_free_ports(
            self.host,
            {"HTTP": self.http_port, "gRPC": self.grpc_port, "metrics": self.metrics_port},
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
        base = {**server_env(), **self.env} if self._wrapped is None else dict(os.environ)
        self._proc = subprocess.Popen(
            self.command(),
            env=scrubbed(base, repository=self.location, secret_values=(self._admin_key,)),
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            preexec_fn=die_with_parent,
        )
        try:
            if self.key_generated:  # for the CLI on this machine; removed by stop()
                self._key_files = keys.write_key_files(
                    self._admin_key, [self.http_port, self.grpc_port]
                )
            self.wait_ready(timeout_s=timeout_s, model=wait_for)
        except BaseException:
            self.stop()
            raise
        if self.restart_dead_stubs and self.model_control == "explicit" and self.pid:
            self._watchdog = StubWatchdog(
                self.pid, self.api, alive=self.is_alive, stopping=self._stopping
            ).start()
        return self

    # -- stub watchdog -----------------------------------------------------------------------
    def stubs(self) -> dict[int, tuple[str, str]]:
        """Live Python-backend stubs of this server: pid → (model, version)."""
        return stubs_of(self.pid or -1)

    @property
    def stub_restarts(self) -> list[str]:
        """Models reloaded because a stub died."""
        return self._watchdog.restarts if self._watchdog else []

    def _ready_versions(self) -> set[tuple[str, str]] | None:
        try:
            return self.api.ready_versions()
        except CallError:
            return None

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def is_ready(self, model: str | None = "plantdx") -> bool:
        if not self.is_alive():
            return False
        path = f"/v2/models/{model}/ready" if model else "/v2/health/ready"
        return http_status(f"http://{self.http_url}{path}") == 200

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
        return log_tail(self.log_file or self._own_log, self._admin_key, n)

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
            regions = shm_regions([proc.pid, *children(proc.pid)])
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
        keys.remove_key_files(self._key_files, self._admin_key)
        self._key_files = []
        return proc.returncode

    @property
    def api(self) -> RepositoryApi:
        """Triton's repository API on this server, with its admin key."""
        return RepositoryApi(self.http_url, self._admin_key)

    def _repository_call(self, path: str, body: dict[str, object] | None = None) -> object:
        return self.api.call(path, body)

    def drain(self, *, timeout_s: float = 30.0) -> bool:
        """Unload the served models and wait until their in-flight requests are done.

        Only in explicit model-control mode (the only mode with an unload API); returns
        whether everything drained within the timeout."""
        if self.model_control != "explicit" or not self.is_alive() or not self.load_models:
            return False
        try:
            api = self.api
            for model in self.load_models:
                api.unload(model)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and self.is_alive():
                busy = [
                    m
                    for m in api.index()
                    if m.get("name") in self.load_models
                    and m.get("state") in ("READY", "UNLOADING")
                ]
                if not busy:
                    return True
                time.sleep(0.05)
        except CallError:
            pass  # the server is going down anyway; SIGTERM follows
        return False

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
