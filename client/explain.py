"""Explanations from the `plantdx_explain` ensemble: the prediction (exactly as `plantdx` answers
it) and the heatmap of the top class, over HTTP or gRPC."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from plantdx.exceptions import ClientError

from .base import crop_input, source_name
from .options import error_kind
from .results import (
    DECISION,
    INPUT,
    OUTPUT,
    ImageLike,
    Prediction,
    describe,
    to_bytes,
    to_prediction,
)

if TYPE_CHECKING:
    from .client import PlantDxClient

EXPLAIN_MODEL = "plantdx_explain"
HEATMAP = "HEATMAP"


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
    inp = module.InferInput(INPUT, [1, 1], "BYTES")
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


def explain(
    client: PlantDxClient,
    image: ImageLike,
    *,
    top_k: int = 3,
    file: str | None = None,
    crop: str | None = None,
) -> Explanation:
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    data = to_bytes(image)
    start = time.perf_counter()
    try:
        result = client._call("infer", **explain_request(client._module(), data, top_k, crop))
    except ClientError as exc:
        if lacks_explain(exc):
            raise no_explain(client.url) from exc
        raise
    latency = (time.perf_counter() - start) * 1000
    name = file or source_name(image)
    prediction = to_prediction(result, latency, name, client.classifier_version(), crop)
    heat = np.asarray(result.as_numpy(HEATMAP), dtype=np.float32)
    return Explanation(prediction, heat.reshape(heat.shape[-2:]))


def explain_many(
    client: PlantDxClient,
    images: Sequence[ImageLike],
    *,
    concurrency: int = 4,
    top_k: int = 3,
    crop: str | None = None,
) -> list[ExplainOutcome]:
    """Explain many images, `concurrency` requests in flight, in input order; a failed image
    never hides the others. A server without `plantdx_explain` raises at once."""
    with client.clone() as probe:
        if not probe._call("is_model_ready", EXPLAIN_MODEL):
            raise no_explain(client.url)

    def one(i: int) -> ExplainOutcome:
        source = describe(images[i], i)
        try:
            data = to_bytes(images[i])
        except (OSError, TypeError) as exc:
            return ExplainOutcome(source, error=str(exc), kind=error_kind(exc))
        with client.clone() as c:
            try:
                found = explain(c, data, top_k=top_k, file=source_name(images[i]), crop=crop)
                return ExplainOutcome(source, data, found)
            except (ClientError, OSError) as exc:
                return ExplainOutcome(source, data, error=str(exc), kind=error_kind(exc))

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(images) or 1))) as pool:
        return list(pool.map(one, range(len(images))))
