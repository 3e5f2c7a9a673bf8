"""Helpers shared by the subcommands."""

from __future__ import annotations

from typing import Any


def overrides(**kwargs: Any) -> dict[str, Any]:
    """CLI options that were given (not None), as config overrides."""
    return {k: v for k, v in kwargs.items() if v is not None}
