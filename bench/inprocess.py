"""The machine's limit for plantdx's work: preprocessing + the ONNX model, in-process, no server.

It runs exactly what a served request runs — `plantdx.preprocessing.Preprocessor` with the
version's `preprocessing.json` (the uint8 pixels the classifier takes, or normalised float ones
for a model exported before the graph normalised them), onnxruntime on
`classifier/N/model.onnx`, the calibrated
softmax and the decision of the version's `preprocess/N/decision.json` — in
worker processes, for several layouts of the machine's cores (worker processes × onnxruntime
threads × batch size). The best layout's throughput is the ceiling a server on this machine
can approach; the layout with one worker using every core at batch 1 gives the single-image
latency a server adds its overhead to. Each layout also reports the CPU its workers used per
image (every thread, over the measured window): on a machine shared with other work, the
steadiest figure to compare a server's CPU per image with.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plantdx.exceptions import ConfigError, PlantDxError, RepositoryError
from plantdx.model_repository.layout import versions
from plantdx.model_repository.names import CLASSIFIER, ONNX_OUTPUT, PREPROCESS
from plantdx.preprocessing import META_FILENAME

from .images import image_paths

_LAYOUT = re.compile(r"^(\d+)x(\d+)b(\d+)$")


def default_layouts(cores: int | None = None) -> list[str]:
    """Every core busy, split between processes and onnxruntime threads, at batch 1 and 8."""
    n = cores or os.cpu_count() or 1
    layouts = [f"1x{n}b1", f"{n}x1b1", f"1x{n}b8", f"{n}x1b8"]
    return list(dict.fromkeys(layouts))


@dataclass
class InprocessBenchConfig:
    repository: str = ""
    images: str = ""
    version: int = 0  # 0: the newest classifier version
    duration_s: float = 15.0
    warmup_s: float = 2.0
    # WORKERSxTHREADSbBATCH: worker processes, onnxruntime intra-op threads each, batch size.
    layouts: list[str] = field(default_factory=default_layouts)
    max_images: int = 0


@dataclass
class LayoutResult:
    layout: str
    workers: int
    ort_threads: int
    batch: int
    concurrency: int  # images in flight: workers × batch
    duration_s: float
    images: int
    errors: int
    img_per_s: float
    p50_ms: float | None  # latency of one batch: preprocessing + model + softmax
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    preprocess_ms_per_img: float
    model_ms_per_img: float
    cpu_ms_per_img: float | None = None  # the workers' CPU (every thread) over the window
    best: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_layout(text: str) -> tuple[int, int, int]:
    m = _LAYOUT.match(text.strip())
    if not m or min(int(g) for g in m.groups()) < 1:
        raise ConfigError(
            f"layout {text!r} is not WORKERSxTHREADSbBATCH with positive numbers (e.g. 2x1b8)"
        )
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def version_dir(repository: str | Path, version: int = 0) -> Path:
    root = Path(repository) / CLASSIFIER
    found = versions(root)
    if not found:
        raise RepositoryError(f"no classifier versions under {root}")
    v = version or found[-1]
    vdir = root / str(v)
    for name in ("model.onnx", META_FILENAME):
        if not (vdir / name).is_file():
            raise RepositoryError(f"{vdir} has no {name}")
    return vdir


def _worker(
    vdir: str,
    paths: list[str],
    threads: int,
    batch: int,
    offset: int,
    warmup_s: float,
    duration_s: float,
    barrier: Any,
    results: Any,
) -> None:
    import onnxruntime as ort

    from plantdx.decision import DECISION_FILENAME, DecisionRule
    from plantdx.preprocessing import PreprocessMeta, Preprocessor

    pre = Preprocessor(PreprocessMeta.load(Path(vdir) / META_FILENAME))
    # The rule travels in preprocess/N beside classifier/N; absent for older exports (identity).
    rule = DecisionRule.load(
        Path(vdir).parent.parent / PREPROCESS / Path(vdir).name / DECISION_FILENAME
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(
        str(Path(vdir) / "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
    )
    name = session.get_inputs()[0].name
    # What the classifier takes: uint8 pixels it normalises itself, or (older exports) floats.
    prepare = pre.pixels if session.get_inputs()[0].type == "tensor(uint8)" else pre
    images = [Path(p).read_bytes() for p in paths]
    k = offset

    def one_batch() -> tuple[float, float, int]:
        nonlocal k
        t0 = time.perf_counter()
        pixels, errors = [], 0
        for _ in range(batch):
            data = images[k % len(images)]
            k += 1
            try:
                pixels.append(prepare(data))
            except Exception:
                errors += 1
        t1 = time.perf_counter()
        if pixels:
            # The logits only, as a served `plantdx` request asks (no class-activation maps).
            (logits,) = session.run([ONNX_OUTPUT], {name: np.stack(pixels)})
            _ = rule.answered(rule.probabilities(logits))
        return t1 - t0, time.perf_counter() - t1, errors

    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        one_batch()
    barrier.wait()
    start = time.perf_counter()
    cpu0 = time.process_time()
    end = start + duration_s
    lat, pre_s, model_s, n, errors = [], 0.0, 0.0, 0, 0
    last = start
    while time.perf_counter() < end:
        p, m, e = one_batch()
        last = time.perf_counter()
        lat.append(p + m)
        pre_s, model_s, errors, n = pre_s + p, model_s + m, errors + e, n + batch - e
    results.put((n, last - start, lat, pre_s, model_s, errors, time.process_time() - cpu0))


def _collect(procs: list[Any], results: Any, deadline: float) -> list[Any]:
    """Every worker's result; a worker that dies (bad model file, out of memory) is an error
    at once instead of a wait for the deadline."""
    parts: list[Any] = []
    try:
        while len(parts) < len(procs):
            try:
                parts.append(results.get(timeout=1.0))
                continue
            except queue.Empty:
                pass
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                raise PlantDxError(
                    f"in-process worker failed (exit code {dead[0].exitcode})"
                    if dead
                    else "in-process workers did not finish in time"
                )
    finally:
        for p in procs:
            p.join(timeout=30 if len(parts) == len(procs) else 0)
            if p.is_alive():
                p.kill()
    return parts


def _run_layout(
    vdir: Path, paths: list[str], layout: str, cfg: InprocessBenchConfig
) -> LayoutResult:
    workers, threads, batch = parse_layout(layout)
    ctx = mp.get_context("spawn")  # no onnxruntime thread pool inherited through fork
    barrier = ctx.Barrier(workers)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(
                str(vdir),
                paths,
                threads,
                batch,
                w * 7919,
                cfg.warmup_s,
                cfg.duration_s,
                barrier,
                results,
            ),
            daemon=True,
        )
        for w in range(workers)
    ]
    for p in procs:
        p.start()
    parts = _collect(
        procs, results, deadline=time.monotonic() + cfg.warmup_s + cfg.duration_s + 300
    )
    n = sum(part[0] for part in parts)
    rate = sum(part[0] / part[1] for part in parts if part[1] > 0)
    lat = np.array([x for part in parts for x in part[2]]) * 1000.0

    def pct(q: float) -> float | None:
        return round(float(np.percentile(lat, q)), 2) if lat.size else None

    return LayoutResult(
        layout=layout,
        workers=workers,
        ort_threads=threads,
        batch=batch,
        concurrency=workers * batch,
        duration_s=round(max(part[1] for part in parts), 2),
        images=n,
        errors=sum(part[5] for part in parts),
        img_per_s=round(rate, 2),
        p50_ms=pct(50),
        p90_ms=pct(90),
        p99_ms=pct(99),
        mean_ms=round(float(lat.mean()), 2) if lat.size else None,
        preprocess_ms_per_img=round(1000 * sum(part[3] for part in parts) / max(n, 1), 3),
        model_ms_per_img=round(1000 * sum(part[4] for part in parts) / max(n, 1), 3),
        cpu_ms_per_img=round(1000 * sum(part[6] for part in parts) / max(n, 1), 3),
    )


def run_inprocess_bench(cfg: InprocessBenchConfig, on_layout: Any = None) -> list[LayoutResult]:
    """One result per layout; the fastest is marked `best`."""
    if cfg.duration_s <= 0 or cfg.warmup_s < 0:
        raise ConfigError("duration must be positive and warm-up not negative")
    layouts = [layout.strip() for layout in cfg.layouts if layout.strip()]
    if not layouts:
        raise ConfigError("give at least one layout (WORKERSxTHREADSbBATCH)")
    for layout in layouts:
        parse_layout(layout)
    vdir = version_dir(cfg.repository, cfg.version)
    paths = [str(p) for p in image_paths(cfg.images, cfg.max_images)]
    out = []
    for layout in layouts:
        result = _run_layout(vdir, paths, layout, cfg)
        out.append(result)
        if on_layout is not None:
            on_layout(result)
    max(out, key=lambda r: r.img_per_s).best = True
    return out
