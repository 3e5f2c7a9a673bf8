"""The batching/instances sweep behind the serving defaults, and the response-cache study.

    flock /tmp/plantdx-cpu.lock plantdx bench sweep --repository REPO \\
        --data ../shared/data/plantvillage-mini --seconds 8

Each variant rewrites the composing models' configs in a private copy of the repository
(instances, queue delay, the classifier's onnxruntime intra-op threads, where the response
cache is), starts a real Triton on it and drives it with `loadgen.closed_loop` over gRPC at
each concurrency. Nothing here changes the repository it is given.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from plantdx.model_repository.config import parse_pbtxt, to_pbtxt
from plantdx.model_repository.names import CLASSIFIER, ENSEMBLE, POSTPROCESS, PREPROCESS
from plantdx.serving.server import TritonServer

from .loadgen import LevelResult, closed_loop

CachePlace = Literal["none", "preprocess", "classifier", "composing", "ensemble"]
_CACHED: dict[str, tuple[str, ...]] = {
    "none": (),
    "preprocess": (PREPROCESS,),
    "classifier": (CLASSIFIER,),
    "composing": (PREPROCESS, CLASSIFIER),
    "ensemble": (ENSEMBLE,),
}


@dataclass(frozen=True)
class Variant:
    name: str
    preprocess_instances: int = 2
    classifier_instances: int = 1
    classifier_threads: int = 0  # 0: onnxruntime's default, every core
    queue_delay_us: int = 2000
    cache: CachePlace = "none"  # the sweep repeats images: a cache would inflate it


def configure(repo: Path, v: Variant) -> None:
    """Rewrite the configs of `repo` (a private copy) for one variant."""
    for name in (ENSEMBLE, PREPROCESS, CLASSIFIER, POSTPROCESS):
        path = repo / name / "config.pbtxt"
        cfg = parse_pbtxt(path.read_text())
        if name != ENSEMBLE:
            cfg.dynamic_batching.max_queue_delay_microseconds = v.queue_delay_us
        if name == PREPROCESS:
            cfg.instance_group[0].count = v.preprocess_instances
        if name == CLASSIFIER:
            cfg.instance_group[0].count = v.classifier_instances
            if v.classifier_threads:
                cfg.parameters["intra_op_threads"].string_value = str(v.classifier_threads)
            elif "intra_op_threads" in cfg.parameters:
                del cfg.parameters["intra_op_threads"]
        cfg.response_cache.enable = name in _CACHED[v.cache]
        path.write_text(to_pbtxt(cfg))


def _server(repo: Path, base_port: int, log: Path) -> TritonServer:
    return TritonServer(
        repository=repo,
        http_port=base_port,
        grpc_port=base_port + 1,
        metrics_port=base_port + 2,
        log_file=log,
    )


def run_variant(
    repo: Path,
    v: Variant,
    images: list[bytes],
    *,
    concurrencies: Iterable[int] = (1, 8),
    seconds: float = 8.0,
    warmup_s: float = 2.0,
    base_port: int = 8410,
    workdir: Path | None = None,
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="plantdx-sweep-", dir=workdir) as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(repo, copy)
        configure(copy, v)
        rows = []
        with _server(copy, base_port, Path(tmp) / "triton.log") as server:
            for c in concurrencies:
                closed_loop(server.grpc_url, images, concurrency=c, duration_s=warmup_s)
                res = closed_loop(server.grpc_url, images, concurrency=c, duration_s=seconds)
                rows.append({"variant": asdict(v), **summary(res)})
        return rows


def cache_study(
    repo: Path,
    images: list[bytes],
    *,
    places: Sequence[CachePlace] = ("none", "preprocess", "classifier", "ensemble"),
    concurrency: int = 1,
    seconds: float = 6.0,
    base_port: int = 8410,
) -> list[dict[str, Any]]:
    """Latency of unique images (every lookup misses) and of one repeated image (hits)."""
    rows = []
    for place in places:
        v = Variant(name=f"cache-{place}", cache=place)
        with tempfile.TemporaryDirectory(prefix="plantdx-cache-") as tmp:
            copy = Path(tmp) / "repo"
            shutil.copytree(repo, copy)
            configure(copy, v)
            with _server(copy, base_port, Path(tmp) / "triton.log") as server:
                closed_loop(server.grpc_url, images[:8], concurrency=concurrency, duration_s=1.0)
                unique = closed_loop(
                    server.grpc_url,
                    images[8:],
                    concurrency=concurrency,
                    duration_s=seconds,
                    max_requests=len(images) - 8,
                )
                same = closed_loop(
                    server.grpc_url, images[:1], concurrency=concurrency, duration_s=seconds
                )
        rows.append(
            {
                "cache": place,
                "unique": _brief(unique),
                "repeated": _brief(same),
            }
        )
    return rows


def summary(r: LevelResult) -> dict[str, Any]:
    """A sweep row's figures: counts, throughput and latency (ms) rounded to 0.1."""
    return {
        "concurrency": r.concurrency,
        "seconds": r.duration_s,
        "ok": r.images,
        "failed": r.errors,
        "throughput": round(r.img_per_s, 1),
        "p50_ms": round(r.percentile(50), 1),
        "p95_ms": round(r.percentile(95), 1),
        "p99_ms": round(r.percentile(99), 1),
        "mean_ms": round(r.mean_ms, 1) if r.mean_ms is not None else None,
        "first_errors": r.error_examples,
    }


def _brief(r: LevelResult) -> dict[str, Any]:
    s = summary(r)
    return {k: s[k] for k in ("ok", "failed", "throughput", "p50_ms", "p95_ms")}


def sweep(
    repo: Path,
    images: list[bytes],
    *,
    only: Sequence[str] = (),
    seconds: float = 8.0,
    base_port: int = 8410,
) -> Iterator[dict[str, Any]]:
    """Rows of every variant (or of those named in `only`), in VARIANTS order."""
    for v in VARIANTS:
        if only and v.name not in only:
            continue
        yield from run_variant(repo, v, images, seconds=seconds, base_port=base_port)


VARIANTS = (
    Variant("pre1-thr2-d2000", preprocess_instances=1, classifier_threads=2),
    Variant("pre2-thr2-d2000", preprocess_instances=2, classifier_threads=2),
    Variant("pre2-thr1-d2000", preprocess_instances=2, classifier_threads=1),
    Variant("pre2-thr1-clf2-d2000", preprocess_instances=2, classifier_threads=1,
            classifier_instances=2),
    Variant("pre2-thr2-d0", preprocess_instances=2, classifier_threads=2, queue_delay_us=0),
    Variant("pre2-thr2-d500", preprocess_instances=2, classifier_threads=2, queue_delay_us=500),
    Variant("pre2-thr2-d5000", preprocess_instances=2, classifier_threads=2, queue_delay_us=5000),
)  # fmt: skip
