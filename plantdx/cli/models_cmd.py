"""`plantdx models`: the architectures this plantdx can train, and server model control."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="List architectures; load, unload and inspect models on a server.", no_args_is_help=True
)


@app.command("list")
def list_models() -> None:
    """Architectures available to `plantdx train --model`."""
    from plantdx.models import get_spec
    from plantdx.models import list_models as names

    for name in names():
        spec = get_spec(name)
        typer.echo(f"{name:20s} {spec.default_image_size:4d} px  {spec.description}")
