"""Class names: one per line in `labels.txt`, in the classifier's output order."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from plantdx.exceptions import RepositoryError

LABELS_FILENAME = "labels.txt"


def write_labels(names: Sequence[str], path: str | Path) -> None:
    for name in names:
        if "\n" in name or not name.strip():
            raise ValueError(f"class name {name!r} cannot be written to a labels file")
    Path(path).write_text("".join(f"{n}\n" for n in names))


def read_labels(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise RepositoryError(f"labels file {p} does not exist")
    return [line for line in p.read_text().splitlines() if line.strip()]


def pretty(name: str) -> str:
    """'Tomato___Spider_mites Two-spotted_spider_mite' → 'Tomato: Spider mites Two-spotted spider mite'."""
    crop, _, disease = name.partition("___")
    if not disease:
        return name.replace("_", " ")
    return f"{crop.replace('_', ' ').replace(',', '')}: {disease.replace('_', ' ')}"
