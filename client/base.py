"""What the blocking and the asyncio clients share: options, the connection's arguments, how a
request is built and how its answers are read. Only the calls themselves differ."""

from __future__ import annotations

import importlib
import math
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from plantdx.choices import Protocol

from .options import ClientOptions
from .results import (
    CROP,
    CROP_DATATYPE,
    DECISION,
    IMAGE_DATATYPE,
    INPUT,
    MODEL,
    OUTPUT,
    ImageLike,
    PredictOutcome,
    ServerHealth,
    describe,
    parse_classification,
)


class ClientBase:
    """Options and request building; subclasses add the blocking or awaitable calls."""

    def __init__(
        self,
        url: str = "localhost:8000",
        protocol: Protocol = "http",
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        model: str = MODEL,
        model_version: str = "",
        ssl: bool = False,
        root_certificates: str | None = None,
        private_key: str | None = None,
        certificate_chain: str | None = None,
        insecure: bool = False,
        headers: dict[str, str] | None = None,
        version_ttl_s: float = 5.0,
    ) -> None:
        self.options = ClientOptions.create(
            url,
            protocol,
            timeout=timeout,
            retries=retries,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            model=model,
            model_version=model_version,
            ssl=ssl,
            root_certificates=root_certificates,
            private_key=private_key,
            certificate_chain=certificate_chain,
            insecure=insecure,
            headers=headers,
            version_ttl_s=version_ttl_s,
        )
        self._client: Any = None
        self._labels: list[str] | None = None
        self._versions = VersionCache()

    @property
    def url(self) -> str:
        return self.options.url

    @property
    def protocol(self) -> str:
        return self.options.protocol

    # tritonclient's module for each protocol: blocking or asyncio.
    _MODULE_SUFFIX: ClassVar[str] = ""

    def _module(self) -> Any:
        return importlib.import_module(f"tritonclient.{self.options.protocol}{self._MODULE_SUFFIX}")

    def _connect(self) -> Any:
        raise NotImplementedError

    def _raw(self) -> Any:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _grpc_client(self) -> Any:
        o = self.options
        return self._module().InferenceServerClient(
            o.url,
            ssl=o.ssl,
            root_certificates=o.root_certificates,
            private_key=o.private_key,
            certificate_chain=o.certificate_chain,
            channel_args=o.grpc_channel_args(),
        )

    def _call_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.options.protocol == "grpc":
            kwargs["client_timeout"] = self.options.timeout
        return kwargs

    def _infer_request(
        self,
        images: Sequence[bytes],
        class_count: int,
        decision: bool = False,
        crop: str | None = None,
    ) -> dict[str, Any]:
        """The arguments of tritonclient's `infer` for one batch of encoded images (all of
        `crop` when given: one CROP element per image)."""
        m = self._module()
        inp = m.InferInput(INPUT, [len(images), 1], IMAGE_DATATYPE)
        inp.set_data_from_numpy(np.array([[b] for b in images], dtype=np.object_))
        inputs = [inp]
        if crop is not None:
            inputs.append(crop_input(m, crop, len(images)))
        outputs = [m.InferRequestedOutput(OUTPUT, class_count=class_count)]
        if decision:
            outputs.append(m.InferRequestedOutput(DECISION))
        return {
            "model_name": self.options.model,
            "inputs": inputs,
            "model_version": self.options.model_version,
            "outputs": outputs,
        }

    def _ask_decision(self) -> bool:
        """Ask for DECISION unless this server was found not to have it (an older export)."""
        return self._versions.decision is not False

    def _remember_labels(self, result: Any) -> list[str]:
        scores = parse_classification(result.as_numpy(OUTPUT).reshape(-1))
        self._labels = [s.label for s in sorted(scores, key=lambda s: s.index)]
        return list(self._labels)


def crop_input(module: Any, crop: str, n: int) -> Any:
    """The CROP input: the same crop name for each of `n` images (sent as given: the server
    matches the name and refuses one it does not know)."""
    if not isinstance(crop, str):
        raise TypeError(f"crop must be a str, got {type(crop).__name__}")
    tensor = module.InferInput(CROP, [n, 1], CROP_DATATYPE)
    tensor.set_data_from_numpy(np.array([[crop.encode()]] * n, dtype=np.object_))
    return tensor


class VersionCache:
    """The classifier version last read from the server and when; shared by a client's clones,
    so that many workers make one metadata request per time-to-live between them."""

    def __init__(self) -> None:
        self.value: str | None = None
        self.read_at = -math.inf
        self.lock = threading.Lock()
        # Whether the served ensemble has the DECISION output: None until a request tells.
        self.decision: bool | None = None

    def fresh(self, ttl_s: float) -> bool:
        return time.monotonic() - self.read_at < ttl_s

    def store(self, value: str | None) -> str | None:
        if value != self.value and self.read_at > -math.inf:
            self.decision = None  # another version serves now: it may have DECISION
        self.value, self.read_at = value, time.monotonic()
        return value


def health_of(live: bool, ready: bool, model_ready: bool, model: str) -> ServerHealth:
    status = "healthy" if live and ready and model_ready else "unhealthy"
    return ServerHealth(status, live, ready, model_ready, model)


def not_sent(image: ImageLike, index: int, down: list[str]) -> PredictOutcome | None:
    """Once the server is known to be unreachable, the images not yet sent fail with that."""
    if down:
        return PredictOutcome(
            describe(image, index), error=f"not sent: {down[0]}", kind="unavailable"
        )
    return None


def source_name(image: ImageLike) -> str | None:
    return str(image) if isinstance(image, str | Path) else None
