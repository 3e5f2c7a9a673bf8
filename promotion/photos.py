"""The labelled photos both versions are judged on: one or several ImageFolders (`--data`),
each a source of its own, matched to the model's classes by folder name."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from plantdx.data import scan_image_folder
from plantdx.exceptions import DatasetError


@dataclass
class LabelledPhotos:
    paths: list[Path]
    labels: np.ndarray  # index into class_names
    sources: np.ndarray  # index into source_names
    source_names: list[str]
    class_names: list[str]
    # Class folders of --data that the model does not know (left out), per source.
    unknown_folders: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)


def source_names(roots: Sequence[str | Path]) -> list[str]:
    """Folder names, made unique with their position when two are the same."""
    names = [Path(r).name or str(r) for r in roots]
    return [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]


def labelled_photos(
    roots: Sequence[str | Path], class_names: Sequence[str], *, limit: int = 0
) -> LabelledPhotos:
    """Every image of `roots` whose class folder names a class of the model; `limit` > 0 keeps
    at most that many per source, evenly spread over the sorted list."""
    if not roots:
        raise DatasetError("no labelled photos: pass --data DIR (repeatable, one per source)")
    index = {name: i for i, name in enumerate(class_names)}
    names = source_names(roots)
    paths: list[Path] = []
    labels: list[int] = []
    sources: list[int] = []
    unknown: dict[str, list[str]] = {}
    for s, root in enumerate(roots):
        folder = scan_image_folder(root, min_classes=1)
        kept = [x for x in folder.samples if folder.class_names[x.label] in index]
        missing = sorted(set(folder.class_names) - set(index))
        if missing:
            unknown[names[s]] = missing
        if not kept:
            raise DatasetError(
                f"no class folder of {root} is named after a class of the model "
                f"(its classes: {', '.join(list(class_names)[:5])}...)"
            )
        if limit > 0 and len(kept) > limit:
            step = len(kept) / limit
            kept = [kept[int(i * step)] for i in range(limit)]
        for x in kept:
            paths.append(x.path)
            labels.append(index[folder.class_names[x.label]])
            sources.append(s)
    return LabelledPhotos(
        paths,
        np.asarray(labels, dtype=np.int64),
        np.asarray(sources, dtype=np.int64),
        names,
        list(class_names),
        unknown,
    )
