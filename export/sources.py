"""Where an export's checkpoint and its check images come from: a file or run directory, an
MLflow run or registry model; --check-data, else the run's held-out split, else drawn leaves."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from plantdx.checkpoint import Checkpoint
from plantdx.data import SPLIT_FILENAME, list_images, load_split
from plantdx.exceptions import DatasetError, ExportError, PreprocessError
from plantdx.preprocessing import Preprocessor

log = logging.getLogger("plantdx.export.export")


RUN_ID = re.compile(r"[0-9a-f]{32}")


def resolve_source(source: str) -> Path:
    path = Path(source)
    if path.is_dir():
        path = path / "best.pt"
    if path.is_file():
        return path
    if source.startswith(("models:/", "runs:/")) or RUN_ID.fullmatch(source):
        from plantdx.tracking import download_checkpoint

        return download_checkpoint(source)
    raise ExportError(
        f"export source {source!r} is not a checkpoint file, run directory, MLflow run id "
        "(32 hex digits) or MLflow URI (models:/NAME/VERSION, models:/NAME@ALIAS, runs:/ID/PATH)"
    )


def run_split_file(source_path: Path, ckpt: Checkpoint) -> Path | None:
    """The run's split.json: beside the checkpoint, else among the MLflow run's artifacts."""
    local = source_path.parent / SPLIT_FILENAME
    if local.is_file():
        return local
    if not ckpt.mlflow_run_id:
        return None
    try:
        from plantdx.tracking import configure

        mlflow = configure()
        path = mlflow.artifacts.download_artifacts(
            run_id=ckpt.mlflow_run_id, artifact_path=SPLIT_FILENAME
        )
    except Exception:  # no tracking server, or a run without split.json: not an error here
        return None
    return Path(path) if Path(path).is_file() else None


def check_paths(
    ckpt: Checkpoint, check_data: str | None, source_path: Path
) -> tuple[list[Path], str]:
    if check_data:
        root = Path(check_data)
        if not root.is_dir():
            raise DatasetError(f"--check-data folder {root} does not exist")
        paths = list_images(root)
        if not paths:
            raise DatasetError(f"--check-data folder {root} holds no images")
        return paths, str(root)
    split_file = run_split_file(source_path, ckpt)
    if split_file is not None:
        try:
            _, split = load_split(split_file)
        except DatasetError:
            return [], ""
        paths = [s.path for s in split["test"] + split["val"] if s.path.is_file()]
        return (
            paths,
            f"the test and validation splits of {ckpt.mlflow_run_id or source_path.parent}",
        )
    return [], ""


SYNTHETIC_CHECK = "generated leaf images (no real images found)"


def check_images(
    ckpt: Checkpoint, check_data: str | None, source_path: Path, limit: int, *, uint8: bool = True
) -> tuple[np.ndarray, str]:
    """Preprocessed real images for the checks: --check-data, else the run's own held-out split;
    as the classifier takes them: uint8 pixels (`Preprocessor.pixels`), or normalised float32
    ones for a repository made before the graph normalised them (`uint8=False`)."""
    base = Preprocessor(ckpt.preprocessing)
    pre = base.pixels if uint8 else base
    paths, where = check_paths(ckpt, check_data, source_path)
    arrays = []
    for p in spread(paths, limit):
        try:
            arrays.append(pre(p.read_bytes()))
        except PreprocessError:
            continue
    if arrays:
        return np.stack(arrays), where
    from plantdx.synth import CLASSES, draw_leaf

    log.warning("no real images for the export checks; pass --check-data DIR")
    rng = np.random.default_rng(0)
    drawn = [draw_leaf(CLASSES[i % len(CLASSES)], rng) for i in range(min(limit, 24))]
    return np.stack([pre(img) for img in drawn]), SYNTHETIC_CHECK


def spread(items: Any, n: int) -> Any:
    """At most n items, evenly spaced over the sequence."""
    step = max(1, len(items) // max(n, 1))
    return items[::step][:n]
