"""`plantdx bench serve` and `plantdx bench inprocess`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Adds `plantdx bench serve` and `plantdx bench inprocess` to the bench group."""
