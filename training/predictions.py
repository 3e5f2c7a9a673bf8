"""predictions.npz: every held-out prediction a run made, so that its decision rule, its field
figures and any re-weighting of its answers can be checked or fitted again offline without
running the model (`load_predictions`).

Per split (`val`, `test`, `unknown_val`, `unknown_test` when the run has them, and `cv`: the
cross-fitted field photos' out-of-fold predictions): `SPLIT/logits` (raw, before the
temperature), `SPLIT/targets` (class index; -1 for photos of no class), `SPLIT/sources` (source
index) and `SPLIT/paths`; for `cv` also `cv/folds` and `cv/hflip_logits` (the mirrored image's
logits averaged in). `class_names` and `source_names` give the indices their names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .crossfit import CrossfitResult
from .engine import EvalResult

FILE = "predictions.npz"


def write_predictions(
    run_dir: Path,
    passes: Mapping[str, EvalResult],
    paths: Mapping[str, Sequence[Path]],
    sources: Mapping[str, Any],
    crossfit: CrossfitResult | None,
    class_names: Sequence[str],
    source_names: Sequence[str],
) -> Path:
    arrays: dict[str, np.ndarray] = {
        "class_names": np.asarray(list(class_names), dtype=str),
        "source_names": np.asarray(list(source_names), dtype=str),
    }
    splits: dict[str, EvalResult] = dict(passes)
    if crossfit is not None:
        splits["cv"] = crossfit.oof
        arrays["cv/folds"] = np.asarray(crossfit.folds, dtype=np.int64)
        if crossfit.hflip_logits is not None:
            arrays["cv/hflip_logits"] = np.asarray(crossfit.hflip_logits, dtype=np.float32)
    for split, res in splits.items():
        arrays[f"{split}/logits"] = np.asarray(res.logits, dtype=np.float32)
        arrays[f"{split}/targets"] = np.asarray(res.targets, dtype=np.int64)
        src = crossfit.sources if split == "cv" and crossfit is not None else sources.get(split)
        n = len(res.logits)
        arrays[f"{split}/sources"] = (
            np.asarray(src, dtype=np.int64) if src is not None else np.full(n, -1, np.int64)
        )
        arrays[f"{split}/paths"] = np.asarray([str(p) for p in paths.get(split, [])][:n], dtype=str)
    out = run_dir / FILE
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out)
    return out


def load_predictions(run_dir: Path) -> dict[str, np.ndarray]:
    """The arrays of a run's predictions.npz, by key."""
    with np.load(Path(run_dir) / FILE, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
