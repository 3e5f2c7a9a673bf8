"""The steps of scripts/bench_all.sh and scripts/gpu_check.sh: benchmark fixtures, the CPU
monitor, perf_analyzer's files, the comparison table and the GPU check."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def checkpoint(
    out: Path = typer.Argument(..., help="Where to write the checkpoint (best.pt)."),
    model: str = typer.Option("efficientnet_lite0", "--model", help="Architecture."),
    classes: int = typer.Option(15, "--classes", help="Classes of the fresh head."),
) -> None:
    """An untrained-head checkpoint (ImageNet backbone) for serving benchmarks only."""
    from plantdx.bench.fixtures import benchmark_checkpoint, numbered_classes

    typer.echo(benchmark_checkpoint(out, model, numbered_classes(classes), pretrained=True))


def make_repo(
    data: str = typer.Option(..., "--data", help="ImageFolder: the classes and parity images."),
    out: Path = typer.Option(..., "--out", help="Work folder: OUT/run/best.pt and OUT/repo."),
    model: str = typer.Option("efficientnet_b0", "--model", help="Architecture."),
    image_size: int = typer.Option(224, "--image-size"),
) -> None:
    """A random-weight checkpoint exported to a fresh repository (ONNX, parity-checked)."""
    from plantdx.bench.fixtures import benchmark_repository

    repo, version = benchmark_repository(data, out, model, image_size)
    typer.echo(f"exported {model} to {repo} version {version}")


def cpu_monitor(
    tree: int = typer.Option(..., "--tree", help="PID of the benchmark's root process."),
    out: Path = typer.Option(..., "--out", help="Write the report (JSON) here."),
    interval: float = typer.Option(1.0, "--interval", help="Seconds between samples."),
) -> None:
    """Until SIGTERM: CPU seconds used by processes outside the benchmark's process tree."""
    from plantdx.bench.monitor import cpu_monitor as monitor

    monitor(tree, out, interval)


def perf_input(
    images: str = typer.Option(..., "--images", help="Folder of images (recursively)."),
    out: Path = typer.Option(..., "--out", help="perf_analyzer --input-data file."),
    max_images: int = typer.Option(0, "--max-images", help="Use only the first N images."),
) -> None:
    """perf_analyzer's input file: one entry per image."""
    from plantdx.bench.perf import perf_input as write_input

    typer.echo(f"wrote {write_input(images, out, max_images)} images to {out}")


def perf_json(
    csv_path: Path = typer.Option(..., "--csv", help="perf_analyzer's CSV (-f)."),
    out: Path = typer.Option(..., "--out", help="Write the rows (JSON) here."),
    label: str = typer.Option("perf_analyzer", "--label", help="The rows' `system`."),
) -> None:
    """perf_analyzer's CSV as the JSON fields of `plantdx bench serve`."""
    from plantdx.bench.perf import perf_json as convert

    convert(csv_path, out, label)


def table(
    results: Path = typer.Option(..., "--results", help="Folder of the benchmarks' JSON files."),
    out: Path = typer.Option(..., "--out", help="Write the table (Markdown) here."),
) -> None:
    """The comparison table of scripts/bench_all.sh and its checks against the targets."""
    from plantdx.bench.report import table as make_table

    text = make_table(results)
    out.write_text(text)
    typer.echo(text)


def gpu_check(
    work: Path = typer.Argument(..., help="Work folder (the report goes there)."),
    root: Path = typer.Option(Path("."), "--root", help="The tree whose GPU tests run."),
    budget: float = typer.Option(420, "--budget", help="Seconds for every step."),
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
