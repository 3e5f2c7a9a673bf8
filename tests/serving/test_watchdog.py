"""The stub watchdog's rules, scan by scan, on a stand-in process table and repository API
(the real Triton, a real stub killed: tests/serving/test_reliability.py)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from plantdx.serving import watchdog
from plantdx.serving.watchdog import StubWatchdog


class FakeApi:
    """The repository API: `ready` models; `load` fails while `failures` lasts."""

    def __init__(self, ready: set[tuple[str, str]], failures: int = 0) -> None:
        self.ready, self.failures, self.loads = ready, failures, list[str]()
        self.index_errors = 0

    def ready_versions(self) -> set[tuple[str, str]]:
        if self.index_errors:
            self.index_errors -= 1
            raise OSError("connection refused")
        return set(self.ready)

    def config(self, model: str) -> dict[str, Any]:
        return {"name": model}

    def load(self, model: str, config: dict[str, Any] | None = None) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("load failed")
        self.loads.append(model)


@pytest.fixture
def procs(monkeypatch: pytest.MonkeyPatch) -> dict[int, tuple[tuple[str, str], str | None]]:
    """pid → ((model, version), state letter or None when gone): the process table."""
    table: dict[int, tuple[tuple[str, str], str | None]] = {}

    def stubs_of(_: int) -> dict[int, tuple[str, str]]:
        # A zombie's command line is empty: only live stubs are found by name.
        return {pid: mv for pid, (mv, state) in table.items() if state not in (None, "Z")}

    monkeypatch.setattr(watchdog, "stubs_of", stubs_of)
    monkeypatch.setattr(watchdog, "process_state", lambda pid: table.get(pid, (None, None))[1])
    return table


def make(api: FakeApi) -> StubWatchdog:
    return StubWatchdog(1, api, alive=lambda: True, stopping=threading.Event())  # type: ignore[arg-type]


def test_a_stub_left_a_zombie_is_reloaded_after_two_scans(procs: dict[int, Any]) -> None:
    procs.update({10: (("preprocess", "1"), "S"), 11: (("postprocess", "1"), "S")})
    api = FakeApi({("preprocess", "1"), ("postprocess", "1")})
    dog = make(api)
    procs[10] = (("preprocess", "1"), "Z")
    dog._scan()
    assert api.loads == []  # one sighting is a suspect
    dog._scan()
    assert api.loads == ["preprocess"] and dog.restarts == ["preprocess"]
    dog._scan()
    assert api.loads == ["preprocess"]  # once


def test_a_stub_triton_stopped_itself_is_not_reloaded(procs: dict[int, Any]) -> None:
    procs[10] = (("preprocess", "1"), "S")
    api = FakeApi({("preprocess", "1")})
    dog = make(api)
    del procs[10]  # reaped by Triton: an unload or a reload of its own
    for _ in range(3):
        dog._scan()
    assert api.loads == []


def test_a_dead_stub_of_an_unloaded_model_is_not_reloaded(procs: dict[int, Any]) -> None:
    procs[10] = (("preprocess", "1"), "S")
    api = FakeApi(set())
    dog = make(api)
    procs[10] = (("preprocess", "1"), "Z")
    for _ in range(3):
        dog._scan()
    assert api.loads == []


def test_a_failed_reload_and_a_failed_index_call_are_tried_again(
    procs: dict[int, Any], caplog: pytest.LogCaptureFixture
) -> None:
    procs[10] = (("preprocess", "1"), "S")
    api = FakeApi({("preprocess", "1")}, failures=2)
    api.index_errors = 1
    dog = make(api)
    procs[10] = (("preprocess", "1"), "Z")
    with caplog.at_level(logging.WARNING, logger="plantdx.serving.server"):
        for _ in range(6):
            dog._scan()
    # scan 1 suspects; scan 2 the index fails; scan 3 confirms, the load fails twice (scans 3
    # and 4), scan 5 reloads.
    assert api.loads == ["preprocess"] and dog.restarts == ["preprocess"]
    assert "reloading it failed (tried again)" in caplog.text


def test_an_error_in_a_scan_does_not_end_the_watch(
    procs: dict[int, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    procs[10] = (("preprocess", "1"), "S")
    api = FakeApi({("preprocess", "1")})
    stopping = threading.Event()
    dog = StubWatchdog(1, api, alive=lambda: True, stopping=stopping, interval_s=0.01)  # type: ignore[arg-type]
    scans = []

    def flaky_scan() -> None:
        scans.append(1)
        if len(scans) == 1:
            raise RuntimeError("an unexpected error")
        if len(scans) >= 5:
            stopping.set()

    monkeypatch.setattr(dog, "_scan", flaky_scan)
    dog.start()
    dog._thread.join(timeout=10)
    assert len(scans) >= 5
