"""AsyncPlantDxClient: the same client on asyncio (tritonclient.http.aio / tritonclient.grpc.aio).

One async client serves any number of concurrent requests: aiohttp pools its connections
and a gRPC channel multiplexes its calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from plantdx.exceptions import ClientError, ServerUnavailableError

from .client import OnResult
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


class AsyncPlantDxClient:
    """`async with AsyncPlantDxClient(url, "grpc") as c: await c.predict(path)`."""

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
        max_connections: int = 100,
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
        self.max_connections = max_connections
        self._client: Any = None
        self._labels: list[str] | None = None

    @property
    def url(self) -> str:
        return self.options.url

    @property
    def protocol(self) -> str:
        return self.options.protocol

    def _module(self) -> Any:
        if self.options.protocol == "grpc":
            import tritonclient.grpc.aio as grpcaio

            return grpcaio
        import tritonclient.http.aio as httpaio

        return httpaio

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
        # aiohttp's total timeout covers connect, send and the whole answer of every request.
        return self._module().InferenceServerClient(
            o.url,
            conn_limit=self.max_connections,
            conn_timeout=o.timeout,
            ssl=o.ssl,
            ssl_context=o.ssl_context() if o.ssl else None,
        )

    def _raw(self) -> Any:
        if self._client is None:
            self._client = self._connect()
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            # Closing a broken connection must not hide the error that broke it.
            with contextlib.suppress(Exception):
                await client.close()

    async def __aenter__(self) -> AsyncPlantDxClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        o = self.options
        delays = o.delays()
        if o.protocol == "grpc":
            kwargs["client_timeout"] = o.timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                fn = getattr(self._raw(), method)
                return await fn(*args, headers=o.request_headers(), **kwargs)
            except Exception as exc:
                kind = classify(exc)
                if kind != "unavailable" or attempt > len(delays):
                    raise to_error(exc, kind, o, attempt) from exc
                await asyncio.sleep(delays[attempt - 1])

    async def health(self) -> ServerHealth:
        model = self.options.model
        try:
            live = bool(await self._call("is_server_live"))
            ready = bool(await self._call("is_server_ready"))
            model_ready = bool(
                await self._call("is_model_ready", model, self.options.model_version)
            )
        except ServerUnavailableError as exc:
            return ServerHealth("unreachable", False, False, False, model, error=str(exc))
        status = "healthy" if live and ready and model_ready else "unhealthy"
        return ServerHealth(status, live, ready, model_ready, model)

    async def num_classes(self) -> int:
        meta = await self._call(
            "get_model_metadata", self.options.model, self.options.model_version
        )
        return output_count(meta)

    async def classes(self) -> list[str]:
        if self._labels is None:
            result = await self.infer([probe_image()], class_count=await self.num_classes())
            scores = parse_classification(result.as_numpy(OUTPUT).reshape(-1))
            self._labels = [s.label for s in sorted(scores, key=lambda s: s.index)]
        return list(self._labels)

    async def infer(self, images: Sequence[bytes], *, class_count: int = 0) -> Any:
        m = self._module()
        inp = m.InferInput(INPUT, [len(images), 1], "BYTES")
        inp.set_data_from_numpy(np.array([[b] for b in images], dtype=np.object_))
        out = m.InferRequestedOutput(OUTPUT, class_count=class_count)
        return await self._call(
            "infer",
            self.options.model,
            [inp],
            model_version=self.options.model_version,
            outputs=[out],
        )

    async def predict(self, image: ImageLike, *, top_k: int = 3) -> Prediction:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        data = to_bytes(image)
        start = time.perf_counter()
        result = await self.infer([data], class_count=top_k)
        latency = (time.perf_counter() - start) * 1000
        return to_prediction(result, latency, str(image) if isinstance(image, str | Path) else None)

    async def predict_many(
        self,
        images: Sequence[ImageLike],
        *,
        concurrency: int = 8,
        top_k: int = 3,
        on_result: OnResult | None = None,
    ) -> list[PredictOutcome]:
        """Like PlantDxClient.predict_many, with `concurrency` tasks on this one client."""
        n = len(images)
        results: list[PredictOutcome | None] = [None] * n
        down: list[str] = []
        next_index = iter(range(n))

        async def work() -> None:
            for i in next_index:
                source = describe(images[i], i)
                if down:
                    outcome = PredictOutcome(
                        source, error=f"not sent: {down[0]}", kind="unavailable"
                    )
                else:
                    try:
                        outcome = PredictOutcome(source, await self.predict(images[i], top_k=top_k))
                    except (ClientError, OSError, TypeError) as exc:
                        outcome = PredictOutcome(source, error=str(exc), kind=error_kind(exc))
                        if outcome.kind == "unavailable" and not down:
                            down.append(str(exc))
                results[i] = outcome
                if on_result is not None:
                    on_result(outcome)

        await asyncio.gather(*(work() for _ in range(max(1, min(concurrency, n)))))
        return [r for r in results if r is not None]
