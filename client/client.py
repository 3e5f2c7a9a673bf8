"""PlantDxClient: classify leaf photos with a plantdx Triton server over HTTP or gRPC."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from plantdx.exceptions import ClientError, InferenceTimeoutError, ServerUnavailableError

MODEL = "plantdx"
INPUT = "IMAGE"
OUTPUT = "PROBABILITIES"
ImageLike = str | Path | bytes | Any  # Any: a PIL image


@dataclass(frozen=True)
class ClassScore:
    label: str
    probability: float
    index: int


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    top_k: list[ClassScore]
    model_version: str
    latency_ms: float
    file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "label": self.label,
            "confidence": self.confidence,
            "top_k": [{"label": c.label, "probability": c.probability} for c in self.top_k],
            "model_version": self.model_version,
            "latency_ms": self.latency_ms,
        }


@dataclass
class PredictOutcome:
    """One input of predict_many: a prediction or the reason it failed."""

    source: str
    prediction: Prediction | None = None
    error: str | None = None


def to_bytes(image: ImageLike) -> bytes:
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | Path):
        return Path(image).read_bytes()
    if hasattr(image, "save"):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    raise TypeError(f"cannot send {type(image).__name__}: pass a path, bytes or a PIL image")


def parse_classification(entries: Iterable[bytes | str]) -> list[ClassScore]:
    """Triton's classification extension answers 'score:index:label' (label may hold ':')."""
    out = []
    for raw in entries:
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        score, index, label = text.split(":", 2)
        out.append(ClassScore(label=label, probability=float(score), index=int(index)))
    return out


@dataclass
class _Proto:
    module: Any
    client: Any
    protocol: str


