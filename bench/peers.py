"""Triton against the machine's in-process limit and the FastAPI servers, in one run.

    plantdx bench peers --repository REPO [--repository before=OLD_REPO] \\
        --images ../shared/data/plantvillage-mini --rounds 3 --json peers.json

Each round measures, in an order that rotates from round to round:

- the in-process limit (`plantdx bench inprocess`, its layouts; the best one, and the single
  image on every core);
- each repository on a real Triton (response cache off) over gRPC at the main concurrency and,
  with `lone`, at concurrency 1 (`plantdx bench serve`'s load generator, async);
- the FastAPI + onnxruntime peer (Uvicorn workers, the same network), and the original design
  (FastAPI + PyTorch eager) when its script is given (`peer_server.py`).

Every measurement carries the CPU per image of the server's processes and of the load
generator, and the load average when it began. On a shared machine throughput moves with the
other work; ratios are taken within a round, and the CPU per image is the steadiest figure.
"""

from __future__ import annotations

import functools
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from plantdx.exceptions import ConfigError
from plantdx.serving.server import TritonServer

from .images import load_images
from .inprocess import InprocessBenchConfig, default_layouts, run_inprocess_bench, version_dir
from .levels import LevelResult, ServeBenchConfig
from .loadgen import run_level
from .peer_server import PeerServer, float_onnx, http_closed_loop, original_command, peer_command
from .profile import process_cpu

INPROCESS, SINGLE, PEER, ORIGINAL = (
    "in-process",
    "in-process single",
    "fastapi+onnxruntime",
    "original",
)


@dataclass
class PeersConfig:
    repositories: list[str] = field(default_factory=list)  # PATH or LABEL=PATH
    images: str = ""
    rounds: int = 3
    duration_s: float = 15.0
    warmup_s: float = 3.0
    concurrency: int = 16
    lone: bool = True  # Triton at concurrency 1 and the in-process single image
    layouts: list[str] = field(default_factory=default_layouts)
    peer_script: str = ""  # fastapi_onnx.py; "" leaves the peer out
    peer_workers: int = 2
    original_script: str = ""  # original_fastapi.py; "" leaves it out
    base_port: int = 8750
    max_images: int = 0

    def labelled(self) -> list[tuple[str, Path]]:
        out = []
        for item in self.repositories:
            label, eq, path = item.partition("=")
            out.append((label, Path(path)) if eq else (Path(item).name, Path(item)))
        if not out:
            raise ConfigError("give at least one --repository")
        if len({label for label, _ in out}) != len(out):
            raise ConfigError("give each repository a label of its own (LABEL=PATH)")
        return out


@dataclass
class Measurement:
    system: str
    round: int
    concurrency: int
    img_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    server_cpu_ms_per_img: float | None
    client_cpu_ms_per_img: float | None
    load: list[float]
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _load() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _per_img(cpu_s: float, images: int) -> float | None:
    return round(1000.0 * cpu_s / images, 3) if images else None


def _from_level(
    system: str, rnd: int, r: LevelResult, server_s: float, load: list[float]
) -> Measurement:
    return Measurement(
        system,
        rnd,
        r.concurrency,
        r.img_per_s,
        r.p50_ms,
        r.p99_ms,
        r.errors,
        _per_img(server_s, r.images),
        r.client_cpu_ms_per_img,
        load,
    )


def _inprocess(cfg: PeersConfig, repo: Path, rnd: int) -> list[Measurement]:
    load = _load()
    results = run_inprocess_bench(
        InprocessBenchConfig(
            repository=str(repo),
            images=cfg.images,
            duration_s=cfg.duration_s,
            warmup_s=cfg.warmup_s,
            layouts=cfg.layouts,
            max_images=cfg.max_images,
        )
    )
    out = []
    for r in results:
        single = r.workers == 1 and r.batch == 1 and r.ort_threads == (os.cpu_count() or 1)
        if r.best or (cfg.lone and single):
            out.append(
                Measurement(
                    INPROCESS if r.best else SINGLE,
                    rnd,
                    r.concurrency,
                    r.img_per_s,
                    r.p50_ms,
                    r.p99_ms,
                    r.errors,
                    r.cpu_ms_per_img,
                    None,
                    load,
                    r.layout,
                )
            )
            if r.best and cfg.lone and single:
                out.append(Measurement(**{**out[-1].to_dict(), "system": SINGLE}))
    return out


