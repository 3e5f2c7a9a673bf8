"""The photos a benchmark sends or decodes: listed once, read once before any timing."""

from __future__ import annotations

from pathlib import Path

from plantdx.data import list_images
from plantdx.exceptions import DatasetError


def image_paths(folder: str | Path, limit: int = 0) -> list[Path]:
    """Every image under `folder`, sorted (the first `limit` when limit > 0)."""
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    paths = list_images(root)
    if limit:
        paths = paths[:limit]
    if not paths:
        raise DatasetError(f"no images under {root}")
    return paths


def load_images(folder: str | Path, limit: int = 0) -> list[bytes]:
    """Encoded bytes of the images, read once before any timing."""
    return [p.read_bytes() for p in image_paths(folder, limit)]


def spread_images(folder: str | Path, limit: int) -> list[bytes]:
    """About `limit` images picked evenly over the sorted list, so that every class folder is
    represented instead of the first class only."""
    paths = image_paths(folder)
    step = max(1, len(paths) // limit)
    return [p.read_bytes() for p in paths[::step][:limit]]
