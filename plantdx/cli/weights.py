"""`plantdx weights import`: ImageNet weights placed where training finds them, checked first."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Pretrained weights for the architectures (`plantdx architectures`).",
    no_args_is_help=True,
)


@app.command("import")
def import_cmd(
    source: Annotated[
        Path,
        typer.Argument(
            help="A weights file (torchvision architectures: a state dict) or, for vit, a "
            "HuggingFace directory saved with save_pretrained."
        ),
    ],
    model: Annotated[
        str, typer.Option("--model", help="The architecture they belong to (see `architectures`).")
    ],
) -> None:
    """Check that SOURCE holds MODEL's weights (they load into the architecture, strict except
    the head), then copy them where `plantdx train --model MODEL` looks: the torch hub cache
    for torchvision architectures, plantdx/vit in the torch hub directory for vit."""
    from plantdx.models.weights_import import import_weights

    dest = import_weights(source, model)
    typer.echo(f"{model}: weights from {source} checked and copied to {dest}")
