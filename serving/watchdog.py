"""The stub watchdog: reload a model whose Python-backend stub died. Triton 2.51 does not
restart a dead stub, and answers "Stub process is not healthy" for that instance until the model
is reloaded."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .procs import children, process_state
from .repository_api import CallError, RepositoryApi

log = logging.getLogger("plantdx.serving.server")


def stubs_of(server_pid: int) -> dict[int, tuple[str, str]]:
    """Live Python-backend stubs of a server process: pid → (model, version)."""
    out = {}
    for pid in children(server_pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(cmd) > 1 and cmd[0].endswith(b"triton_python_backend_stub"):
            # argv[1] is <repository>/<model>/<version>/model.py
            version_dir = Path(cmd[1].decode(errors="replace")).parent
            out[pid] = (version_dir.parent.name, version_dir.name)
    return out


class StubWatchdog:
    """Scans a server's stubs once a second in a daemon thread; `restarts` lists the models
    it reloaded."""

    def __init__(
        self,
        server_pid: int,
        api: RepositoryApi,
        *,
        alive: Callable[[], bool],
        stopping: threading.Event,
        interval_s: float = 1.0,
    ) -> None:
        self.server_pid = server_pid
        self.api = api
        self.alive = alive
        self.stopping = stopping
        self.interval_s = interval_s
        self.restarts: list[str] = []
        # The first scan before the thread starts: a zombie's command line is empty, so a stub
        # must be seen alive once for its death to be attributed to its model.
        self._known = stubs_of(server_pid)
        self._suspects: set[int] = set()
        self._pending: set[str] = set()  # models to reload (a failed reload is tried again)
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self) -> StubWatchdog:
        self._thread.start()
        return self

    def _watch(self) -> None:
        while self.alive() and not self.stopping.is_set():
            try:
                self._scan()
            except Exception:  # one failed scan must not end the watch
                log.exception("the stub watchdog's scan failed; it goes on")
            time.sleep(self.interval_s)

    def _scan(self) -> None:
        known = self._known
        known.update(stubs_of(self.server_pid))
        # Triton reaps the stubs it stops (unload, reload, failed load) with a blocking
        # waitpid, so they vanish; a stub killed behind its back stays a zombie until the
        # model is reloaded. Only a zombie seen on two scans in a row counts as dead.
        zombies = {pid for pid in known if process_state(pid) == "Z"}
        confirmed = zombies & self._suspects
        self._suspects = zombies - confirmed
        if confirmed:
            try:
                ready = self.api.ready_versions()
            except CallError as exc:
                # Asked again on the next scan: the dead stubs stay suspects.
                log.warning("a Python-backend stub died; the server's index failed: %s", exc)
                self._suspects |= confirmed
                return
            for pid in confirmed:
                if known[pid] in ready:
                    self._pending.add(known[pid][0])
                known.pop(pid, None)
        for model in sorted(self._pending):
            if not self.stopping.is_set() and self._reload(model):
                self._pending.discard(model)
        for pid in [p for p in known if process_state(p) is None]:
            known.pop(pid, None)

    def _reload(self, model: str) -> bool:
        """Reloads `model`; False (tried again on the next scan) when the server refused."""
        try:
            cfg = self.api.config(model)
            # Triton skips a load whose config is unchanged; a fresh parameter forces it.
            cfg.setdefault("parameters", {})["plantdx_restarted_at"] = {
                "string_value": str(time.time())
            }
            self.api.load(model, cfg)
        except CallError as exc:
            log.error("a stub of %s died and reloading it failed (tried again): %s", model, exc)
            return False
        self.restarts.append(model)
        log.warning("a Python-backend stub of %s died; the model was reloaded", model)
        return True
