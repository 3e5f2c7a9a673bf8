"""What many tests share: where the real photos are, a tiny training run, the in-process
reference probabilities of an exported version, and polling."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("PLANTDX_SHARED_DATA", ROOT.parent / "shared" / "data"))
MINI = SHARED_DATA / "plantvillage-mini"
TRAIN = SHARED_DATA / "plantvillage-train"


def train_tiny(out: Path, data: Any, mlflow_store: str | None = None, **overrides: Any) -> Path:
    """Train test_tiny at 64 px (2 epochs, lr 0.01 unless overridden) into `out`; with
    `mlflow_store`, tracked and registered as `plantdx-test` in that store."""
    from plantdx.training import TrainConfig, train
    from plantdx.training.progress import Reporter

    settings: dict[str, Any] = {
        "model": "test_tiny",
        "pretrained": False,
        "image_size": 64,
        "epochs": 2,
        "lr": 0.01,
        "batch_size": 32,
        "register_as": "plantdx-test",
    }
    if mlflow_store is None:
        settings.update(mlflow=False, register=False)
    settings.update(overrides)
    old = os.environ.get("MLFLOW_TRACKING_URI")
    if mlflow_store is not None:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_store
    try:
        data = [str(d) for d in data] if isinstance(data, list) else str(data)
        train(TrainConfig(data=data, out=str(out), **settings), reporter=Reporter(quiet=True))
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return out


def onnx_probabilities(repo: Path, images: list[bytes], version: int = 1) -> np.ndarray:
    """In-process reference: the same preprocessing, ONNX file and decision rule (the served
    PROBABILITIES are softmax(logits / temperature) of the version's decision.json), no server."""
    import onnxruntime as ort

    from plantdx.decision import DECISION_FILENAME, DecisionRule
    from plantdx.preprocessing import PreprocessMeta, Preprocessor

    vdir = repo / "classifier" / str(version)
    pre = Preprocessor(PreprocessMeta.load(vdir / "preprocessing.json"))
    session = ort.InferenceSession(str(vdir / "model.onnx"), providers=["CPUExecutionProvider"])
    # The classifier takes uint8 pixels (normalised in its graph), or, exported before, floats.
    prepare = pre.pixels if session.get_inputs()[0].type == "tensor(uint8)" else pre
    logits = session.run(None, {"input": np.stack([prepare(b) for b in images])})[0]
    rule = DecisionRule.load(repo / "preprocess" / str(version) / DECISION_FILENAME)
    return np.asarray(rule.probabilities(logits), dtype=np.float64)


def wait_for(predicate: object, timeout: float = 30.0, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False
