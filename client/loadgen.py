"""Closed-loop load against a plantdx server: images/s and latency per concurrency level.

Each of `concurrency` workers sends one image, waits for the answer and sends the next, for
a warm-up and then a measured window. Requests that started and finished inside the window
count. The client's own CPU use over the window is measured too (process CPU time, every
thread), so a report shows whether the load generator could have been the bottleneck.

Triton's response cache answers a repeated input without running the model, and a benchmark
that cycles through a folder repeats its images: the server's own statistics (cache hits over
every model) are read at the start and the end of each window, and the hits in between are
reported with the level, so that figures measured on cached answers cannot pass for real work.

Two drivers: `async` runs every worker as a task on one event loop with one
AsyncPlantDxClient (aiohttp or grpc.aio); `threads` gives each worker a thread and a
PlantDxClient of its own (tritonclient's HTTP client is gevent-based: one per thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from plantdx.data import IMAGE_SUFFIXES
from plantdx.exceptions import ConfigError, DatasetError

from .aio import AsyncPlantDxClient
from .client import PlantDxClient
from .options import error_kind
from .results import cache_hit_count

# A failing server answers at once: pause so that errors are counted, not spun on.
_ERROR_PAUSE_S = 0.01


@dataclass
class ServeBenchConfig:
    url: str = "localhost:8000"
    images: str = ""
    protocol: Literal["http", "grpc"] = "http"
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32])
    duration_s: float = 30.0
    warmup_s: float = 3.0
    driver: Literal["async", "threads"] = "async"
    # Make every request's bytes unique, so that a cache keyed on the request bytes (such as an
    # ensemble-level response cache) cannot answer a repeat. It does not defeat a cache keyed on
    # decoded pixels (the default repository's classifier cache): the decoded image is the same.
    # Cache hits are counted per level either way.
    unique: bool = True
    max_images: int = 0
    timeout_s: float = 60.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class LevelResult:
    concurrency: int
    protocol: str
    driver: str
    duration_s: float
    images: int
    errors: int
    img_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    client_cpu_pct: float
    client_cpu_ms_per_img: float | None
    error_examples: list[str] = field(default_factory=list)
    # Answers Triton took from its response cache during the window (every model); None when
    # the server's statistics could not be read (e.g. behind a gateway).
    cache_hits: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def image_paths(folder: str | Path, limit: int = 0) -> list[Path]:
    """Every image under `folder`, sorted (the first `limit` when limit > 0)."""
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if limit:
        paths = paths[:limit]
    if not paths:
        raise DatasetError(f"no images under {root}")
    return paths


def load_images(folder: str | Path, limit: int = 0) -> list[bytes]:
    """Encoded bytes of the images, read once before any timing."""
    return [p.read_bytes() for p in image_paths(folder, limit)]


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


@dataclass
class _Record:
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)


def _summarise(
    cfg: ServeBenchConfig,
    concurrency: int,
    rec: _Record,
    t0: float,
    t1: float,
    cpu_s: float,
    cache_hits: int | None = None,
) -> LevelResult:
    starts, ends = np.array(rec.starts), np.array(rec.ends)
    inside = (starts >= t0) & (ends <= t1) if starts.size else np.zeros(0, dtype=bool)
    lat = (ends[inside] - starts[inside]) * 1000.0
    window = t1 - t0
    errors = [msg for t, msg in rec.errors if t0 <= t <= t1]
    n = int(lat.size)

    def pct(q: float) -> float | None:
        return round(float(np.percentile(lat, q)), 2) if n else None

    return LevelResult(
        concurrency=concurrency,
        protocol=cfg.protocol,
        driver=cfg.driver,
        duration_s=round(window, 2),
        images=n,
        errors=len(errors),
        img_per_s=round(n / window, 2),
        p50_ms=pct(50),
        p90_ms=pct(90),
        p99_ms=pct(99),
        mean_ms=round(float(lat.mean()), 2) if n else None,
        client_cpu_pct=round(100.0 * cpu_s / window, 1),
        client_cpu_ms_per_img=round(1000.0 * cpu_s / n, 3) if n else None,
        error_examples=sorted(set(errors))[:3],
        cache_hits=cache_hits,
    )


def _hits_between(before: int | None, after: int | None) -> int | None:
    if before is None or after is None:
        return None
    return max(0, after - before)


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
    # The statistics have a client of their own: behind busy workers, a request on their
    # connection pool would wait for the end of the window.
    async with (
        AsyncPlantDxClient(
            cfg.url,
            cfg.protocol,
            timeout=cfg.timeout_s,
            retries=0,
            headers=cfg.headers,
            max_connections=concurrency,
        ) as client,
        AsyncPlantDxClient(
            cfg.url,
            cfg.protocol,
            timeout=min(cfg.timeout_s, 10.0),
            retries=0,
            headers=cfg.headers,
            max_connections=1,
        ) as stats,
    ):
        with contextlib.suppress(Exception):  # connect first; the measured loop counts failures
            await client.infer([images[0]], class_count=1)
        t0, t1 = _window(cfg)

        async def worker() -> None:
            while time.perf_counter() < t1:
                data = payloads.next()
                start = time.perf_counter()
                try:
                    await client.infer([data], class_count=1)
                except Exception as exc:
                    rec.errors.append((time.perf_counter(), f"{error_kind(exc)}: {exc}"[:200]))
                    await asyncio.sleep(_ERROR_PAUSE_S)
                    continue
                rec.starts.append(start)
                rec.ends.append(time.perf_counter())

        async def cpu() -> tuple[float, int | None]:
            while time.perf_counter() < t0:
                await asyncio.sleep(0.005)
            hits0 = await _aread_cache_hits(stats)
            c0 = time.process_time()
            while time.perf_counter() < t1:
                await asyncio.sleep(0.005)
            cpu_s = time.process_time() - c0
            return cpu_s, _hits_between(hits0, await _aread_cache_hits(stats))

        cpu_task = asyncio.ensure_future(cpu())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu_s, hits = await cpu_task
    return _summarise(cfg, concurrency, rec, t0, t1, cpu_s, hits)


def _threads_level(cfg: ServeBenchConfig, images: list[bytes], concurrency: int) -> LevelResult:
    rec = _Record()
    lock = threading.Lock()
    connected = threading.Barrier(concurrency + 1)
    go = threading.Barrier(concurrency + 1)
    window: list[float] = []

    def worker(k: int) -> None:
        payloads = _Payloads(images, cfg.unique, offset=k * 7919)
        with PlantDxClient(
            cfg.url, cfg.protocol, timeout=cfg.timeout_s, retries=0, headers=cfg.headers
        ) as client:
            with contextlib.suppress(Exception):  # the measured loop counts failures
                client.infer([images[0]], class_count=1)
            connected.wait()
            go.wait()
            t1 = window[1]
            starts, ends, errors = [], [], []
            while time.perf_counter() < t1:
                data = payloads.next()
                start = time.perf_counter()
                try:
                    client.infer([data], class_count=1)
                except Exception as exc:
                    errors.append((time.perf_counter(), f"{error_kind(exc)}: {exc}"[:200]))
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
    with PlantDxClient(
        cfg.url, cfg.protocol, timeout=min(cfg.timeout_s, 10.0), retries=0, headers=cfg.headers
    ) as stats:
        for t in threads:
            t.start()
        connected.wait()
        window.extend(_window(cfg))
        go.wait()
        cpu_s = _cpu_over(
            window[0],
            window[1],
            lambda: False,
            at_start=lambda: hits.append(_read_cache_hits(stats)),
            at_end=lambda: hits.append(_read_cache_hits(stats)),
        )
    for t in threads:
        t.join()
    cache_hits = _hits_between(*hits) if len(hits) == 2 else None
    return _summarise(cfg, concurrency, rec, window[0], window[1], cpu_s, cache_hits)


def run_serve_bench(
    cfg: ServeBenchConfig, on_level: Callable[[LevelResult], None] | None = None
) -> list[LevelResult]:
    """One LevelResult per concurrency level, in the order given."""
    if not cfg.concurrency or any(c < 1 for c in cfg.concurrency):
        raise ConfigError(f"concurrency levels must be positive integers, got {cfg.concurrency}")
    if cfg.duration_s <= 0 or cfg.warmup_s < 0:
        raise ConfigError("duration must be positive and warm-up not negative")
    images = load_images(cfg.images, cfg.max_images)
    # Fail at once, with the client's message, when the server cannot answer at all.
    with PlantDxClient(
        cfg.url, cfg.protocol, timeout=cfg.timeout_s, retries=2, headers=cfg.headers
    ) as client:
        client.infer([images[0]], class_count=1)
    results = []
    for c in cfg.concurrency:
        if cfg.driver == "async":
            result = asyncio.run(_async_level(cfg, images, c))
        else:
            result = _threads_level(cfg, images, c)
        results.append(result)
        if on_level is not None:
            on_level(result)
    return results


def machine() -> str:
    """A one-line description of this machine for reports."""
    import platform

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU cores ({cpu or platform.processor()}), {platform.system()}"


def plot_levels(results: list[LevelResult], out: str | Path, title: str = "") -> Path:
    """Throughput and p99 latency against concurrency, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r.concurrency for r in results]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.plot(xs, [r.img_per_s for r in results], "o-", color="tab:green", label="images/s")
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("throughput (images/s)", color="tab:green")
    ax.set_ylim(bottom=0)
    right = ax.twinx()
    right.plot(xs, [r.p99_ms or 0 for r in results], "s--", color="tab:red", label="p99 latency")
    right.set_ylabel("p99 latency (ms)", color="tab:red")
    right.set_ylim(bottom=0)
    ax.set_title(title or f"plantdx over {results[0].protocol}" if results else title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
