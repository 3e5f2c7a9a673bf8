"""A running server follows its repository: every `poll_s` seconds it reads which version the
repository asks for (model_repository/asked.py, a folder or s3://) and, when that changed,
switches to it by explicit model control, without a restart and without failing a request.
The server serves a view of the repository (view.py) whose preprocess and classifier configs
the follower writes, so Triton sees each step only when it is asked to load it:

1. every ensemble (`plantdx`, `plantdx_explain`) is pinned to the version it serves now (a
   config override naming the version of its preprocess and classifier steps),
2. the view serves both versions and classifier, then preprocess, are loaded: the new version
   beside the old one (then classifier_cams, the explanations' classifier of a --target triton
   repository, when it has one: a version without it serves without explanations),
3. the ensembles are pinned to the new version (Triton swaps a reloaded model only once the
   new one is ready: requests in flight finish on the old one),
4. after a grace period for requests still inside the old steps, the view serves the new
   version only, the old versions are unloaded, and the ensembles get their `-1` steps (the
   newest loaded) back.

It acts on a *change* of what the repository asks for (and retries a failed switch): a
comparison that `plantdx promote` loads beside the served version is left alone, and a
`plantdx models load --version` on one server holds until the repository changes. A restarted
server reads the repository at start. With a served-version override (served_version.ServedSpec)
the target is the override's when it applies. What was read last is kept in a small 0600 file
per HTTP port (`plantdx models status` on the same machine shows it).

Only the standard library and plantdx: this runs in the serving image.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plantdx.exceptions import PlantDxError
from plantdx.model_repository.asked import asked_version
from plantdx.model_repository.names import CLASSIFIER, ENSEMBLE, EXPLAIN_ENSEMBLE, PREPROCESS
from plantdx.model_repository.policy import FOLLOWERS

from . import view as views
from .admin_key import key_dir
from .repository_api import CallError, RepositoryApi
from .served_version import ServedSpec

log = logging.getLogger("plantdx.follow")

VERSIONED = (CLASSIFIER, PREPROCESS)  # the classifier first: a broken one fails before traffic
ENSEMBLES = (ENSEMBLE, EXPLAIN_ENSEMBLE)
DEFAULT_POLL_S = 2.0
RETRY_FAILED_S = 30.0
# A reloaded ensemble is a new object: requests still inside the one it replaced finish there,
# unseen by the repository index, so a drain that unloads the new one cannot wait for them
# (a SIGTERM during the start-up pass failed one request of six in a test run). Stopping the
# follower waits until this long after its last ensemble reload (the start-up pass, a switch).
SETTLE_S = 5.0


def state_file(http_port: int) -> Path:
    return key_dir() / f"follow.{int(http_port)}.json"


def read_state(http_port: int | None) -> dict[str, Any] | None:
    """What the follower of the server on this machine's `http_port` read last (or None)."""
    if http_port is None:
        return None
    try:
        found = json.loads(state_file(http_port).read_text())
    except (OSError, ValueError, PlantDxError):
        return None
    return found if isinstance(found, dict) else None


def with_steps(config: dict[str, Any], version: int | None) -> dict[str, Any]:
    """An ensemble config whose preprocess and classifier steps (and classifier_cams's) name
    `version` (None: -1)."""
    cfg = copy.deepcopy(config)
    for step in cfg.get("ensemble_scheduling", {}).get("step", []):
        if step.get("model_name") in (*VERSIONED, *FOLLOWERS):
            step["model_version"] = -1 if version is None else int(version)
    return cfg


def ready_versions(api: RepositoryApi) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for m in api.index():
        version = str(m.get("version", ""))
        if m.get("state") == "READY" and version.isdigit():
            out.setdefault(str(m.get("name")), []).append(int(version))
    return {k: sorted(v) for k, v in out.items()}


def served_version(api: RepositoryApi, ready: dict[str, list[int]] | None = None) -> int | None:
    """The classifier version the `plantdx` ensemble runs now (None: nothing serves)."""
    ready = ready_versions(api) if ready is None else ready
    try:
        steps = api.config(ENSEMBLE).get("ensemble_scheduling", {}).get("step", [])
    except CallError:
        return None
    for step in steps:
        if step.get("model_name") == CLASSIFIER and int(step.get("model_version", -1)) >= 0:
            return int(step["model_version"])
    have = ready.get(CLASSIFIER, [])
    return have[-1] if have else None


