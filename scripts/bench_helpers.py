"""Steps of scripts/bench_all.sh that need Python: build the benchmark repository, feed and read
perf_analyzer, and write the comparison table.

    python scripts/bench_helpers.py make-repo --data DIR --out WORK [--model efficientnet_b0]
    python scripts/bench_helpers.py serve --repo REPO --http-port P --grpc-port P --metrics-port P
    python scripts/bench_helpers.py cpu-monitor --tree PID --out FILE   (until SIGTERM)
    python scripts/bench_helpers.py perf-input --images DIR --out input.json [--max-images N]
    python scripts/bench_helpers.py perf-json --csv pa.csv --out pa.json --label NAME
    python scripts/bench_helpers.py table --results DIR --out table.md
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import struct
import sys
from pathlib import Path
from typing import Any


def make_repo(args: argparse.Namespace) -> None:
    """A random-weight checkpoint of `model` (speed does not depend on the weights), exported
    to a fresh repository with the project's own export (ONNX, parity-checked)."""
    import torch

    from plantdx.checkpoint import Checkpoint, save_checkpoint
    from plantdx.data import scan_image_folder
    from plantdx.export import ExportConfig, export
    from plantdx.models import create_model, get_spec, model_kwargs_for_checkpoint

    torch.manual_seed(0)
    classes = scan_image_folder(args.data).class_names
    model = create_model(args.model, num_classes=len(classes), image_size=args.image_size)
    ckpt = Checkpoint(
        model_name=args.model,
        class_names=list(classes),
        preprocessing=get_spec(args.model).preprocessing(args.image_size),
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        model_kwargs=model_kwargs_for_checkpoint(model),
    )
    out = Path(args.out)
    path = save_checkpoint(ckpt, out / "run" / "best.pt")
    result = export(
        ExportConfig(
            source=str(path),
            repository=str(out / "repo"),
            check_data=args.data,
            check_images=32,
            # Random weights give near-ties between classes; the top-1 check then only
            # measures float noise. Probabilities must still agree to 1e-4.
            min_top1_agreement=0.9,
        )
    )
    print(f"exported {args.model} to {result.repository} version {result.version}")


