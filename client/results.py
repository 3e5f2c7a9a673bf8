"""Typed results of the plantdx client, and the conversions both clients share."""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plantdx.decision import UNCERTAIN
from plantdx.model_repository import names

# The served names are the repository's (model_repository/names.py), under the client's words.
MODEL = names.ENSEMBLE
# The ensemble's composing model whose version changes on export and hot update.
CLASSIFIER = names.CLASSIFIER
INPUT = names.ENSEMBLE_INPUT
OUTPUT = names.ENSEMBLE_OUTPUT
# Optional input beside INPUT: the crop the photo shows; the answer is then restricted to that
# crop's classes. Servers exported before crops do not have it.
CROP = names.CROP
# The served decision: the class label, or UNCERTAIN when the calibrated top-1 probability is
# under the threshold. Servers exported before decision rules do not have it.
DECISION = names.DECISION
# The inference protocol's data types of the encoded image and of the crop (BYTES).
IMAGE_DATATYPE = names.TENSORS[INPUT].datatype
CROP_DATATYPE = names.TENSORS[CROP].datatype

# A path, encoded bytes or a PIL image (anything with `.save(buffer, format=...)`).
ImageLike = str | Path | bytes | bytearray | memoryview | Any


@dataclass(frozen=True)
class ClassScore:
    label: str
    probability: float
    index: int


@dataclass(frozen=True)
class Prediction:
    """One image's classes.

    label/confidence: the top-1 class and its calibrated probability; decision: what the
    server answers, that label or "uncertain" (`uncertain` is then True; a server without
    decisions answers the label). model_version: the classifier version serving when the
    answer came (None when the server would not say); ensemble_version: the version of the
    model that was called (the `plantdx` ensemble's stays 1 across classifier updates).
    """

    label: str
    confidence: float
    top_k: list[ClassScore]
    model_version: str | None
    latency_ms: float
    file: str | None = None
    ensemble_version: str = ""
    decision: str = ""
    # The crop the answer was restricted to, as the request named it ("" when none was sent).
    crop: str = ""

    @property
    def uncertain(self) -> bool:
        return self.decision == UNCERTAIN

    def to_dict(self) -> dict[str, Any]:
        out = {
            "file": self.file,
            "decision": self.decision,
            "label": self.label,
            "confidence": self.confidence,
            "top_k": [{"label": c.label, "probability": c.probability} for c in self.top_k],
            "model_version": self.model_version,
            "ensemble_version": self.ensemble_version,
            "latency_ms": round(self.latency_ms, 3),
        }
        if self.crop:
            out["crop"] = self.crop
        return out


@dataclass
class PredictOutcome:
    """One input of predict_many: a prediction, or the reason it failed.

    `kind` names the failure: invalid_image, invalid_crop, unavailable, overloaded, timeout, denied, tls, io,
    failed.
    """

    source: str
    prediction: Prediction | None = None
    error: str | None = None
    kind: str | None = None

    @property
    def ok(self) -> bool:
        return self.prediction is not None

    def to_dict(self) -> dict[str, Any]:
        if self.prediction is not None:
            return {**self.prediction.to_dict(), "file": self.source}
        return {"file": self.source, "error": self.error, "kind": self.kind}


@dataclass(frozen=True)
class ServerHealth:
    """What the original design's `/health` answered, from Triton's health and model APIs.

    status: "healthy" (live, ready, model ready), "unhealthy" (answers, not ready) or
    "unreachable" (no answer after the client's retries; `error` says why).
    """

    status: str
    live: bool
    ready: bool
    model_ready: bool
    model: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "live": self.live,
            "ready": self.ready,
            "model_ready": self.model_ready,
            "model": self.model,
            "error": self.error,
        }


def check_top_k(top_k: int) -> None:
    """A request asks for at least one class."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")


def to_bytes(image: ImageLike) -> bytes:
    """Encoded image bytes for a path, bytes or a PIL image (sent losslessly as PNG)."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | Path):
        return Path(image).read_bytes()
    if hasattr(image, "save"):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    raise TypeError(f"cannot send {type(image).__name__}: pass a path, bytes or a PIL image")


def describe(image: ImageLike, index: int) -> str:
    """How an input is named in outcomes and error messages."""
    if isinstance(image, str | Path):
        return str(image)
    return f"#{index} <{type(image).__name__}>"


def parse_classification(entries: Iterable[bytes | str]) -> list[ClassScore]:
    """Triton's classification extension answers 'score:index:label' (a label may hold ':')."""
    out = []
    for raw in entries:
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        score, index, label = text.split(":", 2)
        out.append(ClassScore(label=label, probability=float(score), index=int(index)))
    return out


def response_version(response: Any) -> str:
    """The model version of an HTTP (dict) or gRPC (protobuf) inference response."""
    if isinstance(response, dict):
        return str(response.get("model_version", ""))
    return str(getattr(response, "model_version", ""))


def to_prediction(
    result: Any,
    latency_ms: float,
    file: str | None,
    classifier_version: str | None,
    crop: str | None = None,
) -> Prediction:
    scores = parse_classification(result.as_numpy(OUTPUT).reshape(-1))
    if crop is not None:  # classes of other crops have probability 0: not guesses
        scores = scores[:1] + [s for s in scores[1:] if s.probability > 0]
    best = scores[0]
    decision = result.as_numpy(DECISION)
    return Prediction(
        label=best.label,
        confidence=best.probability,
        top_k=scores,
        model_version=classifier_version,
        latency_ms=latency_ms,
        file=file,
        ensemble_version=response_version(result.get_response()),
        decision=_text(decision.reshape(-1)[0]) if decision is not None else best.label,
        crop=crop or "",
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def lacks_decision(error: BaseException) -> bool:
    """The server refused DECISION as an output it does not have: an ensemble exported before
    decision rules (Triton: "unexpected inference output 'DECISION' for model 'plantdx'")."""
    text = str(error)
    return f"'{DECISION}'" in text and "unexpected inference output" in text


def newest_ready_version(metadata: Any) -> str | None:
    """The highest version in HTTP (dict) or gRPC (protobuf) model metadata. Triton lists the
    versions that are ready, and an ensemble step with model_version -1 runs the highest."""
    versions = metadata.get("versions", []) if isinstance(metadata, dict) else metadata.versions
    numbers = [int(v) for v in versions if str(v).isdigit()]
    return str(max(numbers)) if numbers else None


def cache_hit_count(stats: dict[str, Any]) -> int:
    """Response-cache hits summed over every model of get_inference_statistics' answer: HTTP
    JSON, or gRPC's as_json (int64 as strings, zero counts left out)."""
    total = 0
    for model in stats.get("model_stats", []):
        hit = (model.get("inference_stats") or {}).get("cache_hit") or {}
        total += int(hit.get("count", 0) or 0)
    return total


def output_count(metadata: Any) -> int:
    """Number of classes from HTTP (dict) or gRPC (protobuf) model metadata."""
    outputs = metadata["outputs"] if isinstance(metadata, dict) else metadata.outputs

    def name(o: Any) -> str:
        return str(o["name"] if isinstance(o, dict) else o.name)

    out = next((o for o in outputs if name(o) == OUTPUT), outputs[0])
    shape = out["shape"] if isinstance(out, dict) else list(out.shape)
    return int(shape[-1])


def probe_image() -> bytes:
    """A small valid PNG, sent by classes() to read the labels through the classification
    extension (the KServe API has no other way to list them)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 160, 96)).save(buf, format="PNG")
    return buf.getvalue()
