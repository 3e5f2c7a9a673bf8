"""ImageFolder datasets (PlantVillage layout) and the stratified train/val/test split."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plantdx.exceptions import DatasetError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
SPLIT_FILENAME = "split.json"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class ImageFolder:
    root: Path
    class_names: list[str]
    samples: list[Sample]
    # Files in the class folders that are not images by name (notes.txt, Thumbs.db), with why;
    # hidden files and folders (.DS_Store, .ipynb_checkpoints) are left out silently.
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c = Counter(s.label for s in self.samples)
        return {name: c.get(i, 0) for i, name in enumerate(self.class_names)}


def is_image_file(path: Path) -> bool:
    return (
        path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def _not_image_reason(path: Path, class_dir: Path) -> str | None:
    """Why a file in a class folder is left out as a non-image; None for images and for
    hidden files (or files in hidden folders), which are left out without a word."""
    if not path.is_file() or any(
        part.startswith(".") for part in path.relative_to(class_dir).parts
    ):
        return None
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return None
    kind = f"extension {path.suffix!r}" if path.suffix else "no extension"
    return f"not_an_image: {kind} is not an image format ({', '.join(sorted(IMAGE_SUFFIXES))})"


def scan_image_folder(root: str | Path, *, min_classes: int = 2) -> ImageFolder:
    """One sub-folder per class, sorted like torchvision's ImageFolder (plain `sorted()`).

    Files that are not images by extension are listed in `skipped` (and left out)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    class_dirs = sorted(
        (d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: d.name,
    )
    if len(class_dirs) < min_classes:
        raise DatasetError(
            f"{root} has {len(class_dirs)} class folder(s); at least {min_classes} are needed "
            "(layout: one sub-folder of images per class)"
        )
    samples: list[Sample] = []
    skipped: list[tuple[Path, str]] = []
    empty: list[str] = []
    for label, d in enumerate(class_dirs):
        found = sorted(d.rglob("*"))
        files = [p for p in found if is_image_file(p)]
        if not files:
            empty.append(d.name)
        samples.extend(Sample(p, label) for p in files)
        for p in found:
            why = _not_image_reason(p, d)
            if why is not None:
                skipped.append((p, why))
    if empty:
        raise DatasetError(f"class folder(s) with no images in {root}: {', '.join(empty)}")
    return ImageFolder(
        root=root, class_names=[d.name for d in class_dirs], samples=samples, skipped=skipped
    )


def stratified_split(
    dataset: ImageFolder,
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.1,
    seed: int = 42,
) -> dict[str, list[Sample]]:
    """Per class: shuffle with the seed, then cut val and test off; the rest is train.

    Every class with at least three images gets at least one image in each split.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DatasetError(f"invalid split fractions val={val_fraction} test={test_fraction}")
    rng = random.Random(seed)
    by_class: dict[int, list[Sample]] = {}
    for s in dataset.samples:
        by_class.setdefault(s.label, []).append(s)
    out: dict[str, list[Sample]] = {k: [] for k in SPLITS}
    for label in sorted(by_class):
        items = sorted(by_class[label], key=lambda s: str(s.path))
        rng.shuffle(items)
        n = len(items)
        n_val = round(n * val_fraction)
        n_test = round(n * test_fraction)
        if n >= 3:
            n_val = max(n_val, 1 if val_fraction > 0 else 0)
            n_test = max(n_test, 1 if test_fraction > 0 else 0)
        out["val"].extend(items[:n_val])
        out["test"].extend(items[n_val : n_val + n_test])
        out["train"].extend(items[n_val + n_test :])
    return out


def save_split(
    split: dict[str, list[Sample]], dataset: ImageFolder, path: str | Path, *, seed: int
) -> None:
    doc: dict[str, Any] = {
        "root": str(dataset.root.resolve()),
        "seed": seed,
        "class_names": dataset.class_names,
        "counts": {k: len(v) for k, v in split.items()},
    }
    for name, items in split.items():
        doc[name] = [[str(s.path.relative_to(dataset.root)), s.label] for s in items]
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")


def load_split(
    path: str | Path, *, root: str | Path | None = None
) -> tuple[list[str], dict[str, list[Sample]]]:
    """Read a split.json; `root` relocates it when the data moved since training."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"split file {p} does not exist")
    doc = json.loads(p.read_text())
    base = Path(root) if root else Path(doc["root"])
    split = {k: [Sample(base / rel, int(lbl)) for rel, lbl in doc.get(k, [])] for k in SPLITS}
    return list(doc["class_names"]), split
