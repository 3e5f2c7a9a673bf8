"""AsyncPlantDxClient: the same client on asyncio (tritonclient.http.aio / tritonclient.grpc.aio).

One async client serves any number of concurrent requests: aiohttp pools its connections
and a gRPC channel multiplexes its calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

from plantdx.choices import Protocol
from plantdx.exceptions import ClientError, ServerUnavailableError

from .base import ClientBase, health_of, not_sent, source_name
from .client import OnResult
from .options import RETRIED, classify, error_kind, to_error
from .results import (
    CLASSIFIER,
    ImageLike,
    Prediction,
    PredictOutcome,
    ServerHealth,
    check_top_k,
    describe,
    lacks_decision,
    newest_ready_version,
    output_count,
    probe_image,
    to_bytes,
    to_prediction,
)


class AsyncPlantDxClient(ClientBase):
    """`async with AsyncPlantDxClient(url, "grpc") as c: await c.predict(path)`."""

    def __init__(
        self,
        url: str = "localhost:8000",
        protocol: Protocol = "http",
        *,
        max_connections: int = 100,
        **options: Any,
    ) -> None:
        """The options of PlantDxClient, and aiohttp's connection-pool size for HTTP."""
        super().__init__(url, protocol, **options)
        self.max_connections = max_connections
        self._version_lock: asyncio.Lock | None = None

    _MODULE_SUFFIX = ".aio"

    def _connect(self) -> Any:
        o = self.options
        if o.protocol == "grpc":
            return self._grpc_client()
        # aiohttp's total timeout covers connect, send and the whole answer of every request.
        return self._module().InferenceServerClient(
            o.url,
            conn_limit=self.max_connections,
            conn_timeout=o.timeout,
            ssl=o.ssl,
            ssl_context=o.ssl_context() if o.ssl else None,
        )

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

    async def _call(self, method: str, *args: Any, retry: bool = True, **kwargs: Any) -> Any:
        o = self.options
        delays = o.delays() if retry else []
        kwargs = self._call_kwargs(kwargs)
        attempt = 0
        while True:
            attempt += 1
            try:
                fn = getattr(self._raw(), method)
                return await fn(*args, headers=o.request_headers(), **kwargs)
            except Exception as exc:
                kind = classify(exc)
                if kind not in RETRIED or attempt > len(delays):
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
        return health_of(live, ready, model_ready, model)

    async def num_classes(self) -> int:
        meta = await self._call(
            "get_model_metadata", self.options.model, self.options.model_version
        )
        return output_count(meta)

    async def classifier_version(self, *, refresh: bool = False) -> str | None:
        """PlantDxClient.classifier_version: one metadata request per `version_ttl_s`, shared
        by every task of this client."""
        cache, ttl = self._versions, self.options.version_ttl_s
        if not refresh and cache.fresh(ttl):
            return cache.value
        if self._version_lock is None:
            self._version_lock = asyncio.Lock()
        async with self._version_lock:
            if not refresh and cache.fresh(ttl):
                return cache.value
            try:
                meta = await self._call("get_model_metadata", CLASSIFIER, retry=False)
            except ClientError:
                return cache.store(None)
            return cache.store(newest_ready_version(meta))

    async def inference_statistics(self) -> dict[str, Any]:
        if self.options.protocol == "grpc":
            return dict(await self._call("get_inference_statistics", as_json=True))
        return dict(await self._call("get_inference_statistics"))

    async def classes(self) -> list[str]:
        if self._labels is None:
            count = await self.num_classes()
            return self._remember_labels(await self.infer([probe_image()], class_count=count))
        return list(self._labels)

    async def infer(
        self,
        images: Sequence[bytes],
        *,
        class_count: int = 0,
        decision: bool = False,
        crop: str | None = None,
    ) -> Any:
        request = self._infer_request(images, class_count, decision, crop)
        return await self._call("infer", **request)

    async def _infer_with_decision(
        self, images: Sequence[bytes], class_count: int, crop: str | None = None
    ) -> Any:
        ask = self._ask_decision()
        try:
            result = await self.infer(images, class_count=class_count, decision=ask, crop=crop)
        except ClientError as exc:
            if not (ask and lacks_decision(exc)):
                raise
            self._versions.decision = False
            return await self.infer(images, class_count=class_count, crop=crop)
        self._versions.decision = ask
        return result

    async def predict(
        self, image: ImageLike, *, top_k: int = 3, crop: str | None = None
    ) -> Prediction:
        """PlantDxClient.predict: `crop` restricts the answer to that crop's classes."""
        check_top_k(top_k)
        data = to_bytes(image)
        start = time.perf_counter()
        result = await self._infer_with_decision([data], top_k, crop)
        latency = (time.perf_counter() - start) * 1000
        version = await self.classifier_version()
        return to_prediction(result, latency, source_name(image), version, crop)

    async def predict_many(
        self,
        images: Sequence[ImageLike],
        *,
        concurrency: int = 8,
        top_k: int = 3,
        on_result: OnResult | None = None,
        crop: str | None = None,
    ) -> list[PredictOutcome]:
        """Like PlantDxClient.predict_many, with `concurrency` tasks on this one client."""
        n = len(images)
        results: list[PredictOutcome | None] = [None] * n
        down: list[str] = []
        next_index = iter(range(n))

        async def work() -> None:
            for i in next_index:
                source = describe(images[i], i)
                skipped = not_sent(images[i], i, down)
                if skipped is not None:
                    outcome = skipped
                else:
                    try:
                        prediction = await self.predict(images[i], top_k=top_k, crop=crop)
                        outcome = PredictOutcome(source, prediction)
                    except (ClientError, OSError, TypeError) as exc:
                        outcome = PredictOutcome(source, error=str(exc), kind=error_kind(exc))
                        if outcome.kind == "unavailable" and not down:
                            down.append(str(exc))
                results[i] = outcome
                if on_result is not None:
                    on_result(outcome)

        await asyncio.gather(*(work() for _ in range(max(1, min(concurrency, n)))))
        return [r for r in results if r is not None]
