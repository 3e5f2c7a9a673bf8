"""`plantdx bench train`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from plantdx.choices import Device
from plantdx.config import resolve

from .options import overrides as _overrides


def train(
    data: Annotated[
        str | None,
        typer.Option("--data", help="ImageFolder (default: synthetic leaves in a temp folder)."),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Architecture (see `plantdx architectures`).")
    ] = None,
    batches: Annotated[int, typer.Option("--batches", help="Measured batches per pass.")] = 10,
    repeats: Annotated[
        int, typer.Option("--repeats", help="Passes of each kind (medians reported).")
    ] = 3,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    image_size: Annotated[int | None, typer.Option("--image-size")] = None,
    num_workers: Annotated[int | None, typer.Option("--num-workers")] = None,
    cache_images: Annotated[
        bool | None,
        typer.Option(
            "--cache-images/--no-cache-images", help="Decode once into memory, or per access."
        ),
    ] = None,
    freeze_blocks: Annotated[
        int | None,
        typer.Option(
            "--freeze-blocks",
            help="EfficientNets: keep the stem and first N blocks frozen, as training does "
            "(default 3); -1: none.",
        ),
    ] = None,
    device: Annotated[Device | None, typer.Option("--device", help="Where to train.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="Training YAML (loader settings).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the result here.")] = None,
) -> None:
    """Training images/s with the real loader vs preloaded tensors, and their ratio."""
    from rich.console import Console
    from rich.table import Table

    from plantdx.bench.report import machine
    from plantdx.bench.train_loader import BenchTrainConfig, bench_train
    from plantdx.training import TrainConfig

    tc = resolve(
        TrainConfig,
        config,
        _overrides(
            data=data,
            model=model,
            batch_size=batch_size,
            image_size=image_size,
            num_workers=num_workers,
            cache_images=cache_images,
            freeze_blocks=freeze_blocks,
            device=device,
            mlflow=False,
        ),
    )
    err = Console(stderr=True)
    err.print(
        f"plantdx bench train: {tc.model} @ {tc.image_size} px, freeze_blocks "
        f"{tc.freeze_blocks}, {machine(torch_details=True)}"
    )
    result = bench_train(
        BenchTrainConfig(batches=batches, repeats=repeats, train=tc),
        on_pass=lambda kind, v: err.print(f"  {kind:>12}: {v:7.1f} img/s"),
    )
    table = Table(title=f"training input pipeline ({result['model']}, {result['device']})")
    for col in ("fed by", "img/s"):
        table.add_column(col, justify="right")
    table.add_row("real loader", f"{result['real_loader_img_per_s']:.1f}")
    table.add_row("preloaded tensors", f"{result['preloaded_img_per_s']:.1f}")
    table.add_row("loader alone", f"{result['loader_only_img_per_s']:.1f}")
    table.add_row("ratio", f"{result['ratio']:.1%} (target {result['target_ratio']:.0%})")
    Console(stderr=True).print(table)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        err.print(f"wrote {json_out}")
    typer.echo(json.dumps(result))


def register(app: typer.Typer) -> None:
    """Adds `plantdx bench train` to the bench group."""
    app.command("train", help=train.__doc__)(train)