class PlantDxClient:
    """A thin, typed layer over tritonclient for the `plantdx` ensemble.

    One client holds one connection; tritonclient's HTTP client is not thread-safe, so
    `predict_many` opens one client per worker thread.
    """

    def __init__(
        self,
        url: str = "localhost:8000",
        protocol: Literal["http", "grpc"] = "http",
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        model: str = MODEL,
        ssl: bool = False,
        headers: dict[str, str] | None = None,
        root_certificates: str | None = None,
    ) -> None:
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be 'http' or 'grpc', not {protocol!r}")
        self.url = url.removeprefix("http://").removeprefix("https://")
        self.protocol = protocol
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.model = model
        self.ssl = ssl or url.startswith("https://")
        self.headers = dict(headers or {})
        self.root_certificates = root_certificates
        self._proto = self._connect()
        self._labels: list[str] | None = None

    def _connect(self) -> _Proto:
        if self.protocol == "grpc":
            import tritonclient.grpc as grpcclient

            client = grpcclient.InferenceServerClient(
                self.url, ssl=self.ssl, root_certificates=self.root_certificates
            )
            return _Proto(grpcclient, client, "grpc")
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(
            self.url,
            ssl=self.ssl,
            connection_timeout=self.timeout,
            network_timeout=self.timeout,
            ssl_context_factory=None,
        )
        return _Proto(httpclient, client, "http")

    # -- context manager ------------------------------------------------------------------
    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._proto.client.close()

    def __enter__(self) -> PlantDxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def clone(self) -> PlantDxClient:
        return PlantDxClient(
            self.url,
            self.protocol,  # type: ignore[arg-type]
            timeout=self.timeout,
            retries=self.retries,
            backoff_s=self.backoff_s,
            model=self.model,
            ssl=self.ssl,
            headers=self.headers,
            root_certificates=self.root_certificates,
        )

    # -- errors and retries ---------------------------------------------------------------
    @staticmethod
    def _is_unavailable(exc: Exception) -> bool:
        text = str(exc).lower()
        status = str(getattr(exc, "status", lambda: "")() or "").lower()
        return any(
            s in text or s in status
            for s in (
                "unavailable",
                "connection refused",
                "failed to connect",
                "connection reset",
                "broken pipe",
                "name or service not known",
                "connect call failed",
                "[errno 111]",
                "remotedisconnected",
                "connection aborted",
            )
        ) or isinstance(exc, ConnectionError)

    @staticmethod
    def _is_timeout(exc: Exception) -> bool:
        text = str(exc).lower()
        return "deadline" in text or "timed out" in text or "timeout" in text

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if self._is_timeout(exc) and not self._is_unavailable(exc):
                    raise InferenceTimeoutError(
                        f"no answer from {self.url} within {self.timeout:g} s"
                    ) from exc
                if not self._is_unavailable(exc):
                    raise ClientError(_clean(exc)) from exc
                if attempt == self.retries:
                    raise ServerUnavailableError(
                        f"cannot reach plantdx at {self.url} ({self.protocol}) after "
                        f"{self.retries + 1} attempt(s): {_clean(exc)}"
                    ) from exc
                time.sleep(delay)
                delay *= 2
                if self.protocol == "http":
                    self.close()
                    self._proto = self._connect()
        raise AssertionError("unreachable")

    # -- server information ---------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        c = self._proto.client
        live = bool(self._call(c.is_server_live, headers=self.headers))
        ready = bool(self._call(c.is_server_ready, headers=self.headers))
        model_ready = bool(self._call(c.is_model_ready, self.model, headers=self.headers))
        status = "healthy" if live and ready and model_ready else "unhealthy"
        return {"status": status, "live": live, "ready": ready, "model_ready": model_ready}

    def classes(self) -> list[str]:
        """Class names in output order, read from the server (classification extension)."""
        if self._labels is None:
            n = self._num_classes()
            white = _tiny_png()
            result = self._infer([white], class_count=n)
            scores = parse_classification(result.as_numpy(OUTPUT).reshape(-1))
            self._labels = [s.label for s in sorted(scores, key=lambda s: s.index)]
        return list(self._labels)

    def _num_classes(self) -> int:
        meta = self._call(self._proto.client.get_model_metadata, self.model, headers=self.headers)
        outputs = meta["outputs"] if isinstance(meta, dict) else meta.outputs
        out = outputs[0]
        shape = out["shape"] if isinstance(out, dict) else list(out.shape)
        return int(shape[-1])

    # -- inference ------------------------------------------------------------------------
    def _infer(self, images: Sequence[bytes], *, class_count: int) -> Any:
        m = self._proto.module
        inp = m.InferInput(INPUT, [len(images), 1], "BYTES")
        inp.set_data_from_numpy(np.array([[b] for b in images], dtype=np.object_))
        out = m.InferRequestedOutput(OUTPUT, class_count=class_count)
        kwargs: dict[str, Any] = {"headers": self.headers}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout
        else:
            kwargs["timeout"] = int(self.timeout * 1e6)
        return self._call(self._proto.client.infer, self.model, [inp], outputs=[out], **kwargs)

    def predict(self, image: ImageLike, *, top_k: int = 3) -> Prediction:
        data = to_bytes(image)
        start = time.perf_counter()
        result = self._infer([data], class_count=max(1, top_k))
        latency = (time.perf_counter() - start) * 1000
        scores = parse_classification(result.as_numpy(OUTPUT).reshape(-1))
        response = result.get_response()
        version = (
            response.get("model_version", "")
            if isinstance(response, dict)
            else getattr(response, "model_version", "")
        )
        best = scores[0]
        return Prediction(
            label=best.label,
            confidence=best.probability,
            top_k=scores,
            model_version=str(version),
            latency_ms=latency,
            file=str(image) if isinstance(image, str | Path) else None,
        )

    def predict_many(
        self, images: Sequence[ImageLike], *, concurrency: int = 8, top_k: int = 3
    ) -> list[PredictOutcome]:
        """Classify many images concurrently; a failed image never hides the others."""

        def source(img: ImageLike) -> str:
            return str(img) if isinstance(img, str | Path) else f"<{type(img).__name__}>"

        def work(chunk: list[tuple[int, ImageLike]]) -> list[tuple[int, PredictOutcome]]:
            out = []
            with self.clone() as client:
                for i, img in chunk:
                    try:
                        out.append(
                            (i, PredictOutcome(source(img), client.predict(img, top_k=top_k)))
                        )
                    except (ClientError, OSError, TypeError) as exc:
                        out.append((i, PredictOutcome(source(img), error=str(exc))))
            return out

        indexed = list(enumerate(images))
        workers = max(1, min(concurrency, len(indexed)))
        chunks = [indexed[w::workers] for w in range(workers)]
        results: list[PredictOutcome | None] = [None] * len(indexed)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for part in pool.map(work, chunks):
                for i, outcome in part:
                    results[i] = outcome
        return [r for r in results if r is not None]


def _clean(exc: Exception) -> str:
    msg = getattr(exc, "message", None)
    text = msg() if callable(msg) else str(exc)
    return str(text).strip()


def _tiny_png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 160, 96)).save(buf, format="PNG")
    return buf.getvalue()
