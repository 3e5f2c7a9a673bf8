"""PlantDxClient: classify leaf photos with a plantdx Triton server over HTTP or gRPC."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from plantdx.exceptions import ClientError, ServerUnavailableError

from .base import ClientBase, VersionCache, health_of, not_sent, source_name
from .explain import (
    EXPLAIN_MODEL,
    ExplainOutcome,
    Explanation,
    explain_outcome,
    explain_request,
    lacks_explain,
    no_explain,
    to_explanation,
)
from .options import RETRIED, ClientOptions, classify, error_kind, to_error
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

OnResult = Callable[[PredictOutcome], None]


class PlantDxClient(ClientBase):
    """A typed layer over tritonclient for the `plantdx` ensemble.

    One client holds one connection and is meant for one thread (tritonclient's HTTP client
    is gevent-based); `predict_many` gives each of its worker threads a client of its own.
    Only an unreachable or overloaded server is retried, with capped exponential backoff.
    """

    @classmethod
    def from_options(cls, options: ClientOptions) -> PlantDxClient:
        client = cls.__new__(cls)
        client.options = options
        client._client = None
        client._labels = None
        client._versions = VersionCache()
        return client

    # -- connection -----------------------------------------------------------------------
    _MODULE_SUFFIX = ""

    def _connect(self) -> Any:
        o = self.options
        if o.protocol == "grpc":
            return self._grpc_client()
        # The HTTP client's timeouts are per connection: they bound connect and every read.
        return self._module().InferenceServerClient(
            o.url,
            connection_timeout=o.timeout,
            network_timeout=o.timeout,
            ssl=o.ssl,
            ssl_options=o.http_ssl_options() or None,
            insecure=o.insecure,
        )

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
        client = PlantDxClient.from_options(self.options)
        client._versions = self._versions
        return client

    # -- calls with the retry policy ------------------------------------------------------
    def _call(self, method: str, *args: Any, retry: bool = True, **kwargs: Any) -> Any:
        o = self.options
        delays = o.delays() if retry else []
        kwargs = self._call_kwargs(kwargs)
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
                if kind not in RETRIED or attempt > len(delays):
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
        return health_of(live, ready, model_ready, model)

    def num_classes(self) -> int:
        meta = self._call("get_model_metadata", self.options.model, self.options.model_version)
        return output_count(meta)

    def classifier_version(self, *, refresh: bool = False) -> str | None:
        """The classifier version serving now: the highest ready version of the ensemble's
        `classifier` (the one its step with model_version -1 runs), read from the model
        metadata at most once per `version_ttl_s`; None when the server will not say."""
        cache, ttl = self._versions, self.options.version_ttl_s
        if not refresh and cache.fresh(ttl):
            return cache.value
        with cache.lock:
            if not refresh and cache.fresh(ttl):
                return cache.value
            try:
                meta = self._call("get_model_metadata", CLASSIFIER, retry=False)
            except ClientError:
                return cache.store(None)
            return cache.store(newest_ready_version(meta))

    def inference_statistics(self) -> dict[str, Any]:
        """Triton's per-model inference statistics (every model), as JSON for both protocols."""
        if self.options.protocol == "grpc":
            return dict(self._call("get_inference_statistics", as_json=True))
        return dict(self._call("get_inference_statistics"))

    def classes(self) -> list[str]:
        """Class names in output order, from the server's classification extension."""
        if self._labels is None:
            return self._remember_labels(
                self.infer([probe_image()], class_count=self.num_classes())
            )
        return list(self._labels)

    # -- inference ------------------------------------------------------------------------
    def infer(
        self,
        images: Sequence[bytes],
        *,
        class_count: int = 0,
        decision: bool = False,
        crop: str | None = None,
    ) -> Any:
        """One request holding `images` as a batch; tritonclient's InferResult.

        class_count > 0 asks for the classification extension's top classes with labels;
        0 returns the raw probabilities. decision=True asks for DECISION too. crop names the
        crop of every image (the answer restricted to its classes); None sends none.
        """
        request = self._infer_request(images, class_count, decision, crop)
        return self._call("infer", **request)

    def _infer_with_decision(
        self, images: Sequence[bytes], class_count: int, crop: str | None = None
    ) -> Any:
        """PROBABILITIES and, when the server has it, DECISION (once refused, no longer asked)."""
        ask = self._ask_decision()
        try:
            result = self.infer(images, class_count=class_count, decision=ask, crop=crop)
        except ClientError as exc:
            if not (ask and lacks_decision(exc)):
                raise
            self._versions.decision = False
            return self.infer(images, class_count=class_count, crop=crop)
        self._versions.decision = ask
        return result

    def predict(self, image: ImageLike, *, top_k: int = 3, crop: str | None = None) -> Prediction:
        """Classify one image (a path, encoded bytes or a PIL image). `crop` ("tomato",
        "bell pepper"): the answer is chosen among that crop's classes only; a name the
        model does not know raises ClientError (kind "invalid_crop") naming the crops it knows.
        """
        check_top_k(top_k)
        data = to_bytes(image)
        start = time.perf_counter()
        result = self._infer_with_decision([data], top_k, crop)
        latency = (time.perf_counter() - start) * 1000
        return to_prediction(result, latency, source_name(image), self.classifier_version(), crop)

    def explain(
        self,
        image: ImageLike,
        *,
        top_k: int = 3,
        crop: str | None = None,
        file: str | None = None,
    ) -> Explanation:
        """Classify one image through `plantdx_explain`: the prediction and the top class's
        heatmap (ClientError naming the problem when the server has no explanations). `file`
        names the image in the answer (default: its path)."""
        check_top_k(top_k)
        data = to_bytes(image)
        start = time.perf_counter()
        try:
            result = self._call("infer", **explain_request(self._module(), data, top_k, crop))
        except ClientError as exc:
            if lacks_explain(exc):
                raise no_explain(self.url) from exc
            raise
        latency = (time.perf_counter() - start) * 1000
        name = file or source_name(image)
        return to_explanation(result, latency, name, self.classifier_version(), crop)

    def explain_many(
        self,
        images: Sequence[ImageLike],
        *,
        concurrency: int = 4,
        top_k: int = 3,
        crop: str | None = None,
    ) -> list[ExplainOutcome]:
        """Explain many images, `concurrency` requests in flight, in input order; a failed
        image never hides the others. A server without `plantdx_explain` raises at once."""
        with self.clone() as probe:
            if not probe._call("is_model_ready", EXPLAIN_MODEL):
                raise no_explain(self.url)

        def one(i: int) -> ExplainOutcome:
            with self.clone() as c:
                return explain_outcome(
                    images[i],
                    i,
                    lambda data, name: c.explain(data, top_k=top_k, crop=crop, file=name),
                )

        with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(images) or 1))) as pool:
            return list(pool.map(one, range(len(images))))

    def predict_many(
        self,
        images: Sequence[ImageLike],
        *,
        concurrency: int = 8,
        top_k: int = 3,
        on_result: OnResult | None = None,
        crop: str | None = None,
    ) -> list[PredictOutcome]:
        """Classify many images with `concurrency` requests in flight, in input order (all of
        `crop` when given).

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
                    outcome = _outcome(client, images[i], i, top_k, down, crop)
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
    client: PlantDxClient,
    image: ImageLike,
    index: int,
    top_k: int,
    down: list[str],
    crop: str | None = None,
) -> PredictOutcome:
    skipped = not_sent(image, index, down)
    if skipped is not None:
        return skipped
    source = describe(image, index)
    try:
        return PredictOutcome(source, client.predict(image, top_k=top_k, crop=crop))
    except (ClientError, OSError, TypeError) as exc:
        return PredictOutcome(source, error=str(exc), kind=error_kind(exc))