def _triton(
    cfg: PeersConfig, label: str, repo: Path, images: list[bytes], rnd: int
) -> list[Measurement]:
    port = cfg.base_port
    out = []
    with tempfile.TemporaryDirectory(prefix="plantdx-peers-") as tmp:
        server = TritonServer(
            repository=repo,
            http_port=port,
            grpc_port=port + 1,
            metrics_port=port + 2,
            response_cache_bytes=0,
            log_file=Path(tmp) / "triton.log",
        )
        with server:
            for c in [cfg.concurrency, *([1] if cfg.lone and cfg.concurrency != 1 else [])]:
                level = ServeBenchConfig(
                    url=server.grpc_url,
                    protocol="grpc",
                    warmup_s=0.0,
                    unique=False,
                    window="started",
                    driver="async",
                )
                run_level(_with(level, duration_s=cfg.warmup_s), images, c)
                load = _load()
                cpu0 = sum(process_cpu(server.pid or -1, server.stubs()).values())
                r = run_level(_with(level, duration_s=cfg.duration_s), images, c)
                cpu1 = sum(process_cpu(server.pid or -1, server.stubs()).values())
                out.append(_from_level(f"triton:{label}", rnd, r, cpu1 - cpu0, load))
    return out


def _with(cfg: ServeBenchConfig, **changes: Any) -> ServeBenchConfig:
    return ServeBenchConfig(**{**asdict(cfg), **changes})


def _fastapi(
    system: str, cmd: list[str], port: int, cfg: PeersConfig, images: list[bytes], rnd: int
) -> list[Measurement]:
    with PeerServer(cmd, port) as server:
        http_closed_loop(server.url, images, concurrency=cfg.concurrency, duration_s=cfg.warmup_s)
        load = _load()
        cpu0 = server.cpu_seconds()
        r = http_closed_loop(
            server.url, images, concurrency=cfg.concurrency, duration_s=cfg.duration_s
        )
        return [_from_level(system, rnd, r, server.cpu_seconds() - cpu0, load)]


def run_peers(
    cfg: PeersConfig, on_result: Callable[[Measurement], None] | None = None
) -> list[Measurement]:
    """Every measurement of every round, in the order taken."""
    if cfg.rounds < 1 or cfg.duration_s <= 0 or cfg.concurrency < 1:
        raise ConfigError("rounds, duration and concurrency must be positive")
    repos = cfg.labelled()
    images = load_images(cfg.images, cfg.max_images)
    vdir = version_dir(repos[0][1])
    with tempfile.TemporaryDirectory(prefix="plantdx-peers-onnx-") as tmp:
        steps: list[Callable[[int], list[Measurement]]] = [
            functools.partial(_inprocess, cfg, repos[0][1])
        ]
        steps += [functools.partial(_triton, cfg, label, repo, images) for label, repo in repos]
        if cfg.peer_script:
            onnx = float_onnx(vdir / "model.onnx", Path(tmp))
            port = cfg.base_port + 3
            cmd = peer_command(Path(cfg.peer_script), onnx, cfg.peer_workers, port)
            steps.append(functools.partial(_fastapi, PEER, cmd, port, cfg, images))
        if cfg.original_script:
            port = cfg.base_port + 4
            cmd = _original(cfg, vdir, port)
            steps.append(functools.partial(_fastapi, ORIGINAL, cmd, port, cfg, images))
        rows: list[Measurement] = []
        for rnd in range(cfg.rounds):
            k = rnd % len(steps)
            for step in steps[k:] + steps[:k]:
                for m in step(rnd):
                    rows.append(m)
                    if on_result is not None:
                        on_result(m)
                time.sleep(1.0)  # let the previous server's processes go
    return rows


def _original(cfg: PeersConfig, vdir: Path, port: int) -> list[str]:
    from plantdx.model_repository.layout import read_json
    from plantdx.preprocessing import PreprocessMeta

    prov = read_json(vdir / "provenance.json")
    model = str(prov.get("model_name") or "")
    if not model:
        raise ConfigError(
            f"{vdir}/provenance.json names no model: cannot start the original server"
        )
    classes = len([s for s in (vdir / "labels.txt").read_text().splitlines() if s.strip()])
    size = PreprocessMeta.load(vdir / "preprocessing.json").image_size
    return original_command(Path(cfg.original_script), model, classes, size, port)


