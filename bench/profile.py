"""Where a served image's time and CPU go, per concurrency level.

    flock /tmp/plantdx-cpu.lock plantdx bench profile --repository REPO \\
        --data ../shared/data/plantvillage-mini --concurrency 1,16 --seconds 10

Starts a real Triton on the repository (response cache off), drives it with the closed-loop
gRPC load of the sweep and reads, over each measured window:

- Triton's own per-model statistics: queue, compute input/infer/output time per request and
  the mean batch size of each composing model;
- the CPU time of every process of the server (the Triton core, each model's Python-backend
  stubs) and of this process (the load generator) per served image, from /proc.

On a machine where the cores are the bottleneck, the CPU per image says what the ensemble
costs beyond the model and the preprocessing themselves, and who pays it.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from plantdx.serving.server import TritonServer

from .loadgen import closed_loop
from .monitor import cpu_seconds

_STAT_FIELDS = ("success", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass
class LevelProfile:
    concurrency: int
    images: int
    img_per_s: float
    p50_ms: float
    p99_ms: float
    failed: int
    cpu_ms_per_img: dict[str, float] = field(default_factory=dict)
    models: dict[str, dict[str, float]] = field(default_factory=dict)


def process_cpu(server_pid: int, stubs: Mapping[int, tuple[str, str]]) -> dict[str, float]:
    """CPU seconds so far of the Triton process and of each model's stubs (summed by model)."""
    out: dict[str, float] = {}
    core = cpu_seconds(server_pid)
    if core is not None:
        out["triton core"] = core
    for pid, (model, _version) in stubs.items():
        seconds = cpu_seconds(pid)
        if seconds is not None:
            out[f"{model} stubs"] = out.get(f"{model} stubs", 0.0) + seconds
    return out


def model_stats(http_url: str) -> dict[str, dict[str, int]]:
    """Cumulative statistics of every model (`http_url` is host:port): counts, times in ns."""
    with urllib.request.urlopen(f"http://{http_url}/v2/models/stats", timeout=10) as response:
        doc = json.load(response)
    out = {}
    for m in doc.get("model_stats", []):
        s = m["inference_stats"]
        row = {k: int(s[k]["ns"]) for k in _STAT_FIELDS}
        row.update(
            requests=int(s["success"]["count"]),
            executions=int(m.get("execution_count", 0)),
            inferences=int(m.get("inference_count", 0)),
        )
        out[m["name"]] = row
    return out


def stats_delta(
    before: Mapping[str, Mapping[str, int]], after: Mapping[str, Mapping[str, int]]
) -> dict[str, dict[str, float]]:
    """Per model over a window: requests, mean batch size and microseconds per request."""
    out = {}
    for name, b in after.items():
        a = before.get(name, {})
        requests = b["requests"] - a.get("requests", 0)
        if requests <= 0:
            continue
        executions = b["executions"] - a.get("executions", 0)
        row: dict[str, float] = {
            "requests": requests,
            "mean_batch": round((b["inferences"] - a.get("inferences", 0)) / max(executions, 1), 2),
        }
        for k in _STAT_FIELDS:
            row[f"{k}_us"] = round((b[k] - a.get(k, 0)) / requests / 1000.0, 1)
        out[name] = row
    return out


def cpu_per_image(
    before: Mapping[str, float], after: Mapping[str, float], images: int
) -> dict[str, float]:
    """Milliseconds of CPU per served image for each process group, and their total."""
    if images <= 0:
        return {}
    out = {k: round(1000.0 * (after[k] - before.get(k, 0.0)) / images, 2) for k in after}
    out["total"] = round(sum(out.values()), 2)
    return out


def profile_level(
    server: TritonServer, images: list[bytes], concurrency: int, seconds: float
) -> LevelProfile:
    closed_loop(server.grpc_url, images, concurrency=concurrency, duration_s=min(seconds, 3.0))
    pid = server.pid or -1
    stats0, cpu0 = model_stats(server.http_url), process_cpu(pid, server.stubs())
    client0 = time.process_time()
    result = closed_loop(server.grpc_url, images, concurrency=concurrency, duration_s=seconds)
    client_s = time.process_time() - client0
    stats1, cpu1 = model_stats(server.http_url), process_cpu(pid, server.stubs())
    models = stats_delta(stats0, stats1)
    served = int(models.get("plantdx", {}).get("requests", 0))
    cpu0["load generator"], cpu1["load generator"] = 0.0, client_s
    return LevelProfile(
        concurrency=concurrency,
        images=result.images,
        img_per_s=round(result.img_per_s, 1),
        p50_ms=round(result.percentile(50), 1),
        p99_ms=round(result.percentile(99), 1),
        failed=result.errors,
        cpu_ms_per_img=cpu_per_image(cpu0, cpu1, served),
        models=models,
    )


def profile(
    repo: Path,
    images: list[bytes],
    *,
    concurrencies: Iterable[int] = (1, 16),
    seconds: float = 10.0,
    base_port: int = 8430,
    log: Path | None = None,
    server_args: Sequence[str] = (),
) -> list[LevelProfile]:
    server = TritonServer(
        repository=repo,
        http_port=base_port,
        grpc_port=base_port + 1,
        metrics_port=base_port + 2,
        response_cache_bytes=0,  # every image is a miss, as with real photos
        log_file=log,
        extra_args=server_args,
    )
    with server:
        return [profile_level(server, images, c, seconds) for c in concurrencies]


def format_level(p: LevelProfile) -> str:
    lines = [
        f"concurrency {p.concurrency}: {p.img_per_s} img/s, p50 {p.p50_ms} ms, "
        f"p99 {p.p99_ms} ms, {p.failed} failed",
        "  CPU ms per image: " + ", ".join(f"{k} {v}" for k, v in p.cpu_ms_per_img.items()),
    ]
    for name, row in sorted(p.models.items()):
        times = ", ".join(f"{k[:-3]} {row[k]}" for k in row if k.endswith("_us"))
        lines.append(f"  {name}: batch {row['mean_batch']}, µs/request: {times}")
    return "\n".join(lines)