def serve(args: argparse.Namespace) -> None:
    """Triton on the repository until SIGTERM, with the response cache off: a benchmark that
    cycles through a folder would otherwise be answered from the cache."""
    import signal
    import threading

    from plantdx.serving import TritonServer

    server = TritonServer(
        repository=args.repo,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        response_cache_bytes=0,
        log_file=args.log,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server.start(timeout_s=300)
    print(f"ready http={server.http_url} grpc={server.grpc_url}", flush=True)
    try:
        while not stop.is_set() and server.is_alive():
            stop.wait(0.5)
    finally:
        server.stop()


def _b64_element(data: bytes) -> str:
    return base64.b64encode(struct.pack("<I", len(data)) + data).decode()


def _proc_table() -> dict[int, tuple[int, float, str]]:
    """pid → (parent pid, CPU seconds so far, command) for every process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        out[int(d.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, cmd)
    return out


def _in_tree(pid: int, table: dict[int, tuple[int, float, str]], roots: tuple[int, ...]) -> bool:
    for _ in range(64):
        if pid in roots:
            return True
        if pid not in table or pid <= 1:
            return False
        pid = table[pid][0]
    return False


def cpu_monitor(args: argparse.Namespace) -> None:
    """Until SIGTERM: CPU seconds used by processes outside the benchmark's process tree.

    The benchmark must have the machine to itself; this says how far that held."""
    import signal
    import time

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    root, me = args.tree, os.getpid()
    seen: dict[int, float] = {}
    foreign: dict[str, float] = {}
    start = time.monotonic()
    first = True
    while True:
        table = _proc_table()
        for pid, (_, cpu, cmd) in table.items():
            # Processes already running at the first sample count from there; later ones
            # started inside the window and count in full.
            delta = cpu - seen.get(pid, cpu if first else 0.0)
            seen[pid] = cpu
            if delta > 0 and not _in_tree(pid, table, (root, me)):
                key = cmd[:100] or f"[pid {pid}]"
                foreign[key] = foreign.get(key, 0.0) + delta
        first = False
        if stop:
            break
        time.sleep(args.interval)
    wall = time.monotonic() - start
    total = sum(foreign.values())
    report = {
        "wall_s": round(wall, 1),
        "foreign_cpu_s": round(total, 1),
        "foreign_pct_of_machine": round(100 * total / (wall * (os.cpu_count() or 1)), 1),
        "top": [[k, round(v, 1)] for k, v in sorted(foreign.items(), key=lambda kv: -kv[1])[:5]],
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


def perf_input(args: argparse.Namespace) -> None:
    """perf_analyzer --input-data: one entry per image. For a BYTES input, perf_analyzer takes b64
    content as the serialized tensor: each element is a 4-byte little-endian length, then the
    bytes."""
    root = Path(args.images)
    suffixes = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if args.max_images:
        paths = paths[: args.max_images]
    if not paths:
        sys.exit(f"no images under {root}")
    data = [
        {"IMAGE": {"content": {"b64": _b64_element(p.read_bytes())}, "shape": [1]}} for p in paths
    ]
    Path(args.out).write_text(json.dumps({"data": data}))
    print(f"wrote {len(paths)} images to {args.out}")


def perf_json(args: argparse.Namespace) -> None:
    """perf_analyzer's CSV (microseconds) → the same JSON fields as plantdx bench."""
    rows = []
    with open(args.csv, newline="") as fh:
        for row in csv.DictReader(fh):
            rows.append(
                {
                    "system": args.label,
                    "concurrency": int(row["Concurrency"]),
                    "img_per_s": round(float(row["Inferences/Second"]), 2),
                    "p50_ms": round(float(row["p50 latency"]) / 1000, 2),
                    "p90_ms": round(float(row["p90 latency"]) / 1000, 2),
                    "p99_ms": round(float(row["p99 latency"]) / 1000, 2),
                    "mean_ms": round(float(row["Avg latency"]) / 1000, 2)
                    if "Avg latency" in row
                    else None,
                    "errors": 0,
                }
            )
    Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _at(rows: list[dict[str, Any]] | None, concurrency: int) -> dict[str, Any] | None:
    return next((r for r in rows or [] if r["concurrency"] == concurrency), None)


def _best(rows: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    return max(rows or [], key=lambda r: r["img_per_s"], default=None)


def _fmt(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def table(args: argparse.Namespace) -> None:
    d = Path(args.results)
    inproc = _load(d / "inprocess.json")
    http, grpc = _load(d / "serve_http.json"), _load(d / "serve_grpc.json")
    pa = _load(d / "perf_analyzer_grpc.json") or []
    paired = [r for c in (1, 8) for r in _load(d / f"serve_grpc_paired_c{c}.json") or []]
    fastapi = [r for r in (_load(d / f"fastapi_c{c}.json") for c in (1, 8)) if r]
    best_in = _best(inproc)
    single = next((r for r in inproc or [] if r["workers"] == 1 and r["batch"] == 1), None)

    def others(phase: str) -> str:
        report = _load(d / f"interference_{phase}.json")
        return "–" if report is None else f"{report['foreign_pct_of_machine']:.0f}%"

    lines = [
        "| system | concurrency | img/s | p50 ms | p90 ms | p99 ms | errors | other processes' CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def row(name: str, r: dict[str, Any] | None, phase: str, conc: str | None = None) -> None:
        if r is None:
            lines.append(f"| {name} | – | not measured | | | | | |")
            return
        lines.append(
            f"| {name} | {conc or r['concurrency']} | {_fmt(r['img_per_s'])} | "
            f"{_fmt(r.get('p50_ms'))} | {_fmt(r.get('p90_ms'))} | {_fmt(r.get('p99_ms'))} | "
            f"{r.get('errors', 0)} | {others(phase)} |"
        )

    if best_in:
        row(f"in-process limit, best layout `{best_in['layout']}`", best_in, "inprocess", "–")
    if single and single is not best_in:
        row(f"in-process single image, layout `{single['layout']}`", single, "inprocess", "1")
    serve = "`plantdx bench serve`"
    row(f"Triton ensemble, HTTP, best concurrency ({serve})", _best(http), "serve_http")
    row(f"Triton ensemble, gRPC, best concurrency ({serve})", _best(grpc), "serve_grpc")
    row(f"Triton ensemble, gRPC, concurrency 1 ({serve})", _at(grpc, 1), "serve_grpc")
    row(f"Triton ensemble, gRPC, concurrency 8 ({serve})", _at(grpc, 8), "serve_grpc")
    row(f"Triton ensemble, HTTP, concurrency 8 ({serve})", _at(http, 8), "serve_http")
    for r in pa:
        c = r["concurrency"]
        row(f"Triton ensemble, gRPC, concurrency {c} (perf_analyzer)", r, "perf_analyzer")
        row(f"… next to it: {serve}, gRPC", _at(paired, c), "perf_analyzer")
    for r in fastapi:
        c = r["concurrency"]
        row(f"original FastAPI + PyTorch eager, concurrency {c}", r, "fastapi")

    checks = _checks(best_in, single, http, grpc, pa, paired or grpc, fastapi)
    text = "\n".join(lines) + "\n\n" + "\n".join(f"- {c}" for c in checks) + "\n"
    Path(args.out).write_text(text)
    print(text)


def _checks(
    best_in: dict[str, Any] | None,
    single: dict[str, Any] | None,
    http: list[dict[str, Any]] | None,
    grpc: list[dict[str, Any]] | None,
    pa: list[dict[str, Any]],
    paired: list[dict[str, Any]] | None,
    fastapi: list[dict[str, Any]],
) -> list[str]:
    out = []
    best_served = _best((http or []) + (grpc or []))
    if best_in and best_served:
        ratio = best_served["img_per_s"] / best_in["img_per_s"]
        out.append(
            f"Triton at its best ({best_served['protocol']}, concurrency "
            f"{best_served['concurrency']}) / in-process limit: {ratio:.0%} "
            f"(target ≥ 90%: {'met' if ratio >= 0.9 else 'missed'})"
        )
    fa8 = next((r for r in fastapi if r["concurrency"] == 8), None)
    g8 = _at(grpc, 8)
    if fa8 and g8:
        ratio = g8["img_per_s"] / fa8["img_per_s"]
        lower = g8["p99_ms"] < fa8["p99_ms"]
        out.append(
            f"Triton gRPC / original FastAPI at concurrency 8: {ratio:.1f}× the throughput, "
            f"p99 {g8['p99_ms']:.0f} ms vs {fa8['p99_ms']:.0f} ms (target ≥ 3× with a lower "
            f"p99: {'met' if ratio >= 3 and lower else 'missed'})"
        )
    g1 = _at(grpc, 1)
    if single and g1:
        extra = g1["p50_ms"] - single["p50_ms"]
        out.append(
            f"single image over gRPC (p50 {g1['p50_ms']:.1f} ms) − in-process "
            f"(p50 {single['p50_ms']:.1f} ms) = {extra:+.1f} ms (target ≤ +3 ms: "
            f"{'met' if extra <= 3 else 'missed'})"
        )
    for r in pa:
        mine = _at(paired, r["concurrency"])
        if mine:
            diff = mine["img_per_s"] / r["img_per_s"] - 1
            out.append(
                f"`plantdx bench serve` vs perf_analyzer, gRPC concurrency {r['concurrency']}: "
                f"{mine['img_per_s']:.1f} vs {r['img_per_s']:.1f} img/s ({diff:+.0%}; "
                f"agreement within 15%: {'yes' if abs(diff) <= 0.15 else 'no'})"
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("make-repo")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="efficientnet_b0")
    p.add_argument("--image-size", type=int, default=224)
    p = sub.add_parser("serve")
    p.add_argument("--repo", required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    p.add_argument("--log", default=None)
    p = sub.add_parser("cpu-monitor")
    p.add_argument("--tree", type=int, required=True, help="PID of the benchmark's root process")
    p.add_argument("--out", required=True)
    p.add_argument("--interval", type=float, default=1.0)
    p = sub.add_parser("perf-input")
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-images", type=int, default=0)
    p = sub.add_parser("perf-json")
    p.add_argument("--csv", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--label", default="perf_analyzer")
    p = sub.add_parser("table")
    p.add_argument("--results", required=True)
    p.add_argument("--out", required=True)
    args = ap.parse_args()
    commands = {
        "make-repo": make_repo,
        "serve": serve,
        "cpu-monitor": cpu_monitor,
        "perf-input": perf_input,
        "perf-json": perf_json,
        "table": table,
    }
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
