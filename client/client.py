"""PlantDxClient: classify leaf photos with a plantdx Triton server over HTTP or gRPC."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from plantdx.exceptions import ClientError, ServerUnavailableError

from .options import ClientOptions, Protocol, classify, error_kind, to_error
from .results import (
    INPUT,
    OUTPUT,
    ImageLike,
    Prediction,
    PredictOutcome,
    ServerHealth,
    describe,
    output_count,
    parse_classification,
    probe_image,
    to_bytes,
    to_prediction,
)

OnResult = Callable[[PredictOutcome], None]


class PlantDxClient:
    """A typed layer over tritonclient for the `plantdx` ensemble.

    One client holds one connection and is meant for one thread (tritonclient's HTTP client
    is gevent-based); `predict_many` gives each of its worker threads a client of its own.
    Only unavailable-server errors are retried, with capped exponential backoff.
    """

    def __init__(
        self,
        url: str = "localhost:8000",
        protocol: Protocol = "http",
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.2,
        max_backoff_s: float = 5.0,
        model: str = "plantdx",
        model_version: str = "",
        ssl: bool = False,
        root_certificates: str | None = None,
        private_key: str | None = None,
        certificate_chain: str | None = None,
        insecure: bool = False,
        headers: dict[str, str] | None = None,
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
        )
        self._client: Any = None
        self._labels: list[str] | None = None

    @classmethod
    def from_options(cls, options: ClientOptions) -> PlantDxClient:
        client = cls.__new__(cls)
        client.options = options
        client._client = None
        client._labels = None
        return client

    @property
    def url(self) -> str:
        return self.options.url

    @property
    def protocol(self) -> str:
        return self.options.protocol

    # -- connection -----------------------------------------------------------------------
    def _module(self) -> Any:
        if self.options.protocol == "grpc":
            import tritonclient.grpc as grpcclient

            return grpcclient
        import tritonclient.http as httpclient

        return httpclient

    def _connect(self) -> Any:
        o = self.options
        if o.protocol == "grpc":
            return self._module().InferenceServerClient(
                o.url,
                ssl=o.ssl,
                root_certificates=o.root_certificates,
                private_key=o.private_key,
                certificate_chain=o.certificate_chain,
                channel_args=o.grpc_channel_args(),
            )
        # The HTTP client's timeouts are per connection: they bound connect and every read.
        return self._module().InferenceServerClient(
            o.url,
            connection_timeout=o.timeout,
            network_timeout=o.timeout,
            ssl=o.ssl,
            ssl_options=o.http_ssl_options() or None,
            insecure=o.insecure,
        )

    def _raw(self) -> Any:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        self._client = None

    def __enter__(self) -> PlantDxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def clone(self) -> PlantDxClient:
        """A new client with the same options (and its own connection)."""
        return PlantDxClient.from_options(self.options)

    # -- calls with the retry policy ------------------------------------------------------
    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        o = self.options
        delays = o.delays()
        if o.protocol == "grpc":
            kwargs["client_timeout"] = o.timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                fn = getattr(self._raw(), method)
                return fn(*args, headers=o.request_headers(), **kwargs)
            except Exception as exc:
                kind = classify(exc)
                if kind in ("unavailable", "timeout"):
                    # A fresh connection next time: an HTTP connection that timed out may
                    # still deliver the old answer, and a gRPC channel would wait out its own
                    # reconnect backoff after the server comes back.
                    self.close()
                if kind != "unavailable" or attempt > len(delays):
                    raise to_error(exc, kind, o, attempt) from exc
                time.sleep(delays[attempt - 1])

    # -- server information ---------------------------------------------------------------
    def health(self) -> ServerHealth:
        """Liveness, readiness and model readiness; 'unreachable' instead of raising."""
        model = self.options.model
        try:
            live = bool(self._call("is_server_live"))
            ready = bool(self._call("is_server_ready"))
            model_ready = bool(self._call("is_model_ready", model, self.options.model_version))
        except ServerUnavailableError as exc:
            return ServerHealth("unreachable", False, False, False, model, error=str(exc))
        status = "healthy" if live and ready and model_ready else "unhealthy"
        return ServerHealth(status, live, ready, model_ready, model)

    def num_classes(self) -> int:
        meta = self._call("get_model_metadata", self.options.model, self.options.model_version)
        return output_count(meta)

    def classes(self) -> list[str]:
        """Class names in output order, from the server's classification extension."""
        if self._labels is None:
            result = self.infer([probe_image()], class_count=self.num_classes())
            scores = parse_classification(result.as_numpy(OUTPUT).reshape(-1))
            self._labels = [s.label for s in sorted(scores, key=lambda s: s.index)]
        return list(self._labels)

    # -- inference ------------------------------------------------------------------------
    def infer(self, images: Sequence[bytes], *, class_count: int = 0) -> Any:
        """One request holding `images` as a batch; tritonclient's InferResult.

        class_count > 0 asks for the classification extension's top classes with labels;
        0 returns the raw probabilities.
        """
        m = self._module()
        inp = m.InferInput(INPUT, [len(images), 1], "BYTES")
        inp.set_data_from_numpy(np.array([[b] for b in images], dtype=np.object_))
        out = m.InferRequestedOutput(OUTPUT, class_count=class_count)
        return self._call(
            "infer",
            self.options.model,
            [inp],
            model_version=self.options.model_version,
            outputs=[out],
        )

    def predict(self, image: ImageLike, *, top_k: int = 3) -> Prediction:
        """Classify one image (a path, encoded bytes or a PIL image)."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        data = to_bytes(image)
        start = time.perf_counter()
        result = self.infer([data], class_count=top_k)
        latency = (time.perf_counter() - start) * 1000
        return to_prediction(result, latency, str(image) if isinstance(image, str | Path) else None)

    def predict_many(
        self,
        images: Sequence[ImageLike],
        *,
        concurrency: int = 8,
        top_k: int = 3,
        on_result: OnResult | None = None,
    ) -> list[PredictOutcome]:
        """Classify many images with `concurrency` requests in flight, in input order.

        A failed image never hides the others; once the server is found unreachable (after
        retries) the images not yet sent fail with that reason instead of each retrying.
        """
        n = len(images)
        todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i in range(n):
            todo.put(i)
        results: list[PredictOutcome | None] = [None] * n
        down: list[str] = []  # the unreachable-server message, once known

        def work() -> None:
            with self.clone() as client:
                while True:
                    try:
                        i = todo.get_nowait()
                    except queue.Empty:
                        return
                    outcome = _outcome(client, images[i], i, top_k, down)
                    if outcome.kind == "unavailable" and not down:
                        down.append(outcome.error or "server unavailable")
                    results[i] = outcome
                    if on_result is not None:
                        on_result(outcome)

        threads = [
            threading.Thread(target=work, daemon=True) for _ in range(max(1, min(concurrency, n)))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [r for r in results if r is not None]


def _outcome(
    client: PlantDxClient, image: ImageLike, index: int, top_k: int, down: list[str]
) -> PredictOutcome:
    source = describe(image, index)
    if down:
        return PredictOutcome(source, error=f"not sent: {down[0]}", kind="unavailable")
    try:
        return PredictOutcome(source, client.predict(image, top_k=top_k))
    except (ClientError, OSError, TypeError) as exc:
        return PredictOutcome(source, error=str(exc), kind=error_kind(exc))
