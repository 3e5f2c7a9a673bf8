"""Reports of the benchmarks: the machine they ran on, the throughput/latency plot of a load
run, and the comparison table of scripts/bench_all.sh (`plantdx bench table`)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loadgen import LevelResult


def machine(torch_details: bool = False) -> str:
    """A one-line description of this machine for reports; with `torch_details`, also torch's
    version, its thread count and the GPU (imports torch)."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{os.cpu_count()} CPU cores ({cpu or platform.processor()}), {platform.system()}"
    if not torch_details:
        return text
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{text} {platform.machine()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {gpu}"
    )


def plot_levels(results: Sequence[LevelResult], out: str | Path, title: str = "") -> Path:
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


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _at(rows: list[dict[str, Any]] | None, concurrency: int) -> dict[str, Any] | None:
    return next((r for r in rows or [] if r["concurrency"] == concurrency), None)


def _best(rows: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    return max(rows or [], key=lambda r: r["img_per_s"], default=None)


def _fmt(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def table(results: str | Path) -> str:
    """The comparison table of scripts/bench_all.sh (Markdown) from the JSON files in
    `results`, followed by the checks against the targets."""
    d = Path(results)
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
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {c}" for c in checks) + "\n"


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


def peers_markdown(summary: dict[str, Any]) -> str:
    """`plantdx bench peers`' summary as Markdown: each system's figures (median and range over
    the rounds), then each Triton repository's ratios to the others."""

    def fmt(s: dict[str, float] | None, digits: int = 1) -> str:
        if not s:
            return "–"
        mid = f"{s['median']:.{digits}f}"
        if s["n"] < 2 or s["min"] == s["max"]:
            return mid
        return f"{mid} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"

    lines = [
        "| system | img/s | p50 ms | p99 ms | server CPU ms/img | load generator CPU ms/img "
        "| errors | load (1 min) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summary["systems"].items():
        layouts = f" `{', '.join(s['layouts'])}`" if s.get("layouts") else ""
        lines.append(
            f"| {name}{layouts} | {fmt(s['img_per_s'])} | {fmt(s['p50_ms'])} | {fmt(s['p99_ms'])} "
            f"| {fmt(s['server_cpu_ms_per_img'], 2)} | {fmt(s['client_cpu_ms_per_img'], 2)} "
            f"| {s['errors']} | {fmt(s['load_1min'])} |"
        )
    for triton, ratios in summary["ratios"].items():
        lines += ["", f"| {triton}, c={summary['concurrency']} | median (range over rounds) |"]
        lines.append("|---|---:|")
        lines += [f"| {name} | {fmt(s, 3)} |" for name, s in ratios.items()]
    return "\n".join(lines) + "\n"
