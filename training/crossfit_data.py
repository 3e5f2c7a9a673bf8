"""Which photos a run cross-fits, and their folds.

With `crossfit.folds` K >= 2, the photos of the run's field sources are not split 70/20/10:
each is given one of K folds (stratified by class, seeded). The base model never sees them;
K short continuations each train on K-1 folds and predict the fold left out, so every field
photo is predicted once by a model that never saw it (`crossfit.py`). Those out-of-fold
predictions choose nothing by chance on a few dozen photos: the temperature and the
abstention threshold are fitted on all of them.

A source is a field source when the data audit's domains.tsv calls most of its photos
field-style (a mixed source is split by the audit into NAME and NAME:lab first), or when
`crossfit.sources` names it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from plantdx.data import ImageFolder, Sample

from .audit.files import photo_key, read_domains


@dataclass
class CrossfitConfig:
    """Cross-fitting the field photos (see module docstring); folds 0 turns it off and every
    source is split 70/20/10 as before."""

    folds: int = 4
    # Sources to cross-fit by name; empty: the field sources of the audit's domains.tsv.
    sources: list[str] = field(default_factory=list)
    # Share of the time budget kept for the K continuations and the final one (CPU).
    budget_share: float = 0.4
    # Without a time budget (GPU): passes over the field photos per continuation.
    epochs: float = 8.0
    # Peak learning rate of a continuation (linear warm-up over 10 % of its steps, cosine).
    lr: float = 0.0005
    # Share of a continuation's draws from the field photos; the rest from the base's draws.
    field_share: float = 0.5


def field_sources(
    folder: ImageFolder, cfg: CrossfitConfig, domains: str | None
) -> tuple[list[int], str]:
    """Indices of the sources to cross-fit, and how they were chosen (for the run's log)."""
    names = [s.name for s in folder.sources]
    if cfg.sources:
        missing = [n for n in cfg.sources if n not in names]
        if missing:
            from plantdx.exceptions import ConfigError

            raise ConfigError(
                f"crossfit.sources names no --data source: {', '.join(missing)} "
                f"(the sources are: {', '.join(names)})"
            )
        return [names.index(n) for n in cfg.sources], "crossfit.sources"
    if not domains or not Path(domains).is_file():
        return [], "no domains.tsv (run plantdx data audit and pass --exclude AUDIT/exclude.txt)"
    domain_of = read_domains(domains)
    picked = []
    for k in range(len(folder.sources)):
        photos = [s for s in folder.samples if s.source == k]
        n_field = sum(1 for s in photos if domain_of.get(photo_key(s.path)) == "field")
        if photos and n_field * 2 > len(photos):
            picked.append(k)
    return picked, f"field-style by {domains}"


def assign_folds(samples: Sequence[Sample], folds: int, seed: int) -> dict[Path, int]:
    """Fold of each photo: per (source, class), shuffled with the seed, dealt round-robin from
    a random start, so every fold holds about 1/K of every class."""
    rng = random.Random(seed)
    by_key: dict[tuple[int, int], list[Sample]] = {}
    for s in samples:
        by_key.setdefault((s.source, s.label), []).append(s)
    out: dict[Path, int] = {}
    for key in sorted(by_key):
        items = sorted(by_key[key], key=lambda s: str(s.path))
        rng.shuffle(items)
        start = rng.randrange(folds)
        for i, s in enumerate(items):
            out[s.path] = (start + i) % folds
    return out


def move_to_cv(
    split: dict[str, list[Sample]], sources: Sequence[int], folds: int, seed: int
) -> tuple[dict[str, list[Sample]], dict[Path, int]]:
    """The split with the photos of `sources` taken out of train/val/test into "cv", and the
    fold of each of them."""
    picked = set(sources)
    out = {k: [s for s in v if s.source not in picked] for k, v in split.items()}
    cv = sorted(
        (s for v in split.values() for s in v if s.source in picked), key=lambda s: str(s.path)
    )
    out["cv"] = cv
    return out, assign_folds(cv, folds, seed)
