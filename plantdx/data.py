"""ImageFolder datasets (PlantVillage layout), several sources at once, and the stratified
train/val/test split (per source, so every source has its own val and test split).

A training run may read several ImageFolders (`--data LAB --data FIELD`): their class folders
are joined by name (the union, sorted), and every sample remembers its source. Photos that
belong to no class (`--unknown-data DIR`, any folder layout) are "unknown" samples with label
UNKNOWN_LABEL, split the same way by their sub-folders.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from plantdx.choices import RunSplit
from plantdx.decision import UNCERTAIN
from plantdx.exceptions import DatasetError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
SPLIT_FILENAME = "split.json"
SPLITS: tuple[str, ...] = get_args(RunSplit)
# The label of a photo that belongs to no class (a crop the model does not know).
UNKNOWN_LABEL = -1


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    # Index of the data source (the --data folder) the photo comes from.
    source: int = 0


@dataclass(frozen=True)
class Source:
    name: str
    root: Path


@dataclass
class ImageFolder:
    root: Path
    class_names: list[str]
    samples: list[Sample]
    # Files in the class folders that are not images by name (notes.txt, Thumbs.db), with why;
    # hidden files and folders (.DS_Store, .ipynb_checkpoints) are left out silently.
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    # The folders it was read from, in --data order (one for a plain ImageFolder).
    sources: list[Source] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.sources:
            self.sources = [Source(self.root.name or str(self.root), self.root)]

    def source_counts(self) -> dict[str, int]:
        c = Counter(s.source for s in self.samples)
        return {src.name: c.get(i, 0) for i, src in enumerate(self.sources)}

    def counts(self) -> dict[str, int]:
        c = Counter(s.label for s in self.samples)
        return {name: c.get(i, 0) for i, name in enumerate(self.class_names)}


def is_image_file(path: Path) -> bool:
    return (
        path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def list_images(root: str | Path) -> list[Path]:
    """Every image file under `root` (recursively, by extension, hidden files left out), sorted:
    the one way plantdx lists the photos of a folder that is not an ImageFolder."""
    return sorted(p for p in Path(root).rglob("*") if is_image_file(p))


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
    if any(d.name == UNCERTAIN for d in class_dirs):
        # `plantdx feedback export` puts the photos the model abstained on there: they are
        # to be sorted into real classes, never learnt as a class of their own.
        left = [p for p in (root / UNCERTAIN).rglob("*") if is_image_file(p)]
        if left:
            raise DatasetError(
                f"{root / UNCERTAIN} still holds {len(left)} photo(s): move each into its true "
                f"class folder (or delete it) before training; '{UNCERTAIN}' is not a class"
            )
        class_dirs = [d for d in class_dirs if d.name != UNCERTAIN]
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
    """Per source and class: shuffle with the seed, then cut val and test off; the rest is
    train. Each source is split on its own, so each has its own val and test split.

    Every class of a source with at least three images gets at least one image in each split.
    """
    return split_samples(
        dataset.samples, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
    )


def split_samples(
    samples: Sequence[Sample],
    *,
    val_fraction: float = 0.2,
    test_fraction: float = 0.1,
    seed: int = 42,
    group: Callable[[Sample], Any] | None = None,
) -> dict[str, list[Sample]]:
    """The stratified split of `samples`, grouped by (source, label) unless `group` says how."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DatasetError(f"invalid split fractions val={val_fraction} test={test_fraction}")
    key = group or (lambda s: (s.source, s.label))
    rng = random.Random(seed)
    by_class: dict[Any, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(key(s), []).append(s)
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


def scan_sources(roots: Sequence[str | Path]) -> ImageFolder:
    """Several ImageFolders as one: classes joined by folder name (sorted union), every sample
    labelled in that union and tagged with its source. One root is `scan_image_folder`."""
    if not roots:
        raise DatasetError("no dataset: pass --data DIR (an ImageFolder: one folder per class)")
    if len(roots) == 1:
        return scan_image_folder(roots[0])
    folders = [scan_image_folder(r, min_classes=1) for r in roots]
    names = sorted({n for f in folders for n in f.class_names})
    if len(names) < 2:
        raise DatasetError(f"the sources have {len(names)} class(es) in all; at least 2 are needed")
    index = {n: i for i, n in enumerate(names)}
    sources: list[Source] = []
    samples: list[Sample] = []
    skipped: list[tuple[Path, str]] = []
    for k, f in enumerate(folders):
        if any(Path(f.root).resolve() == src.root.resolve() for src in sources):
            raise DatasetError(f"{f.root} is given twice as --data")
        base = f.root.name or str(f.root)
        name = base if base not in {src.name for src in sources} else f"{base}-{k}"
        sources.append(Source(name, f.root))
        samples += [Sample(s.path, index[f.class_names[s.label]], k) for s in f.samples]
        skipped += f.skipped
    return ImageFolder(
        root=folders[0].root, class_names=names, samples=samples, skipped=skipped, sources=sources
    )


def scan_unknown(roots: Sequence[str | Path], *, source: int) -> list[Sample]:
    """Photos of no class (any layout, searched recursively), labelled UNKNOWN_LABEL; each
    remembers its top-level sub-folder in `path` so the split can stratify by it."""
    samples: list[Sample] = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"unknown-data folder {root} does not exist")
        files = [
            p
            for p in sorted(root.rglob("*"))
            if is_image_file(p) and not any(x.startswith(".") for x in p.relative_to(root).parts)
        ]
        if not files:
            raise DatasetError(f"no images in the unknown-data folder {root}")
        samples += [Sample(p, UNKNOWN_LABEL, source) for p in files]
    return samples


