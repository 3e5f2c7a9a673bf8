"""The ONNX classifier backend shares the cores out between its instances."""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest

from plantdx.model_repository.config import ServingOptions

BACKEND = Path(__file__).resolve().parents[2] / "model_repository/backends/classifier_onnx.py"


@pytest.fixture()
def backend(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    # The backend runs inside Triton's stub, which provides this module; only its import matters.
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("pb_utils"))
    spec = importlib.util.spec_from_file_location("classifier_onnx_under_test", BACKEND)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("cores", "groups", "threads"),
    [(2, [{"count": 2}], 1), (2, [{"count": 1}], 2), (16, [{"count": 2}], 8), (2, [{"count": 4}], 1),
     (8, [{"count": 1}, {"count": 3}], 2), (4, [], 4)],
)  # fmt: skip
def test_threads_are_the_cores_shared_between_instances(
    backend: types.ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    cores: int,
    groups: list[dict[str, int]],
    threads: int,
) -> None:
    monkeypatch.delenv("PLANTDX_CORES", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)))
    monkeypatch.setattr("plantdx.cores.cgroup_quota", lambda *_: None)
    assert backend._default_threads({"instance_group": groups}) == threads


def test_threads_follow_the_cgroup_quota_and_plantdx_cores(
    backend: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PLANTDX_CORES", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)))
    monkeypatch.setattr("plantdx.cores.cgroup_quota", lambda *_: 4.0)  # a pod's CPU limit
    assert backend._default_threads({"instance_group": [{"count": 2}]}) == 2
    monkeypatch.setenv("PLANTDX_CORES", "16")
    assert backend._default_threads({"instance_group": [{"count": 4}]}) == 4


def test_two_cores_get_two_classifier_instances() -> None:
    assert ServingOptions().classifier.instances is None  # sized by the cores
    assert ServingOptions(cores=2).plan().classifier == 2
