"""The steps of scripts/bench_all.sh and scripts/gpu_check.sh: benchmark fixtures, the CPU
monitor, perf_analyzer's files, the comparison table and the GPU check."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer


def checkpoint(
    out: Annotated[Path, typer.Argument(help="Where to write the checkpoint (best.pt).")],
    model: Annotated[str, typer.Option("--model", help="Architecture.")] = "efficientnet_lite0",
    classes: Annotated[int, typer.Option("--classes", help="Classes of the fresh head.")] = 15,
) -> None:
    """An untrained-head checkpoint (ImageNet backbone) for serving benchmarks only."""
    from plantdx.bench.fixtures import benchmark_checkpoint, numbered_classes

    typer.echo(benchmark_checkpoint(out, model, numbered_classes(classes), pretrained=True))


def make_repo(
    data: Annotated[
        str, typer.Option("--data", help="ImageFolder: the classes and parity images.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Work folder: OUT/run/best.pt and OUT/repo.")],
    model: Annotated[str, typer.Option("--model", help="Architecture.")] = "efficientnet_b0",
    image_size: Annotated[int, typer.Option("--image-size")] = 224,
) -> None:
    """A random-weight checkpoint exported to a fresh repository (ONNX, parity-checked)."""
    from plantdx.bench.fixtures import benchmark_repository

    repo, version = benchmark_repository(data, out, model, image_size)
    typer.echo(f"exported {model} to {repo} version {version}")


def cpu_monitor(
    tree: Annotated[int, typer.Option("--tree", help="PID of the benchmark's root process.")],
    out: Annotated[Path, typer.Option("--out", help="Write the report (JSON) here.")],
    interval: Annotated[float, typer.Option("--interval", help="Seconds between samples.")] = 1.0,
) -> None:
    """Until SIGTERM: CPU seconds used by processes outside the benchmark's process tree."""
    from plantdx.bench.monitor import cpu_monitor as monitor

    monitor(tree, out, interval)


def perf_input(
    images: Annotated[str, typer.Option("--images", help="Folder of images (recursively).")],
    out: Annotated[Path, typer.Option("--out", help="perf_analyzer --input-data file.")],
    max_images: Annotated[
        int, typer.Option("--max-images", help="Use only the first N images.")
    ] = 0,
) -> None:
    """perf_analyzer's input file: one entry per image."""
    from plantdx.bench.perf import perf_input as write_input

    typer.echo(f"wrote {write_input(images, out, max_images)} images to {out}")


def perf_json(
    csv_path: Annotated[Path, typer.Option("--csv", help="perf_analyzer's CSV (-f).")],
    out: Annotated[Path, typer.Option("--out", help="Write the rows (JSON) here.")],
    label: Annotated[str, typer.Option("--label", help="The rows' `system`.")] = "perf_analyzer",
) -> None:
    """perf_analyzer's CSV as the JSON fields of `plantdx bench serve`."""
    from plantdx.bench.perf import perf_json as convert

    convert(csv_path, out, label)


def table(
    results: Annotated[
        Path, typer.Option("--results", help="Folder of the benchmarks' JSON files.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Write the table (Markdown) here.")],
) -> None:
    """The comparison table of scripts/bench_all.sh and its checks against the targets."""
    from plantdx.bench.report import table as make_table

    text = make_table(results)
    out.write_text(text)
    typer.echo(text)


def gpu_check(
    work: Annotated[Path, typer.Argument(help="Work folder (the report goes there).")],
    root: Annotated[Path, typer.Option("--root", help="The tree whose GPU tests run.")] = Path("."),
    budget: Annotated[float, typer.Option("--budget", help="Seconds for every step.")] = 420,
) -> None:
    """The GPU check's steps (scripts/gpu_check.sh runs them with its own setup)."""
    from plantdx.bench.gpu_check import main

    code = main([str(work), str(root), str(budget)])
    sys.stdout.flush()
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Adds the bench_all.sh and gpu_check.sh steps to the bench group."""
    for name, fn in (
        ("checkpoint", checkpoint),
        ("make-repo", make_repo),
        ("cpu-monitor", cpu_monitor),
        ("perf-input", perf_input),
        ("perf-json", perf_json),
        ("table", table),
        ("gpu-check", gpu_check),
    ):
        app.command(name, help=fn.__doc__)(fn)