def unknown_group(roots: Sequence[str | Path]) -> Callable[[Sample], Any]:
    """Stratify unknown photos by their root and top-level sub-folder (a crop or a disease)."""
    resolved = [Path(r) for r in roots]

    def key(s: Sample) -> tuple[int, str]:
        for i, r in enumerate(resolved):
            if s.path.is_relative_to(r):
                rel = s.path.relative_to(r)
                return i, rel.parts[0] if len(rel.parts) > 1 else ""
        return -1, ""

    return key


def save_split(
    split: dict[str, list[Sample]],
    dataset: ImageFolder,
    path: str | Path,
    *,
    seed: int,
    unknown: dict[str, list[Sample]] | None = None,
    unknown_roots: Sequence[str | Path] = (),
) -> None:
    """split.json: the root, classes and every split's files relative to their source.

    One source keeps the original layout (`[relative path, label]`); several sources add a
    `sources` list and a third field, the source index; `unknown` holds the unknown photos."""
    multi = len(dataset.sources) > 1
    roots = [src.root for src in dataset.sources]
    doc: dict[str, Any] = {
        "root": str(dataset.root.resolve()),
        "seed": seed,
        "class_names": dataset.class_names,
        "counts": {k: len(v) for k, v in split.items()},
    }
    if multi:
        doc["sources"] = [{"name": s.name, "root": str(s.root.resolve())} for s in dataset.sources]
        doc["source_counts"] = {
            k: {
                src.name: sum(1 for s in v if s.source == i)
                for i, src in enumerate(dataset.sources)
            }
            for k, v in split.items()
        }
    for name, items in split.items():
        doc[name] = [
            [str(s.path.relative_to(roots[s.source])), s.label, s.source]
            if multi
            else [str(s.path.relative_to(dataset.root)), s.label]
            for s in items
        ]
    if unknown:
        u_roots = [Path(r) for r in unknown_roots]

        def rel(p: Path) -> list[Any]:
            for i, r in enumerate(u_roots):
                if p.is_relative_to(r):
                    return [str(p.relative_to(r)), i]
            return [str(p), -1]

        doc["unknown"] = {
            "roots": [str(r.resolve()) for r in u_roots],
            "counts": {k: len(v) for k, v in unknown.items()},
            **{k: [rel(s.path) for s in v] for k, v in unknown.items()},
        }
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")


@dataclass
class SplitFile:
    class_names: list[str]
    split: dict[str, list[Sample]]
    source_names: list[str]
    unknown: dict[str, list[Sample]]


def read_split(path: str | Path, *, root: str | Path | None = None) -> SplitFile:
    """Everything in a split.json; `root` relocates the (first) source when the data moved."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"split file {p} does not exist")
    doc = json.loads(p.read_text())
    sources = doc.get("sources") or [{"name": Path(doc["root"]).name, "root": doc["root"]}]
    bases = [Path(s["root"]) for s in sources]
    if root:
        bases[0] = Path(root)
    split = {
        k: [
            Sample(
                bases[int(row[2]) if len(row) > 2 else 0] / row[0],
                int(row[1]),
                int(row[2]) if len(row) > 2 else 0,
            )
            for row in doc.get(k, [])
        ]
        for k in SPLITS
    }
    unknown: dict[str, list[Sample]] = {}
    u = doc.get("unknown") or {}
    u_roots = [Path(r) for r in u.get("roots", [])]
    for k in SPLITS:
        unknown[k] = [
            Sample(u_roots[i] / rel if i >= 0 else Path(rel), UNKNOWN_LABEL, len(bases))
            for rel, i in u.get(k, [])
        ]
    return SplitFile(list(doc["class_names"]), split, [s["name"] for s in sources], unknown)


def load_split(
    path: str | Path, *, root: str | Path | None = None
) -> tuple[list[str], dict[str, list[Sample]]]:
    """Read a split.json; `root` relocates it when the data moved since training."""
    f = read_split(path, root=root)
    return f.class_names, f.split
