"""A domain score per photo: how field-style (0 = a leaf on a plain lab board, 1 = a photo taken
in a field or greenhouse) its ImageNet features are, from a logistic regression fitted on the
photos of known lab-style and known field-style sources (the references), out of fold for the
references' own photos. Sources are judged by what their photos look like, not their names.

The references: the sources given as `lab` and `field`. When none are given, every pair of
sources is tried: a cross-validated classifier learns to tell the two apart, and the pair it
separates best (by the worse of the two sources' recalls) is the pair of references, provided
both recalls reach `reference_recall`: two pure sources of opposite kinds are told apart almost
perfectly, while a mixed source overlaps the pure source of its other kind. Of the two, the
one whose photos are more alike (mean cosine to their centroid: one board, one framing) is the
lab source. With only `lab` (or only `field`) given, the other reference is the source told
apart best from it. When no pair reaches the recall there is no domain score, and the report
says to name the references.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from plantdx.exceptions import DatasetError

from .classifiers import DOMAIN_C, fit_predict, folds_for, out_of_fold, recalls
from .config import AuditConfig
from .photos import Described

MIN_REFERENCE_PHOTOS = 20


@dataclass
class Domains:
    lab: list[int] = dataclasses.field(default_factory=list)  # reference source indices
    field: list[int] = dataclasses.field(default_factory=list)
    how: str = ""  # how the references were chosen
    # "a | b" → the worse of the two recalls telling the two sources apart (inference only).
    separability: dict[str, float] = dataclasses.field(default_factory=dict)
    # P(field-style) per photo; NaN for unreadable photos; None without references.
    scores: np.ndarray | None = None
    # Recall of the score on the lab and on the field references' photos (out of fold).
    reference_recall: tuple[float, float] | None = None
    threshold: float = 0.5  # field-style from this score on

    def field_style(self) -> np.ndarray:
        """Per photo: True for field-style, False for lab-style or unscored."""
        if self.scores is None:
            return np.zeros(0, dtype=bool)
        return np.nan_to_num(self.scores, nan=-1.0) >= self.threshold

    def lab_style(self) -> np.ndarray:
        if self.scores is None:
            return np.zeros(0, dtype=bool)
        return np.nan_to_num(self.scores, nan=2.0) < self.threshold


def _indices(named: list[str], d: Described) -> list[int]:
    out = []
    for name in named:
        want = Path(name).resolve()
        hit = [k for k, s in enumerate(d.sources) if s.root.resolve() == want or s.name == name]
        if not hit:
            raise DatasetError(f"reference {name} is not one of the audited sources")
        out += hit
    return out


def _separability(a: int, b: int, z: np.ndarray, src: np.ndarray, cfg: AuditConfig) -> float:
    rows = (src == a) | (src == b)
    y = (src[rows] == b).astype(int)
    if folds_for(y, cfg.folds) < 2 or min(np.bincount(y)) < MIN_REFERENCE_PHOTOS:
        return 0.0
    p = out_of_fold(z[rows], y, c=DOMAIN_C, folds=cfg.folds, seed=cfg.seed, balanced=True)
    return min(recalls(y, (p[:, 1] >= 0.5).astype(int)))


def _tightness(k: int, d: Described, rows: np.ndarray, src: np.ndarray) -> float:
    f = d.features[rows][src == k]
    centre = f.mean(axis=0)
    return float((f @ (centre / max(float(np.linalg.norm(centre)), 1e-12))).mean())


def choose_references(d: Described, z: np.ndarray, rows: np.ndarray, cfg: AuditConfig) -> Domains:
    """The reference sources (see the module's docstring); `rows`: the photo of each row of z."""
    src = np.array([p.source for p in d.photos])[rows]
    lab, fld = _indices(cfg.lab, d), _indices(cfg.field, d)
    if set(lab) & set(fld):
        raise DatasetError("a source cannot be both a lab and a field reference")
    if lab and fld:
        return Domains(lab, fld, "named (--lab, --field)")
    known = lab or fld
    pairs = [
        (a, b)
        for a, b in combinations(range(len(d.sources)), 2)
        if not known or (a in known) != (b in known)
    ]
    scores = {(a, b): _separability(a, b, z, src, cfg) for a, b in pairs}
    result = Domains(
        separability={
            f"{d.sources[a].name} | {d.sources[b].name}": round(v, 4)
            for (a, b), v in scores.items()
        }
    )
    best = max(scores, key=lambda k: scores[k], default=None)
    if best is None or scores[best] < cfg.reference_recall:
        result.how = (
            f"no two sources are told apart with {cfg.reference_recall:.0%} recall of each: "
            "name the references with --lab DIR and --field DIR"
        )
        return result
    a, b = best
    acc = f"told apart best ({scores[best]:.1%} recall of each)"
    if known:
        other = b if a in known else a
        result.lab, result.field = ([*lab], [other]) if lab else ([other], [*fld])
        result.how = f"inferred: {d.sources[other].name} is the source {acc} from the named one"
        return result
    tight = {k: _tightness(k, d, rows, src) for k in best}
    result.lab = [max(best, key=lambda k: tight[k])]
    result.field = [min(best, key=lambda k: tight[k])]
    result.how = (
        f"inferred: {d.sources[result.lab[0]].name} (lab) and "
        f"{d.sources[result.field[0]].name} (field) are the two sources {acc}; the lab one's "
        f"photos are the more alike (mean cosine to centre {tight[result.lab[0]]:.3f} vs "
        f"{tight[result.field[0]]:.3f})"
    )
    return result


def score_domains(
    d: Described, z: np.ndarray, usable: np.ndarray, train_on: np.ndarray, cfg: AuditConfig
) -> Domains:
    """References, then P(field-style) for every usable photo. `train_on` (over all photos)
    marks the photos the classifier may learn from (no mosaics or collages)."""
    rows = np.flatnonzero(usable)  # photo index of each row of z
    result = choose_references(d, z[train_on[rows]], rows[train_on[rows]], cfg)
    if not result.lab or not result.field:
        return result
    src = np.array([p.source for p in d.photos])
    ref = np.isin(src[rows], result.lab + result.field) & train_on[rows]
    y = np.isin(src[rows][ref], result.field).astype(int)
    if folds_for(y, cfg.folds) < 2:
        result.how += "; too few reference photos to score"
        result.lab, result.field = [], []
        return result
    scores = np.full(len(d.photos), np.nan)
    oof = out_of_fold(z[ref], y, c=DOMAIN_C, folds=cfg.folds, seed=cfg.seed, balanced=True)[:, 1]
    scores[rows[ref]] = oof
    scores[rows[~ref]] = fit_predict(z[ref], y, z[~ref], c=DOMAIN_C, balanced=True)[:, 1]
    result.scores = scores
    low, high = cfg.threshold_range
    result.threshold = round(
        float(np.clip(np.quantile(oof[y == 0], cfg.lab_quantile), low, high)), 4
    )
    lab_recall, field_recall = recalls(y, (oof >= result.threshold).astype(int))
    result.reference_recall = (round(lab_recall, 4), round(field_recall, 4))
    return result
