"""Capture inside the postprocess backend, run outside Triton with the stand-in
`triton_python_backend_utils` of test_backend_decision (the real server: test_capture_server)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers.backend_stub import LABELS, StubTensor, load_backend
from helpers.capture import photo

LOGITS = np.array([[4.0, 1.0, 0.0], [1.0, 1.2, 0.9], [0.0, 0.5, 3.0]], dtype=np.float32)


def _model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, image_input: bool = True) -> Any:
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    inputs = [{"name": "LOGITS"}, {"name": "CALIBRATION"}]
    config = {
        "input": inputs + ([{"name": "IMAGE"}] if image_input else []),
        "output": [{"name": "PROBABILITIES", "dims": ["3"]}, {"name": "DECISION"}],
    }
    model = load_backend("postprocess", monkeypatch).TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(tmp_path)})
    return model


def _request(images: list[bytes]) -> dict[str, StubTensor]:
    calibration = np.array([[1.0, 0.6, 7.0]] * 3, dtype=np.float32)  # T, threshold, version
    return {
        "LOGITS": StubTensor("LOGITS", LOGITS),
        "CALIBRATION": StubTensor("CALIBRATION", calibration),
        "IMAGE": StubTensor("IMAGE", np.array([[b] for b in images], dtype=np.object_)),
    }


def test_the_abstained_answer_is_captured_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cap = tmp_path / "cap"
    for name, value in {
        "PLANTDX_CAPTURE": str(cap),
        "PLANTDX_CAPTURE_RATE": "0",
        "PLANTDX_CAPTURE_LOW_CONFIDENCE": "0.5",
        "PLANTDX_CAPTURE_MAX_PER_S": "0",
    }.items():
        monkeypatch.setenv(name, value)
    model = _model(tmp_path, monkeypatch)
    images = [photo(i) for i in range(3)]
    responses = model.execute([_request(images)])
    decisions = [d[0].decode() for d in responses[0].outputs["DECISION"]]
    assert decisions == ["a", "uncertain", "c"]
    assert model.capture.writer.flush()
    sidecars = [json.loads(p.read_text()) for p in cap.rglob("*.json")]
    assert [(s["reason"], s["version"], s["prediction"], s["decision"]) for s in sidecars] == [
        ("abstained", "7", "b", "uncertain")
    ]
    photo_path = next(p for p in cap.rglob("*.jpg"))
    assert photo_path.name == sidecars[0]["file"]
    model.execute([_request(images)])  # publishes the first request's outcome
    assert model.capture.metrics["7", "written"].value == 1
    assert model.capture.metrics["7", "written"].labels == {
        "model": "plantdx",
        "version": "7",
        "outcome": "written",
    }
    model.finalize()
    assert len(list(cap.rglob("*.json"))) in (1, 2)  # the second one may share the first's key


def test_capture_off_leaves_the_photo_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PLANTDX_CAPTURE", raising=False)
    model = _model(tmp_path, monkeypatch)
    assert model.capture is None
    responses = model.execute([_request([photo(i) for i in range(3)])])
    assert responses[0].error is None
    assert _model(tmp_path, monkeypatch, image_input=False).capture is None
