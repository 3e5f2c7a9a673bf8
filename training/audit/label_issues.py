"""Photos whose label the others contradict: cleanlab's `find_label_issues` on out-of-fold
probabilities of a logistic regression on the pooled features (every class folder name across
the sources is one class). Each flagged photo gets the class the regression prefers and a
confidence (1 minus cleanlab's self-confidence quality of the given label).

On field photos a linear model on ImageNet features is often wrong about the disease, so many
flags there are hard photos rather than wrong labels: BENCHMARKS.md ("Data audit") has the
precision by eye, and exclude.txt lists the flags as comments unless asked to exclude them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .classifiers import LABEL_C, folds_for, out_of_fold
from .config import AuditConfig
from .photos import Described


@dataclass
class LabelIssue:
    index: int  # photo
    given: str
    suggested: str
    confidence: float


@dataclass
class LabelCheck:
    issues: list[LabelIssue]
    # Out-of-fold accuracy of the regression per source name (how far to trust its flags).
    accuracy: dict[str, float]
    checked: int


def check_labels(d: Described, z: np.ndarray, rows: np.ndarray, cfg: AuditConfig) -> LabelCheck:
    """`rows`: the photo of each row of `z` (the photos to check)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.array([d.photos[i].label for i in rows])
    names, y = np.unique(labels, return_inverse=True)
    big = np.bincount(y)[y] >= 2  # a class of one photo cannot be judged out of fold
    rows, z, labels = rows[big], z[big], labels[big]
    names, y = np.unique(labels, return_inverse=True)
    if len(names) < 2 or folds_for(y, cfg.folds) < 2:
        return LabelCheck([], {}, 0)
    proba = out_of_fold(z, y, c=LABEL_C, folds=cfg.folds, seed=cfg.seed)
    flagged = find_label_issues(
        y, proba, filter_by="prune_by_noise_rate", return_indices_ranked_by="self_confidence"
    )
    quality = get_label_quality_scores(y, proba)
    issues = [
        LabelIssue(
            int(rows[k]),
            str(names[y[k]]),
            str(names[int(proba[k].argmax())]),
            round(1.0 - float(quality[k]), 4),
        )
        for k in flagged
    ]
    src = np.array([d.photos[i].source for i in rows])
    right = proba.argmax(1) == y
    accuracy = {
        s.name: round(float(right[src == k].mean()), 4)
        for k, s in enumerate(d.sources)
        if (src == k).any()
    }
    return LabelCheck(issues, accuracy, len(rows))
