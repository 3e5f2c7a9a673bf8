"""Closed-loop load against a plantdx server: images/s and latency per concurrency level.

Each of `concurrency` workers sends one image, waits for the answer and sends the next, for
a warm-up and then a measured window. Requests that started and finished inside the window
count. The client's own CPU use over the window is measured too (process CPU time, every
thread), so a report shows whether the load generator could have been the bottleneck.

Triton's response cache answers a repeated input without running the model, and a benchmark
that cycles through a folder repeats its images: the server's own statistics (cache hits over
every model) are read at the start and the end of each window, and the hits in between are
reported with the level, so that figures measured on cached answers cannot pass for real work.

Several servers (`url` "HOST:PORT,HOST:PORT,..."): the requests go round robin over them, one
client (and connection pool) per server, and the errors and cache hits of all of them are
counted together (an error names its server).

Two drivers: `async` runs every worker as a task on one event loop with one
AsyncPlantDxClient (aiohttp or grpc.aio); `threads` gives each worker a thread and a
PlantDxClient of its own (tritonclient's HTTP client is gevent-based: one per thread). Both
speak HTTP or gRPC.

Two ways to count (`window`): "inside" (`plantdx bench serve`) counts the requests that
started and finished inside the measured window, after a warm-up; "started" (the serving
sweep and profile) counts every request sent before the window's end, waits for its answer
and sends nothing before the window, so the server's own statistics over the run hold
exactly the requests counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable

from plantdx.client import AsyncPlantDxClient, PlantDxClient
from plantdx.client.options import error_kind
from plantdx.client.results import cache_hit_count
from plantdx.exceptions import ConfigError

from .images import load_images
from .levels import LevelResult, ServeBenchConfig, _hits_between, _Record, _summarise

__all__ = ["LevelResult", "ServeBenchConfig", "closed_loop", "run_level", "run_serve_bench"]

# A failing server answers at once: pause so that errors are counted, not spun on.
_ERROR_PAUSE_S = 0.01


class _Payloads:
    """Cycles through the images; with `unique`, appends 16 bytes after the image's end: a
    random tag of this instance (levels and runs never repeat each other's requests) and a
    counter. JPEG and PNG decoders stop at their end marker, so decoding work is unchanged,
    and so is the decoded image: a cache keyed on pixels still answers the repeats."""

    def __init__(self, images: list[bytes], unique: bool, offset: int = 0) -> None:
        self.images = images
        self.unique = unique
        self.counter = itertools.count(offset)
        self.tag = os.urandom(8)

    def next(self) -> bytes:
        n = next(self.counter)
        data = self.images[n % len(self.images)]
        return data + self.tag + n.to_bytes(8, "little") if self.unique else data


def _read_cache_hits(client: PlantDxClient) -> int | None:
    """Response-cache hits so far over every model; None when the statistics cannot be read."""
    try:
        return cache_hit_count(client.inference_statistics())
    except Exception:
        return None


async def _aread_cache_hits(client: AsyncPlantDxClient) -> int | None:
    try:
        return cache_hit_count(await client.inference_statistics())
    except Exception:
        return None


class _Budget:
    """Whether a worker may send another request: inside the window, and under
    `max_requests` in all when it is set (itertools.count is atomic under the GIL)."""

    def __init__(self, cfg: ServeBenchConfig) -> None:
        self.max = cfg.max_requests if cfg.window == "started" else 0
        self.sent = itertools.count()

    def more(self, t1: float) -> bool:
        return time.perf_counter() < t1 and (not self.max or next(self.sent) < self.max)


def _connect_first(cfg: ServeBenchConfig) -> bool:
    """A first, uncounted request per client to connect before the window ("inside" only:
    with "started", the server counts every request, so every request is counted)."""
    return cfg.window == "inside"


def _window(cfg: ServeBenchConfig) -> tuple[float, float]:
    t0 = time.perf_counter() + cfg.warmup_s
    return t0, t0 + cfg.duration_s


def _cpu_over(
    t0: float,
    t1: float,
    stop: Callable[[], bool],
    at_start: Callable[[], None] | None = None,
    at_end: Callable[[], None] | None = None,
) -> float:
    """Process CPU seconds between perf_counter instants t0 and t1 (sleeps until then);
    `at_start` and `at_end` run at t0 and t1, outside the measured CPU time."""
    while time.perf_counter() < t0 and not stop():
        time.sleep(0.005)
    if at_start is not None:
        at_start()
    c0 = time.process_time()
    while time.perf_counter() < t1 and not stop():
        time.sleep(0.005)
    cpu_s = time.process_time() - c0
    if at_end is not None:
        at_end()
    return cpu_s


async def _async_level(cfg: ServeBenchConfig, images: list[bytes], concurrency: int) -> LevelResult:
    rec = _Record()
    payloads = _Payloads(images, cfg.unique)
    urls = cfg.urls()
    turn = itertools.count()  # round robin over the servers, one request at a time
    # The statistics have clients of their own: behind busy workers, a request on their
    # connection pool would wait for the end of the window.
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                AsyncPlantDxClient(
                    url,
                    cfg.protocol,
                    timeout=cfg.timeout_s,
                    retries=0,
                    headers=cfg.headers,
                    max_connections=concurrency,
                )
            )
            for url in urls
        ]
        stats = [
            await stack.enter_async_context(
                AsyncPlantDxClient(
                    url,
                    cfg.protocol,
                    timeout=min(cfg.timeout_s, 10.0),
                    retries=0,
                    headers=cfg.headers,
                    max_connections=1,
                )
            )
            for url in urls
        ]
        if _connect_first(cfg):
            for client in clients:
                with contextlib.suppress(Exception):  # the measured loop counts failures
                    await client.infer([images[0]], class_count=1)
        t0, t1 = _window(cfg)
        budget = _Budget(cfg)

        async def worker() -> None:
            while budget.more(t1):
                data = payloads.next()
                k = next(turn) % len(clients)
                start = time.perf_counter()
                try:
                    await clients[k].infer([data], class_count=1)
                except Exception as exc:
                    rec.errors.append((time.perf_counter(), _error_text(exc, urls, k)))
                    await asyncio.sleep(_ERROR_PAUSE_S)
                    continue
                rec.starts.append(start)
                rec.ends.append(time.perf_counter())

        done = asyncio.Event()  # every worker stopped (at t1, or out of requests)

        async def hits_now() -> int | None:
            return _sum_hits([await _aread_cache_hits(c) for c in stats])

        async def cpu() -> tuple[float, int | None]:
            while time.perf_counter() < t0 and not done.is_set():
                await asyncio.sleep(0.005)
            hits0 = await hits_now()
            c0 = time.process_time()
            while time.perf_counter() < t1 and not done.is_set():
                await asyncio.sleep(0.005)
            cpu_s = time.process_time() - c0
            return cpu_s, _hits_between(hits0, await hits_now())

        cpu_task = asyncio.ensure_future(cpu())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        done.set()
        cpu_s, hits = await cpu_task
    return _summarise(cfg, concurrency, rec, t0, t1, cpu_s, hits)


def _error_text(exc: Exception, urls: list[str], k: int) -> str:
    where = f"{urls[k]}: " if len(urls) > 1 else ""
    return f"{where}{error_kind(exc)}: {exc}"[:200]


def _sum_hits(hits: list[int | None]) -> int | None:
    """Cache hits over every server (None when any server's statistics could not be read)."""
    return None if any(h is None for h in hits) else sum(h for h in hits if h is not None)


def _threads_level(cfg: ServeBenchConfig, images: list[bytes], concurrency: int) -> LevelResult:
    rec = _Record()
    lock = threading.Lock()
    connected = threading.Barrier(concurrency + 1)
    go = threading.Barrier(concurrency + 1)
    window: list[float] = []
    budget = _Budget(cfg)
    urls = cfg.urls()
    turn = itertools.count()  # round robin over the servers (atomic under the GIL)

    def worker(k: int) -> None:
        payloads = _Payloads(images, cfg.unique, offset=k * 7919)
        with contextlib.ExitStack() as stack:
            clients = [
                stack.enter_context(
                    PlantDxClient(
                        url, cfg.protocol, timeout=cfg.timeout_s, retries=0, headers=cfg.headers
                    )
                )
                for url in urls
            ]
            if _connect_first(cfg):
                for client in clients:
                    with contextlib.suppress(Exception):  # the measured loop counts failures
                        client.infer([images[0]], class_count=1)
            connected.wait()
            go.wait()
            t1 = window[1]
            starts, ends, errors = [], [], []
            while budget.more(t1):
                data = payloads.next()
                i = next(turn) % len(clients)
                start = time.perf_counter()
                try:
                    clients[i].infer([data], class_count=1)
                except Exception as exc:
                    errors.append((time.perf_counter(), _error_text(exc, urls, i)))
                    time.sleep(_ERROR_PAUSE_S)
                    continue
                starts.append(start)
                ends.append(time.perf_counter())
        with lock:
            rec.starts += starts
            rec.ends += ends
            rec.errors += errors

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    hits: list[int | None] = []
    with contextlib.ExitStack() as stack:
        stats = [
            stack.enter_context(
                PlantDxClient(
                    url,
                    cfg.protocol,
                    timeout=min(cfg.timeout_s, 10.0),
                    retries=0,
                    headers=cfg.headers,
                )
            )
            for url in urls
        ]

        def read_hits() -> None:
            hits.append(_sum_hits([_read_cache_hits(c) for c in stats]))

        for t in threads:
            t.start()
        connected.wait()
        window.extend(_window(cfg))
        go.wait()
        cpu_s = _cpu_over(
            window[0],
            window[1],
            lambda: not any(t.is_alive() for t in threads),
            at_start=read_hits,
            at_end=read_hits,
        )
    for t in threads:
        t.join()
    cache_hits = _hits_between(*hits) if len(hits) == 2 else None
    return _summarise(cfg, concurrency, rec, window[0], window[1], cpu_s, cache_hits)


def run_level(cfg: ServeBenchConfig, images: list[bytes], concurrency: int) -> LevelResult:
    """One concurrency level with the configured driver."""
    if cfg.driver == "async":
        return asyncio.run(_async_level(cfg, images, concurrency))
    return _threads_level(cfg, images, concurrency)


def run_serve_bench(
    cfg: ServeBenchConfig,
    on_level: Callable[[LevelResult], None] | None = None,
    on_level_start: Callable[[int], None] | None = None,
) -> list[LevelResult]:
    """One LevelResult per concurrency level, in the order given; `on_level_start(c)` as level
    c begins (it takes about warmup_s + duration_s), `on_level(result)` when it is done."""
    if not cfg.concurrency or any(c < 1 for c in cfg.concurrency):
        raise ConfigError(f"concurrency levels must be positive integers, got {cfg.concurrency}")
    if cfg.duration_s <= 0 or cfg.warmup_s < 0:
        raise ConfigError("duration must be positive and warm-up not negative")
    images = load_images(cfg.images, cfg.max_images)
    # Fail at once, with the client's message, when a server cannot answer at all.
    for url in cfg.urls():
        with PlantDxClient(
            url, cfg.protocol, timeout=cfg.timeout_s, retries=2, headers=cfg.headers
        ) as client:
            client.infer([images[0]], class_count=1)
    results = []
    for c in cfg.concurrency:
        if on_level_start is not None:
            on_level_start(c)
        result = run_level(cfg, images, c)
        results.append(result)
        if on_level is not None:
            on_level(result)
    return results


def closed_loop(
    url: str,
    images: list[bytes],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 0.0,
    max_requests: int = 0,
    timeout_s: float = 30.0,
) -> LevelResult:
    """The serving sweep's and profile's load: gRPC, one thread and client per worker, the
    images as they are (a cache may answer repeats), every request sent counted."""
    if not images:
        raise ConfigError("closed_loop needs at least one image")
    cfg = ServeBenchConfig(
        url=url,
        protocol="grpc",
        duration_s=duration_s,
        warmup_s=warmup_s,
        driver="threads",
        unique=False,
        timeout_s=timeout_s,
        window="started",
        max_requests=max_requests,
    )
    return run_level(cfg, images, concurrency)
