"""Two versions of preprocess + classifier loaded side by side on a running server, while the
`plantdx` ensemble keeps serving the version it served: its steps are pinned to that version for
the duration (a config override), so loading a newer version does not move any traffic."""

from __future__ import annotations

import copy
import os
from typing import Any

from plantdx.exceptions import ClientError
from plantdx.model_repository.names import CLASSIFIER, ENSEMBLE, PREPROCESS
from plantdx.serving.control import ModelControl

VERSIONED = (CLASSIFIER, PREPROCESS)
# Every ensemble whose steps run preprocess and classifier (the explanation ensemble too).
ENSEMBLES = (ENSEMBLE, "plantdx_explain")


def control_for(url: str, protocol: str, key_env: str) -> ModelControl:
    return ModelControl(url, protocol=protocol, key=os.environ.get(key_env) or None)  # type: ignore[arg-type]


def ensemble_with_versions(config: dict[str, Any], version: int | None) -> dict[str, Any]:
    """The ensemble config with its preprocess and classifier steps pinned to `version`
    (None: -1, the newest loaded)."""
    cfg = copy.deepcopy(config)
    for step in cfg.get("ensemble_scheduling", {}).get("step", []):
        if step.get("model_name") in VERSIONED:
            step["model_version"] = -1 if version is None else int(version)
    return cfg


def pinned_version(config: dict[str, Any]) -> int | None:
    """The version the ensemble's classifier step names; None for -1 (the newest loaded)."""
    for step in config.get("ensemble_scheduling", {}).get("step", []):
        if step.get("model_name") == CLASSIFIER:
            v = int(step.get("model_version", -1))
            return None if v < 0 else v
    return None


def served_version(control: ModelControl) -> int:
    """The classifier version the `plantdx` ensemble runs now."""
    pinned = pinned_version(control.config(ENSEMBLE))
    ready = control.ready_versions(CLASSIFIER)
    if pinned is not None:
        return pinned
    if not ready:
        raise ClientError(f"no version of {CLASSIFIER} is ready on {control.url}")
    return ready[-1]


class SideBySide:
    """`with SideBySide(control, [a, b]):` both versions ready, traffic unchanged; on exit the
    server holds the versions it held before (unless `keep()` was called)."""

    def __init__(self, control: ModelControl, versions: list[int]) -> None:
        self.control = control
        self.versions = sorted(set(int(v) for v in versions))
        self.served = served_version(control)
        self.before = {name: control.ready_versions(name) for name in VERSIONED}
        ready = {s.name for s in control.status() if s.state == "READY"}
        self.ensembles = [name for name in ENSEMBLES if name in ready] or [ENSEMBLE]
        self.ensemble_configs = {name: control.config(name) for name in self.ensembles}
        self.loaded = False
        self._keep = False

    def class_names(self, options: Any) -> list[str]:
        from plantdx.client.client import PlantDxClient

        with PlantDxClient.from_options(options) as client:
            return client.classes()

    def __enter__(self) -> SideBySide:
        missing = [v for v in self.versions if any(v not in self.before[n] for n in VERSIONED)]
        if not missing:
            return self
        self.loaded = True
        try:
            self.pin_ensemble(self.served)
            for name in VERSIONED:  # the classifier first, as every load does
                want = sorted(set(self.before[name]) | set(self.versions))
                self.set_versions(name, want, f"loading {name} versions {want} side by side")
        except BaseException:
            self.restore()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.loaded and not self._keep:
            self.restore()

    def keep(self) -> None:
        """Leave both versions loaded on exit (the caller moves traffic and cleans up)."""
        self._keep = True

    # -- steps ----------------------------------------------------------------------------
    def pin_ensemble(self, version: int | None) -> None:
        """Every ensemble's steps to `version` (None: -1, the newest loaded)."""
        for name, config in self.ensemble_configs.items():
            cfg = ensemble_with_versions(config, version)
            self.control.load_config(name, cfg, f"pinning {name} to version {version}")

    def set_versions(self, name: str, versions: list[int], what: str = "") -> None:
        cfg = self.control.config(name)
        cfg["version_policy"] = {"specific": {"versions": [int(v) for v in versions]}}
        self.control.load_config(name, cfg, what or f"loading {name} versions {versions}")
        # Triton loads the versions its repository holds and skips the others silently.
        missing = sorted(set(versions) - set(self.control.ready_versions(name)))
        if missing:
            raise ClientError(
                f"version {', '.join(map(str, missing))} of {name} did not load on "
                f"{self.control.url}: its repository (or the view a following server serves) "
                "does not hold it"
            )

    def restore(self, also_loaded: list[int] | None = None) -> None:
        """Back to the versions held before, the ensemble as it was; every step is tried.
        `also_loaded`: versions that may serve now (the candidate of a failed switch): the
        served version is loaded beside them and the ensembles pinned back to it first, so no
        request meets an unloaded version."""
        errors = []
        if also_loaded:
            for name in VERSIONED:
                want = sorted(set(self.before[name]) | {int(v) for v in also_loaded})
                try:
                    self.set_versions(name, want, f"loading {name} versions {want} again")
                except ClientError as exc:
                    errors.append(str(exc))
            try:
                self.pin_ensemble(self.served)
            except ClientError as exc:
                errors.append(str(exc))
        for name in VERSIONED:
            if self.before[name]:
                try:
                    self.set_versions(name, self.before[name])
                except ClientError as exc:
                    errors.append(str(exc))
        for name, config in self.ensemble_configs.items():
            try:
                self.control.load_config(name, config, f"restoring {name}")
            except ClientError as exc:
                errors.append(str(exc))
        if errors:
            raise ClientError("could not restore the served versions: " + "; ".join(errors))
