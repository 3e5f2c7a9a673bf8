"""`promote`'s switch is all or nothing: a failure at any step — after the candidate was
loaded and the traffic moved, or once the repository was pinned — puts the server back as it
was (the champion loaded and serving, the candidate unloaded, the ensembles' own configs) and
restores the repository's version policy; no request meets an unloaded version meanwhile.
Against a stand-in for the model-control API here, and against the real server (triton)."""

from __future__ import annotations

import copy
import secrets
import shutil
from pathlib import Path
from typing import Any

import pytest

from plantdx.exceptions import ClientError, RepositoryError
from plantdx.export import ExportConfig, export
from plantdx.model_repository.location import FolderRepository
from plantdx.model_repository.served import served_by_policy
from plantdx.promotion.side_by_side import SideBySide, pinned_version
from plantdx.promotion.switch import PromotionFailedError, switch
from plantdx.serving.control import ModelState

from helpers.export import tiny_checkpoint

VERSIONED = ("classifier", "preprocess")


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Versions 1 and 2 of other weights; the repository serves version 1."""
    tmp = tmp_path_factory.mktemp("switch")
    repo = tmp / "repo"
    export(ExportConfig(source=str(tiny_checkpoint(tmp / "a.pt", seed=1)), repository=str(repo)))
    export(
        ExportConfig(
            source=str(tiny_checkpoint(tmp / "b.pt", seed=2)),
            repository=str(repo),
            version_policy="specific",
            specific_versions=[1],
        )
    )
    return repo


@pytest.fixture()
def repo(two_versions: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(two_versions, tmp_path / "repo"))


def _configs(repo: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in sorted(repo.glob("*/config.pbtxt"))}


class FakeControl:
    """Triton's explicit model control, as far as the switch uses it: versioned models load
    the versions their config's policy names; an ensemble's steps name a version or -1."""

    url = "stand-in"

    def __init__(self) -> None:
        step = {"model_version": -1}
        self.repo_configs: dict[str, dict[str, Any]] = {
            "plantdx": {
                "name": "plantdx",
                "ensemble_scheduling": {
                    "step": [{**step, "model_name": m} for m in ("preprocess", "classifier")]
                },
            },
            **{
                m: {"name": m, "version_policy": {"latest": {"num_versions": 1}}} for m in VERSIONED
            },
        }
        self.configs = copy.deepcopy(self.repo_configs)
        self.loaded = {m: [1] for m in VERSIONED}
        self.calls = 0
        self.fail_at: int | None = None
        self.broken_windows: list[str] = []  # moments a request would have met no version

    def status(self) -> list[ModelState]:
        rows = [ModelState("plantdx", "1", "READY")]
        return rows + [ModelState(m, str(v), "READY") for m in VERSIONED for v in self.loaded[m]]

    def config(self, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.configs[name])

    def ready_versions(self, name: str) -> list[int]:
        return list(self.loaded[name])

    def load_config(self, name: str, config: dict[str, Any] | None, what: str = "") -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise ClientError(f"injected failure while {what or name}")
        config = copy.deepcopy(config if config is not None else self.repo_configs[name])
        self.configs[name] = config
        if name in VERSIONED:
            self.loaded[name] = sorted(config["version_policy"]["specific"]["versions"])
        pinned = pinned_version(self.configs["plantdx"])
        for m in VERSIONED:
            if pinned is not None and pinned not in self.loaded[m]:
                self.broken_windows.append(f"{what}: {m} {pinned} not loaded")

    def state(self) -> tuple[dict[str, list[int]], dict[str, Any]]:
        return copy.deepcopy(self.loaded), self.config("plantdx")


def _entered(control: FakeControl) -> SideBySide:
    side = SideBySide(control, [2])  # type: ignore[arg-type]
    side.__enter__()
    side.keep()
    return side


def test_the_switch_completes(repo: Path) -> None:
    control = FakeControl()
    side = _entered(control)
    switch(side, 2, repo)
    assert control.loaded == {"classifier": [2], "preprocess": [2]}
    assert served_by_policy(repo) == [2] and not control.broken_windows


def test_a_failure_at_every_step_of_the_switch_puts_everything_back(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before_repo = _configs(repo)
    steps = 4  # pin the ensemble, unload classifier 1, unload preprocess 1, reload the ensemble
    for k in range(1, steps + 1):
        control = FakeControl()
        before = control.state()
        side = _entered(control)
        control.fail_at = control.calls + k
        with pytest.raises(PromotionFailedError, match="injected") as failed:
            switch(side, 2, repo)
        assert "version 1 serves as before" in str(failed.value), k
        assert control.state() == before, k
        assert _configs(repo) == before_repo, k  # the pin (step 4 comes after it) undone
        assert not control.broken_windows, (k, control.broken_windows)


def test_a_repository_that_cannot_be_pinned_puts_the_server_back(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(self: FolderRepository, version: int) -> None:
        raise RepositoryError("No space left on device")

    monkeypatch.setattr(FolderRepository, "pin", full_disk)
    control = FakeControl()
    before = control.state()
    with pytest.raises(PromotionFailedError, match="No space left"):
        switch(_entered(control), 2, repo)
    assert control.state() == before and not control.broken_windows


def test_an_interrupted_switch_is_put_back_then_interrupts(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = FolderRepository.pin

    def pinned_then_interrupted(self: FolderRepository, version: int) -> None:
        real(self, version)
        raise KeyboardInterrupt

    monkeypatch.setattr(FolderRepository, "pin", pinned_then_interrupted)
    before_repo = _configs(repo)
    control = FakeControl()
    before = control.state()
    with pytest.raises(KeyboardInterrupt):
        switch(_entered(control), 2, repo)
    assert control.state() == before and _configs(repo) == before_repo


def test_a_put_back_that_fails_too_says_so(repo: Path) -> None:
    control = FakeControl()
    side = _entered(control)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ClientError("server gone")

    side.set_versions = refuse  # type: ignore[method-assign]
    with pytest.raises(PromotionFailedError, match=r"server gone.*models status"):
        switch(side, 2, repo)


@pytest.mark.triton
def test_a_failed_switch_on_the_real_server_puts_it_back(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The candidate loaded, the ensemble moved to it and the champion unloaded, then the
    ensemble's reload fails: the real server serves version 1 again, as before."""
    from plantdx.serving.control import ModelControl

    from helpers.common import onnx_probabilities
    from helpers.serving import infer, start_server

    photo = _photo()
    before_repo = _configs(repo)
    key = secrets.token_hex(16)
    server = start_server(repo, tmp_path / "triton.log", admin_key=key)
    try:
        with ModelControl(server.http_url, key=key) as control:
            ensemble = control.config("plantdx")
            side = SideBySide(control, [2])
            side.__enter__()
            assert control.ready_versions("classifier") == [1, 2]
            side.keep()
            real = control.load_config

            def fail_reload(name: str, config: Any, what: str = "") -> None:
                if config is None:  # the last step: the ensembles from the repository
                    raise ClientError(f"injected: {what}")
                real(name, config, what)

            monkeypatch.setattr(control, "load_config", fail_reload)
            with pytest.raises(PromotionFailedError, match="version 1 serves as before"):
                switch(side, 2, repo)
            monkeypatch.undo()
            assert control.ready_versions("classifier") == [1]
            assert control.ready_versions("preprocess") == [1]
            assert pinned_version(control.config("plantdx")) == pinned_version(ensemble)
        assert _configs(repo) == before_repo
        served = infer(server.grpc_url, [photo])
        assert abs(served - onnx_probabilities(repo, [photo], version=1)).max() < 1e-4
    finally:
        server.stop()


def _photo() -> bytes:
    from plantdx.bench.served_check import probe_image

    return probe_image(seed=3)
