"""`plantdx bench sweep`, `plantdx bench profile` and `plantdx bench preprocess`: the studies
behind the serving defaults (each starts its own Triton, except preprocess)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer

from .bench_serve import _levels

MINI = "../shared/data/plantvillage-mini"


def sweep(
    repository: Annotated[Path, typer.Option("--repository", help="Triton model repository.")],
    data: Annotated[str, typer.Option("--data", help="Folder of images (recursively).")] = MINI,
    images: Annotated[
        int, typer.Option("--images", help="How many images, spread over the folder.")
    ] = 400,
    seconds: Annotated[float, typer.Option("--seconds", help="Measured seconds per level.")] = 8.0,
    base_port: Annotated[
        int, typer.Option("--base-port", help="HTTP port; gRPC and metrics follow.")
    ] = 8410,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only", help="Variant names to run (repeatable or comma-separated; default: all)."
        ),
    ] = None,
    cache_study: Annotated[
        bool,
        typer.Option("--cache-study", help="Where the response cache goes, instead of the sweep."),
    ] = False,
) -> None:
    """Batching/instances sweep (or the response-cache study): one JSON line per result."""
    from plantdx.bench import sweep as study
    from plantdx.bench.images import spread_images

    photos = spread_images(data, images)
    if cache_study:
        rows = iter(study.cache_study(repository, photos, base_port=base_port))
    else:
        names = [n.strip() for item in only or [] for n in item.split(",") if n.strip()]
        rows = study.sweep(repository, photos, only=names, seconds=seconds, base_port=base_port)
    for row in rows:
        typer.echo(json.dumps(row))


def profile(
    repository: Annotated[Path, typer.Option("--repository", help="Triton model repository.")],
    data: Annotated[str, typer.Option("--data", help="Folder of images (recursively).")] = MINI,
    images: Annotated[
        int, typer.Option("--images", help="How many images, spread over the folder.")
    ] = 400,
    concurrency: Annotated[
        str, typer.Option("--concurrency", help="Levels, e.g. 1,8,16.")
    ] = "1,16",
    seconds: Annotated[float, typer.Option("--seconds", help="Measured seconds per level.")] = 10.0,
    base_port: Annotated[
        int, typer.Option("--base-port", help="HTTP port; gRPC and metrics follow.")
    ] = 8430,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the levels here.")] = None,
    server_arg: Annotated[
        list[str] | None,
        typer.Option(
            "--server-arg",
            help="Extra tritonserver flag, e.g. --server-arg=--metrics-config=summary_latencies=false",
        ),
    ] = None,
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
        server_args=server_arg or [],
    ):
        typer.echo(format_level(p))
        rows.append(asdict(p))
    if json_out is not None:
        json_out.write_text(json.dumps(rows, indent=2) + "\n")


def preprocess(
    data: Annotated[str, typer.Option("--data", help="Folder of images (recursively).")] = MINI,
    image_size: Annotated[
        list[int] | None, typer.Option("--image-size", help="Repeatable (default 224).")
    ] = None,
    images: Annotated[
        int, typer.Option("--images", help="How many images, spread over the folder.")
    ] = 200,
    rounds: Annotated[int, typer.Option("--rounds", help="Rounds; medians are reported.")] = 5,
    upscale: Annotated[
        int,
        typer.Option("--upscale", help="Also re-encode each photo at this many pixels per side."),
    ] = 0,
) -> None:
    """Preprocessing cost vs. Pillow decoding alone, per image: one JSON line per set and size."""
    from plantdx.bench.preprocess import run

    for row in run(
        data, image_sizes=image_size or [224], images=images, rounds=rounds, upscale=upscale
    ):
        typer.echo(json.dumps(row))


def register(app: typer.Typer) -> None:
    """Adds `plantdx bench sweep`, `profile` and `preprocess` to the bench group."""
    app.command("sweep", help=sweep.__doc__)(sweep)
    app.command("profile", help=profile.__doc__)(profile)
    app.command("preprocess", help=preprocess.__doc__)(preprocess)
