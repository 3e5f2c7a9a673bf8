"""`plantdx bench peers`: Triton against the in-process limit and the FastAPI servers, in rounds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .bench_serving import MINI

BASELINES = "../shared/baselines"


def peers(
    repository: Annotated[
        list[str],
        typer.Option(
            "--repository",
            help="Triton model repository, PATH or LABEL=PATH; repeat to compare several "
            "(before/after) in the same rounds.",
        ),
    ],
    images: Annotated[str, typer.Option("--images", help="Folder of images (recursively).")] = MINI,
    rounds: Annotated[int, typer.Option("--rounds", help="Rounds (the order rotates).")] = 3,
    duration: Annotated[float, typer.Option("--duration", help="Measured seconds.")] = 15.0,
    warmup: Annotated[float, typer.Option("--warmup", help="Warm-up seconds.")] = 3.0,
    concurrency: Annotated[int, typer.Option("--concurrency", help="Main level.")] = 16,
    lone: Annotated[
        bool, typer.Option("--lone/--no-lone", help="Also concurrency 1 and the single image.")
    ] = True,
    layouts: Annotated[
        str | None, typer.Option("--layouts", help="In-process layouts, e.g. 2x1b1,1x2b1.")
    ] = None,
    peer: Annotated[
        str, typer.Option("--peer", help="fastapi_onnx.py ('' leaves the peer out).")
    ] = f"{BASELINES}/fastapi_onnx.py",
    peer_workers: Annotated[int, typer.Option("--peer-workers")] = 2,
    original: Annotated[
        str, typer.Option("--original", help="original_fastapi.py ('' leaves it out).")
    ] = f"{BASELINES}/original_fastapi.py",
    base_port: Annotated[int, typer.Option("--base-port")] = 8750,
    json_out: Annotated[Path | None, typer.Option("--json", help="Rows and summary.")] = None,
) -> None:
    """Triton (each repository) vs the in-process limit, FastAPI + onnxruntime and the original
    FastAPI + PyTorch server: img/s, latency and CPU per image, ratios within each round."""
    from dataclasses import asdict

    from plantdx.bench.inprocess import default_layouts
    from plantdx.bench.peers import Measurement, PeersConfig, run_peers, summarise
    from plantdx.bench.report import peers_markdown

    cfg = PeersConfig(
        repositories=repository,
        images=images,
        rounds=rounds,
        duration_s=duration,
        warmup_s=warmup,
        concurrency=concurrency,
        lone=lone,
        layouts=[x.strip() for x in layouts.split(",")] if layouts else default_layouts(),
        peer_script=peer,
        peer_workers=peer_workers,
        original_script=original,
        base_port=base_port,
    )

    def show(m: Measurement) -> None:
        typer.echo(json.dumps(m.to_dict()), err=True)

    rows = run_peers(cfg, on_result=show)
    summary = summarise(rows, concurrency)
    typer.echo(peers_markdown(summary))
    if json_out is not None:
        doc = {"config": asdict(cfg), "rows": [m.to_dict() for m in rows], "summary": summary}
        json_out.write_text(json.dumps(doc, indent=2) + "\n")


def register(app: typer.Typer) -> None:
    """Adds `plantdx bench peers` to the bench group."""
    app.command("peers", help=peers.__doc__)(peers)
