"""A stand-in `triton_python_backend_utils` and a loader that runs a Python backend of
model_repository/backends outside Triton with it."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

BACKENDS = Path(__file__).resolve().parents[2] / "model_repository/backends"
LABELS = ["a", "b", "c"]
# The preprocess backend as exported before versions were sent (no CALIBRATION_FIELDS).
LEGACY_PREPROCESS = Path(__file__).resolve().parent / "legacy" / "preprocess_before_versions.py"


class StubTensor:
    def __init__(self, name: str, data: np.ndarray) -> None:
        self.name, self.data = name, data

    def as_numpy(self) -> np.ndarray:
        return self.data


class StubResponse:
    def __init__(self, output_tensors: list[StubTensor], error: Any = None) -> None:
        self.outputs = {t.name: t.data for t in output_tensors}
        self.error = error


class StubMetric:
    def __init__(self, labels: dict[str, str], buckets: Any = None) -> None:
        self.labels, self.value, self.observed = labels, 0.0, []

    def increment(self, n: float) -> None:
        self.value += n

    def observe(self, x: float) -> None:
        self.observed.append(x)


class StubFamily:
    COUNTER, HISTOGRAM = "counter", "histogram"

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name = name

    def Metric(self, labels: dict[str, str], buckets: Any = None) -> StubMetric:
        return StubMetric(labels, buckets)


def stub_pb_utils() -> types.ModuleType:
    m = types.ModuleType("triton_python_backend_utils")
    m.Tensor = StubTensor  # type: ignore[attr-defined]
    m.InferenceResponse = StubResponse  # type: ignore[attr-defined]
    m.TritonError = str  # type: ignore[attr-defined]
    m.MetricFamily = StubFamily  # type: ignore[attr-defined]
    m.get_input_tensor_by_name = lambda r, name: r.get(name)  # type: ignore[attr-defined]
    return m


def load_backend(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stub_pb_utils())
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", BACKENDS / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
