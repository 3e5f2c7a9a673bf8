"""`plantdx bench sweep`, `plantdx bench profile` and `plantdx bench preprocess`: the studies
behind the serving defaults (each starts its own Triton, except preprocess)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer

from .bench_serve import _levels

MINI = "../shared/data/plantvillage-mini"


def sweep(
    repository: Path = typer.Option(..., "--repository", help="Triton model repository."),
    data: str = typer.Option(MINI, "--data", help="Folder of images (recursively)."),
    images: int = typer.Option(400, "--images", help="How many images, spread over the folder."),
    seconds: float = typer.Option(8.0, "--seconds", help="Measured seconds per level."),
    base_port: int = typer.Option(8410, "--base-port", help="HTTP port; gRPC and metrics follow."),
    only: list[str] = typer.Option(
        [], "--only", help="Variant names to run (repeatable or comma-separated; default: all)."
    ),
    cache_study: bool = typer.Option(
        False, "--cache-study", help="Where the response cache goes, instead of the sweep."
    ),
) -> None:
    """Batching/instances sweep (or the response-cache study): one JSON line per result."""
    from plantdx.bench import sweep as study
    from plantdx.bench.images import spread_images

    photos = spread_images(data, images)
    if cache_study:
        rows = iter(study.cache_study(repository, photos, base_port=base_port))
    else:
        names = [n.strip() for item in only for n in item.split(",") if n.strip()]
        rows = study.sweep(repository, photos, only=names, seconds=seconds, base_port=base_port)
    for row in rows:
        typer.echo(json.dumps(row))


def profile(
    repository: Path = typer.Option(..., "--repository", help="Triton model repository."),
    data: str = typer.Option(MINI, "--data", help="Folder of images (recursively)."),
    images: int = typer.Option(400, "--images", help="How many images, spread over the folder."),
    concurrency: str = typer.Option("1,16", "--concurrency", help="Levels, e.g. 1,8,16."),
    seconds: float = typer.Option(10.0, "--seconds", help="Measured seconds per level."),
    base_port: int = typer.Option(8430, "--base-port", help="HTTP port; gRPC and metrics follow."),
    json_out: Path = typer.Option(None, "--json", help="Write the levels here."),
    server_arg: list[str] = typer.Option(
        [],
        "--server-arg",
        help="Extra tritonserver flag, e.g. --server-arg=--metrics-config=summary_latencies=false",
    ),
) -> None:
    """Triton's statistics and the CPU per served image of every process, per level."""
    from plantdx.bench.images import spread_images
    from plantdx.bench.profile import format_level
    from plantdx.bench.profile import profile as run_profile

    levels = _levels(concurrency) or []
    rows: list[dict[str, Any]] = []
    for p in run_profile(
        repository,
        spread_images(data, images),
        concurrencies=levels,
        seconds=seconds,
        base_port=base_port,
        server_args=server_arg,
    ):
        typer.echo(format_level(p))
        rows.append(asdict(p))
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=2) + "\n")


def preprocess(
    data: str = typer.Option(MINI, "--data", help="Folder of images (recursively)."),
    image_size: list[int] = typer.Option([224], "--image-size", help="Repeatable."),
    images: int = typer.Option(200, "--images", help="How many images, spread over the folder."),
    rounds: int = typer.Option(5, "--rounds", help="Rounds; medians are reported."),
    upscale: int = typer.Option(
        0, "--upscale", help="Also re-encode each photo at this many pixels per side."
    ),
) -> None:
    """Preprocessing cost vs. Pillow decoding alone, per image: one JSON line per set and size."""
    from plantdx.bench.preprocess import run

    for row in run(data, image_sizes=image_size, images=images, rounds=rounds, upscale=upscale):
        typer.echo(json.dumps(row))


def register(app: typer.Typer) -> None:
    """Adds `plantdx bench sweep`, `profile` and `preprocess` to the bench group."""
    app.command("sweep", help=sweep.__doc__)(sweep)
    app.command("profile", help=profile.__doc__)(profile)
    app.command("preprocess", help=preprocess.__doc__)(preprocess)
