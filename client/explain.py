"""Explanations from the `plantdx_explain` ensemble: the prediction (exactly as `plantdx` answers
it) and the heatmap of the top class, over HTTP or gRPC. What an explanation is and how its
request is built; `PlantDxClient.explain` and `explain_many` send it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from plantdx.exceptions import ClientError
from plantdx.model_repository import names

from .base import crop_input, source_name
from .options import error_kind
from .results import (
    DECISION,
    IMAGE_DATATYPE,
    INPUT,
    OUTPUT,
    ImageLike,
    Prediction,
    describe,
    to_bytes,
    to_prediction,
)

EXPLAIN_MODEL = names.EXPLAIN_ENSEMBLE
HEATMAP = names.HEATMAP


@dataclass(frozen=True)
class Explanation:
    """One image's prediction and its top class's heatmap: FP32 [h, w] in 0..1 at the model's
    last feature-map resolution (plantdx.heatmap.normalize_heatmap)."""

    prediction: Prediction
    heatmap: np.ndarray


@dataclass
class ExplainOutcome:
    """One input of explain_many: its image bytes and explanation, or why it failed."""

    source: str
    image: bytes | None = None
    explanation: Explanation | None = None
    error: str | None = None
    kind: str | None = None

    @property
    def ok(self) -> bool:
        return self.explanation is not None


def lacks_explain(error: BaseException) -> bool:
    """The server has no `plantdx_explain` ensemble (Triton: "Request for unknown model")."""
    text = str(error)
    return EXPLAIN_MODEL in text and ("unknown model" in text or "not found" in text)


def explain_request(
    module: Any, image: bytes, class_count: int, crop: str | None = None
) -> dict[str, Any]:
    inp = module.InferInput(INPUT, [1, 1], IMAGE_DATATYPE)
    inp.set_data_from_numpy(np.array([[image]], dtype=np.object_))
    inputs = [inp] if crop is None else [inp, crop_input(module, crop, 1)]
    outputs = [
        module.InferRequestedOutput(OUTPUT, class_count=class_count),
        module.InferRequestedOutput(DECISION),
        module.InferRequestedOutput(HEATMAP),
    ]
    return {"model_name": EXPLAIN_MODEL, "inputs": inputs, "outputs": outputs}


def no_explain(url: str) -> ClientError:
    return ClientError(
        f"the server at {url} has no {EXPLAIN_MODEL} ensemble: explanations need a repository "
        "exported from an architecture with class-activation maps (plantdx export says so), "
        "served with it loaded"
    )


def to_explanation(
    result: Any, latency_ms: float, source: str | None, version: str | None, crop: str | None
) -> Explanation:
    """The explanation in a `plantdx_explain` answer (tritonclient's InferResult)."""
    prediction = to_prediction(result, latency_ms, source, version, crop)
    heat = np.asarray(result.as_numpy(HEATMAP), dtype=np.float32)
    return Explanation(prediction, heat.reshape(heat.shape[-2:]))


def explain_outcome(
    image: ImageLike, index: int, explain: Callable[[bytes, str | None], Explanation]
) -> ExplainOutcome:
    """One input of explain_many: its bytes explained by `explain(data, source name)`; an
    unreadable image or a failed request is the outcome's error, never raised."""
    source = describe(image, index)
    try:
        data = to_bytes(image)
    except (OSError, TypeError) as exc:
        return ExplainOutcome(source, error=str(exc), kind=error_kind(exc))
    try:
        return ExplainOutcome(source, data, explain(data, source_name(image)))
    except (ClientError, OSError) as exc:
        return ExplainOutcome(source, data, error=str(exc), kind=error_kind(exc))