def _spread(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "n": len(values),
    }


def _key(m: Measurement) -> tuple[str, int]:
    """In-process rows by role (their layouts differ round to round), servers by concurrency."""
    if m.system == INPROCESS:
        return INPROCESS, 0
    if m.system == SINGLE:
        return SINGLE, 1
    return m.system, m.concurrency


def _name(key: tuple[str, int]) -> str:
    return "in-process, best layout" if key[1] == 0 else f"{key[0]}, c={key[1]}"


def summarise(rows: Sequence[Measurement], concurrency: int) -> dict[str, Any]:
    """Per system: medians and ranges over the rounds; per Triton repository: its ratios to
    the others, each taken within one round."""
    by: dict[tuple[str, int], list[Measurement]] = {}
    for m in rows:
        by.setdefault(_key(m), []).append(m)
    fields = ("img_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_img", "client_cpu_ms_per_img")
    systems = {
        _name(key): {
            f: _spread([getattr(m, f) for m in ms if getattr(m, f) is not None]) for f in fields
        }
        | {
            "errors": sum(m.errors for m in ms),
            "load_1min": _spread([m.load[0] for m in ms]),
            "layouts": sorted({m.detail for m in ms if m.detail}),
        }
        for key, ms in sorted(by.items())
    }

    def at(key: tuple[str, int], rnd: int) -> Measurement | None:
        return next((m for m in by.get(key, []) if m.round == rnd), None)

    tritons = sorted({m.system for m in rows if m.system.startswith("triton:")})
    rounds = sorted({m.round for m in rows})
    ratios = {t: _ratios(t, tritons, by, rounds, concurrency) for t in tritons}
    return {"concurrency": concurrency, "systems": systems, "ratios": ratios}


def _ratios(
    t: str,
    tritons: list[str],
    by: dict[tuple[str, int], list[Measurement]],
    rounds: list[int],
    concurrency: int,
) -> dict[str, Any]:
    """One Triton repository's ratios to every other system, each within one round."""
    pairs: dict[str, list[float]] = {}

    def at(key: tuple[str, int], rnd: int) -> Measurement | None:
        return next((m for m in by.get(key, []) if m.round == rnd), None)

    def add(name: str, value: float) -> None:
        pairs.setdefault(name, []).append(value)

    others = [(PEER, (PEER, concurrency)), (ORIGINAL, (ORIGINAL, concurrency))]
    others += [(INPROCESS, (INPROCESS, 0))]
    others += [(o, (o, concurrency)) for o in tritons if o != t]
    for rnd in rounds:
        main, lone = at((t, concurrency), rnd), at((t, 1), rnd)
        if main is None:
            continue
        for name, key in others:
            other = at(key, rnd)
            if other is None or not other.img_per_s:
                continue
            add(f"img/s / {name}", main.img_per_s / other.img_per_s)
            if name != INPROCESS and main.p99_ms and other.p99_ms:
                add(f"p99 / {name}", main.p99_ms / other.p99_ms)
            if main.server_cpu_ms_per_img and other.server_cpu_ms_per_img:
                add(
                    f"server CPU per image / {name}",
                    main.server_cpu_ms_per_img / other.server_cpu_ms_per_img,
                )
        inproc = at((INPROCESS, 0), rnd)
        if inproc and inproc.server_cpu_ms_per_img and main.server_cpu_ms_per_img:
            with_client = main.server_cpu_ms_per_img + (main.client_cpu_ms_per_img or 0.0)
            add(
                "in-process CPU per image / Triton server's",
                inproc.server_cpu_ms_per_img / main.server_cpu_ms_per_img,
            )
            add(
                "in-process CPU per image / Triton server's + load generator's",
                inproc.server_cpu_ms_per_img / with_client,
            )
        single = at((SINGLE, 1), rnd)
        if lone and single and lone.p50_ms is not None and single.p50_ms is not None:
            add("c=1 p50 - in-process single image p50 (ms)", lone.p50_ms - single.p50_ms)
    return {k: _spread(v) for k, v in pairs.items()}
