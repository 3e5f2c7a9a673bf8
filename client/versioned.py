"""Calls to one version of the composing models, bypassing the ensemble: preprocess version N
then classifier version N, so two versions loaded side by side can be judged on the same photos
while the `plantdx` ensemble keeps serving whichever version it serves."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from plantdx.model_repository.names import (
    CALIBRATION,
    CLASSIFIER,
    ENSEMBLE_INPUT,
    LOGITS,
    PIXELS,
    PREPROCESS,
    TENSORS,
)

from .client import PlantDxClient


@dataclass(frozen=True)
class VersionAnswer:
    """One photo through one version: raw logits, the version's decision rule
    (temperature, threshold) as the preprocess sent it, and the wall time of both calls."""

    logits: np.ndarray
    temperature: float
    threshold: float
    latency_ms: float


class VersionedClient(PlantDxClient):
    """A PlantDxClient that also addresses preprocess and classifier by version."""

    def classify_version(self, image: bytes, version: int) -> VersionAnswer:
        m = self._module()
        start = time.perf_counter()
        inp = m.InferInput(ENSEMBLE_INPUT, [1, 1], TENSORS[ENSEMBLE_INPUT].datatype)
        inp.set_data_from_numpy(np.array([[image]], dtype=np.object_))
        pre = self._call(
            "infer",
            model_name=PREPROCESS,
            model_version=str(version),
            inputs=[inp],
            outputs=[m.InferRequestedOutput(PIXELS), m.InferRequestedOutput(CALIBRATION)],
        )
        pixels = pre.as_numpy(PIXELS)
        calibration = pre.as_numpy(CALIBRATION)
        # As the version's preprocess sent them: uint8 that its classifier normalises, or
        # float32 in repositories made before that.
        dtype = "UINT8" if pixels.dtype == np.uint8 else "FP32"
        pix = m.InferInput(PIXELS, list(pixels.shape), dtype)
        pix.set_data_from_numpy(
            np.ascontiguousarray(pixels, dtype=np.uint8 if dtype == "UINT8" else np.float32)
        )
        out = self._call(
            "infer",
            model_name=CLASSIFIER,
            model_version=str(version),
            inputs=[pix],
            outputs=[m.InferRequestedOutput(LOGITS)],
        )
        logits = out.as_numpy(LOGITS).reshape(-1).astype(np.float32)
        latency = (time.perf_counter() - start) * 1000
        # CALIBRATION is [temperature, threshold, ...] per item; older preprocess versions
        # (before decision rules) have none: the identity rule.
        cal = calibration.reshape(-1) if calibration is not None else np.array([1.0, 0.0])
        return VersionAnswer(logits, float(cal[0]), float(cal[1]), latency)