def switch(
    api: RepositoryApi, target: int, *, location: str, view: Path, grace_s: float = 1.0
) -> bool:
    """Serve `target` (steps 1-4 above) from `view`, the server's view of `location`
    (view.py); False when it served already. Raises CallError (the server's words),
    PlantDxError or OSError; the ensembles name a loaded version throughout."""
    ready = ready_versions(api)
    current = served_version(api, ready)
    if current == target and all(ready.get(n) == [target] for n in VERSIONED):
        # Moved already (by model control, e.g. `plantdx promote` on a folder): the view's
        # configs must say so too, or a reload (a dead stub's) would bring the old one back.
        views.write_versions(location, view, [target])
        return False
    ensembles = [e for e in ENSEMBLES if ready.get(e)]
    configs = {e: api.config(e) for e in ensembles}
    followers = [m for m in views.pinned(view) if m in FOLLOWERS]
    views.add_version(location, view, target)
    if current is not None and all(current in ready.get(n, []) for n in VERSIONED):
        # The view is as loaded: pinning the ensembles reloads none of their steps.
        for e in ensembles:
            _load(api, e, with_steps(configs[e], current))
        views.write_versions(location, view, [current, target])
    else:
        views.write_versions(location, view, [target])
    for name in VERSIONED:
        api.load(name)
    for name in followers:
        _load(api, name)
    for e in ensembles:
        _load(api, e, with_steps(configs[e], target))
    time.sleep(grace_s)  # requests already past the old ensemble finish in the old steps
    views.write_versions(location, view, [target])
    for name in VERSIONED:
        api.load(name)
    for name in followers:
        _load(api, name)
    for e in ensembles:
        _load(api, e, with_steps(configs[e], None))
    if followers and EXPLAIN_ENSEMBLE not in ensembles and (view / EXPLAIN_ENSEMBLE).is_dir():
        _load(api, EXPLAIN_ENSEMBLE)  # explanations again (the old version had none)
    views.drop_versions(location, view, [target])
    return True


def _load(api: RepositoryApi, name: str, config: dict[str, Any] | None = None) -> None:
    """Load `name`; only `plantdx` must load: explanations (`plantdx_explain` and a follower
    such as classifier_cams) fail alone, logged, and the version serves without them."""
    if name == ENSEMBLE:
        api.load(name, config)
        return
    try:
        api.load(name, config)
    except CallError as exc:
        log.warning("%s did not load (explanations unavailable): %s", name, exc)


