"""`plantdx architectures`: the architectures `--model` accepts."""

from __future__ import annotations

import typer


def architectures() -> None:
    """The architectures `plantdx train --model` accepts, with their default image size.

    ImageNet weights other than EfficientNet-Lite's: `plantdx weights import FILE --model NAME`.
    """
    from plantdx.models import get_spec, list_models

    for name in list_models():
        spec = get_spec(name)
        typer.echo(f"{name:20s} {spec.default_image_size:4d} px  {spec.description}")


def register(app: typer.Typer) -> None:
    app.command("architectures", help=architectures.__doc__)(architectures)
