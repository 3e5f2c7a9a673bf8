"""The cross-fitted field figures under the fitted rule: per source, the out-of-fold accuracy,
coverage and selective accuracy with their spread across folds, without and with the crop
known (each photo's answer restricted to the crop of its label, as the served `CROP` input
does), and what a test-time left-right flip would change (`hflip`: top-1 only, the rule was
fitted without it).

Field sources are uneven by class (PlantDoc: 81 septoria photos, 3 of mosaic virus) while the
photos a model meets need not be: `class_balanced` gives the same three figures with every
class of the source counting equally (each photo weighted 1 / its class's count), and
`by_class` the right answers and photos of each class."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from plantdx.crops import CropMap
from plantdx.decision import DecisionRule

from .calibrate import by_class, class_balanced, selective
from .crossfit import CrossfitResult


def crossfit_figures(
    rule: DecisionRule,
    result: CrossfitResult,
    names: Sequence[str],
    crops: CropMap,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """{"continuations": ..., "sources": {name: {"without_crop": F, "with_crop": F}}} where F
    holds the pooled out-of-fold figures and, per figure, the mean, standard deviation, min
    and max over folds."""
    oof = result.oof
    allowed = crops.class_masks()[oof.targets] if len(oof.targets) else None
    by_source: dict[str, Any] = {}
    for i, name in enumerate(names):
        in_src = result.sources == i
        if not in_src.any():
            continue
        entry: dict[str, Any] = {}
        for key, mask in (("without_crop", None), ("with_crop", allowed)):
            probs = rule.probabilities(oof.logits, mask)
            entry[key] = _figures(probs, oof.targets, result.folds, in_src, rule.threshold)
            entry[key]["class_balanced"] = class_balanced(
                probs[in_src], oof.targets[in_src], rule.threshold
            )
            entry[key]["by_class"] = {
                class_names[c]: [int(r), int(n)]
                for c, (r, n) in by_class(probs[in_src], oof.targets[in_src]).items()
            }
        if result.hflip_logits is not None:
            entry["hflip"] = {
                key: _accuracy(rule.probabilities(result.hflip_logits, mask), oof.targets, in_src)
                for key, mask in (("accuracy", None), ("accuracy_with_crop", allowed))
            }
        by_source[name] = entry
    return {"continuations": result.summary(), "sources": by_source}


def _figures(
    probs: np.ndarray,
    targets: np.ndarray,
    folds: np.ndarray,
    in_src: np.ndarray,
    threshold: float,
) -> dict[str, Any]:
    pooled = selective(probs[in_src], targets[in_src], threshold)
    per_fold = [
        selective(probs[in_src & (folds == k)], targets[in_src & (folds == k)], threshold)
        for k in sorted(set(folds[in_src].tolist()))
    ]
    out: dict[str, Any] = dict(pooled)
    for key in ("accuracy", "coverage", "selective_accuracy"):
        values = np.asarray([f[key] for f in per_fold if f["n"]], dtype=np.float64)
        out[f"{key}_folds"] = {
            "mean": float(values.mean()) if len(values) else 0.0,
            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "min": float(values.min()) if len(values) else 0.0,
            "max": float(values.max()) if len(values) else 0.0,
        }
    return out


def _accuracy(probs: np.ndarray, targets: np.ndarray, in_src: np.ndarray) -> float:
    if not in_src.any():
        return 0.0
    return float((probs[in_src].argmax(1) == targets[in_src]).mean())
