"""Closed-loop load over tritonclient gRPC: N workers, each sends its next request as soon as
the previous one answers. Used by the batching sweep and the serving tests; bounded in both
request count and time, and only ever aimed at the address it is given (a local server).
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    ok: int
    failed: int
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    errors: list[str] = field(default_factory=list, repr=False)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        return float(np.percentile(self.latencies_ms, q))

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        del d["latencies_ms"], d["errors"]
        d.update(
            throughput=round(self.throughput, 1),
            p50_ms=round(self.percentile(50), 1),
            p95_ms=round(self.percentile(95), 1),
            p99_ms=round(self.percentile(99), 1),
            mean_ms=round(statistics.fmean(self.latencies_ms), 1) if self.latencies_ms else None,
            first_errors=sorted(set(self.errors))[:3],
        )
        return d


def make_input(image: bytes) -> Any:
    import tritonclient.grpc as grpcclient

    inp = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[image]], dtype=np.object_))
    return inp


def closed_loop(
    url: str,
    images: Sequence[bytes],
    *,
    concurrency: int,
    duration_s: float = 10.0,
    max_requests: int = 100_000,
    model: str = "plantdx",
    timeout_s: float = 30.0,
) -> LoadResult:
    """Send `images` round-robin from `concurrency` workers for `duration_s` (or up to
    `max_requests`); each request carries one image, as a farmer's phone would send it."""
    import tritonclient.grpc as grpcclient

    if not images:
        raise ValueError("closed_loop needs at least one image")
    inputs = [make_input(b) for b in images]
    counter = itertools.count()
    lock = threading.Lock()
    result = LoadResult(concurrency=concurrency, seconds=0.0, ok=0, failed=0)
    deadline = time.monotonic() + duration_s

    def worker() -> None:
        client = grpcclient.InferenceServerClient(url)
        try:
            while time.monotonic() < deadline:
                n = next(counter)
                if n >= max_requests:
                    return
                t0 = time.perf_counter()
                try:
                    client.infer(model, [inputs[n % len(inputs)]], client_timeout=timeout_s)
                except Exception as exc:
                    with lock:
                        result.failed += 1
                        result.errors.append(str(exc).splitlines()[0][:200])
                    continue
                ms = (time.perf_counter() - t0) * 1e3
                with lock:
                    result.ok += 1
                    result.latencies_ms.append(ms)
        finally:
            client.close()

    start = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration_s + timeout_s + 10)
    result.seconds = time.monotonic() - start
    return result