class Follower:
    """A thread that keeps one server on its repository's version (see the module)."""

    def __init__(
        self,
        api: RepositoryApi,
        location: str | Path,
        *,
        poll_s: float = DEFAULT_POLL_S,
        spec: ServedSpec | None = None,
        http_port: int | None = None,
        alive: Callable[[], bool] = lambda: True,
        grace_s: float = 1.0,
        view: Path | None = None,
    ) -> None:
        self.api = api
        self.location = str(location)
        self.poll_s = poll_s
        self.spec = spec
        self.http_port = http_port
        self.alive = alive
        self.grace_s = grace_s
        self.view = view  # the view the server serves (view.py), which the follower writes
        self.applied: int | None = None
        self.asked: int | None = None
        self.switches: list[dict[str, Any]] = []
        self._failed: dict[int, float] = {}
        self._said = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.settle_s = SETTLE_S
        self._settled_at = 0.0  # monotonic: requests inside replaced ensembles are done

    def start(self) -> Follower:
        try:
            self.applied = served_version(self.api)
            self._prime()
        except CallError:
            self.applied = None
        finally:
            self._reloaded()
        self._thread = threading.Thread(target=self._run, name="plantdx-follow", daemon=True)
        self._thread.start()
        return self

    def _prime(self) -> None:
        """Load each ensemble once with its own config: Triton 2.51 reloads the composing
        models at the first ensemble load after start, which is better paid now than in the
        middle of a switch (a reload serves until the new instance is ready)."""
        ready = ready_versions(self.api)
        for e in ENSEMBLES:
            if ready.get(e):
                self.api.load(e, self.api.config(e))

    def _reloaded(self) -> None:
        self._settled_at = time.monotonic() + self.settle_s

    def stop(self) -> None:
        """Stop following; returns once a switch in progress is done and the requests inside
        the ensembles it (or the start-up pass) replaced had `settle_s` to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_s + 60)
        wait = self._settled_at - time.monotonic()
        if wait > 0:
            log.info("waiting %.1f s for requests inside the replaced ensembles", wait)
            time.sleep(wait)
        if self.http_port is not None:
            with contextlib.suppress(OSError, PlantDxError):
                state_file(self.http_port).unlink(missing_ok=True)

    def _say(self, level: int, text: str) -> None:
        if text != self._said:  # the same trouble is logged once, not every poll
            log.log(level, "%s", text)
            self._said = text

    def _run(self) -> None:
        while not self._stop.is_set() and self.alive():
            self.step()
            self._stop.wait(self.poll_s)

    def target(self, asked: int) -> int:
        return self.spec.target(asked) if self.spec is not None else asked

    def step(self) -> bool:
        """One look at the repository; True when the server was switched."""
        try:
            if not self.location.startswith("s3://"):
                state = _publish_state(self.location)
                if state == "running":
                    return False  # an export or pin in progress: the next look sees it whole
                if state is not None:
                    raise PlantDxError("a change was interrupted (plantdx repo validate --repair)")
            asked = asked_version(self.location)
            self.asked = asked.version
        except PlantDxError as exc:
            self._say(logging.WARNING, f"not following {self.location} this time: {exc}")
            return False
        self._add_new_versions(asked.available)
        target = self.target(self.asked)
        self._write_state(target)
        if target != self.asked:
            self._say(
                logging.INFO,
                f"the repository asks for {self.asked}; serving {target} "
                f"({self.spec} overrides it)",
            )
        if target == self.applied:
            return False
        failed_at = self._failed.get(target)
        if failed_at is not None and time.monotonic() - failed_at < RETRY_FAILED_S:
            return False
        t0 = time.monotonic()
        try:
            if self.view is None:
                raise PlantDxError("this server does not serve a view it can switch")
            switched = switch(
                self.api, target, location=self.location, view=self.view, grace_s=self.grace_s
            )
        except (*CallError, PlantDxError, OSError) as exc:
            self._reloaded()  # it may have reloaded an ensemble before it failed
            self._failed[target] = time.monotonic()
            self._say(logging.ERROR, f"switching to version {target} failed: {exc}")
            return False
        seconds = time.monotonic() - t0
        if switched:
            self._reloaded()
        previous, self.applied = self.applied, target
        self._failed.pop(target, None)
        self._said = ""
        if switched:
            self.switches.append({"from": previous, "to": target, "seconds": round(seconds, 2)})
            log.info(
                "now serving version %s (was %s; switched in %.1f s)", target, previous, seconds
            )
        self._write_state(target)
        return switched

    def _add_new_versions(self, available: dict[str, list[int]] | None) -> None:
        """New versions into the view, loadable beside the served one (a comparison, a
        promotion, a canary); a failure is logged and tried again at the next look."""
        if self.view is None or self.applied is None:
            return
        try:
            added = views.add_new_versions(self.location, self.view, available, self.applied)
        except (PlantDxError, OSError) as exc:
            self._say(logging.WARNING, f"new versions of {self.location} not mirrored: {exc}")
            return
        if added:
            log.info("mirrored version(s) %s of %s", ", ".join(map(str, added)), self.location)

    def _write_state(self, target: int) -> None:
        if self.http_port is None:
            return
        doc = {
            "repository": self.location,
            "repository_version": self.asked,
            "target_version": target,
            "served_version": self.applied,
            "override": str(self.spec) if self.spec else None,
            "poll_s": self.poll_s,
            "read_at": time.time(),
        }
        try:
            path = state_file(self.http_port)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc))
            tmp.chmod(0o600)
            tmp.replace(path)
        except (OSError, PlantDxError):
            pass  # only `plantdx models status` misses it


def _publish_state(location: str) -> str | None:
    from plantdx.model_repository.journal import publish_state

    return publish_state(location)
