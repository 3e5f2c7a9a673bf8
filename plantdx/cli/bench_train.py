"""`plantdx bench train`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Adds `plantdx bench train` to the bench group."""
