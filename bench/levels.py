"""The load generator's settings and its one result type: a concurrency level's counts,
throughput and latency over the measured window."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from plantdx.choices import Driver, Protocol


@dataclass
class ServeBenchConfig:
    url: str = "localhost:8000"
    images: str = ""
    protocol: Protocol = "http"
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32])
    duration_s: float = 30.0
    warmup_s: float = 3.0
    driver: Driver = "async"
    # Make every request's bytes unique, so that a cache keyed on the request bytes (such as an
    # ensemble-level response cache) cannot answer a repeat. It does not defeat a cache keyed on
    # decoded pixels (the default repository's classifier cache): the decoded image is the same.
    # Cache hits are counted per level either way.
    unique: bool = True
    max_images: int = 0
    timeout_s: float = 60.0
    headers: dict[str, str] = field(default_factory=dict)
    window: Literal["inside", "started"] = "inside"
    max_requests: int = 0  # "started" only: stop after this many requests in all (0: none)

    def urls(self) -> list[str]:
        """The servers: `url` may name several, comma-separated (load goes round robin)."""
        from plantdx.exceptions import ConfigError

        found = [u.strip() for u in self.url.split(",") if u.strip()]
        if not found:
            raise ConfigError("no server address in --url")
        return found


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
    # Every counted latency (ms), for other percentiles; not part of the report.
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["latencies_ms"]
        return d

    def percentile(self, q: float) -> float:
        """The q-th percentile of the latencies (ms); NaN when nothing was counted."""
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


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
    if cfg.window == "started":
        # Every request sent inside the window counts, with its answer however late; the
        # window ends with the last answer (early when the request budget ran out).
        answered = [*rec.ends, *(t for t, _ in rec.errors)]
        t1 = max(answered) if answered else t1
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
        latencies_ms=[float(x) for x in lat],
    )


def _hits_between(before: int | None, after: int | None) -> int | None:
    if before is None or after is None:
        return None
    return max(0, after - before)
