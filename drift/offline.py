"""`plantdx drift`: captured photos and answers against each version's reference, offline.

Per version found in the capture: the image statistics of the captured photos (the same
`plantdx.imagestats` function on the photo as the version's preprocessing decodes it, as the
served preprocess does) and the confidence, class and abstention shares of the sidecars,
each compared with the version's reference: PSI per distribution, drift above the alerts'
threshold (`plantdx.reference.PSI_DRIFT`); the abstention share drifts when it moved by more
than ABSTENTION_DRIFT. Only `sampled` captures count by default: the others were kept because
the answer was uncertain or weak, so they over-represent exactly what drift looks like.
The config, the report and its table are in `report`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from plantdx.decision import UNCERTAIN
from plantdx.exceptions import ConfigError, PreprocessError
from plantdx.imagestats import EDGES, bucket_counts, image_stats
from plantdx.preprocessing import Preprocessor
from plantdx.reference import (
    CLASS,
    CONFIDENCE,
    CONFIDENCE_EDGES,
    Distribution,
    Reference,
    psi,
)

from .capture import REASONS, Captured, read_capture
from .references import preprocess_meta, repository_references
from .report import (
    DRIFT,
    NO_DATA,
    NO_REFERENCE,
    OK,
    Comparison,
    DriftConfig,
    DriftReport,
    VersionDrift,
)


def drift(cfg: DriftConfig) -> DriftReport:
    if not cfg.repository or not cfg.capture:
        raise ConfigError("plantdx drift needs --repository REPO and --capture DIR")
    unknown = sorted(set(cfg.reasons) - set(REASONS))
    if unknown:
        raise ConfigError(f"unknown capture reason(s) {unknown}; known: {list(REASONS)}")
    captured, unreadable = read_capture(cfg.capture)
    refs = repository_references(cfg.repository)
    kept = [c for c in captured if c.reason in cfg.reasons]
    excluded = Counter(c.reason for c in captured if c.reason not in cfg.reasons)
    by_version: dict[str, list[Captured]] = {}
    for c in kept:
        by_version.setdefault(c.version, []).append(c)
    versions = [
        _version(cfg, version, items, refs.get(version))
        for version, items in sorted(by_version.items(), key=lambda kv: _order(kv[0]))
    ]
    report = DriftReport(
        repository=str(cfg.repository),
        capture=str(cfg.capture),
        reasons=list(cfg.reasons),
        psi_threshold=cfg.psi_threshold,
        abstention_threshold=cfg.abstention_threshold,
        versions=versions,
        unreadable=unreadable,
        excluded=dict(excluded),
    )
    if cfg.out:
        from .plots import plot_comparisons

        plot_comparisons(report, Path(cfg.out))
    return report


def _order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 30, version)


def _version(
    cfg: DriftConfig, version: str, items: list[Captured], ref: Reference | None
) -> VersionDrift:
    result = VersionDrift(version, len(items), 0)
    live = _live(cfg, version, items, result)
    if ref is None:
        result.notes.append(
            f"version {version} has no reference.json in the repository: nothing to compare"
        )
    names = list(ref.distributions) if ref else list(live)
    for name in names:
        result.comparisons.append(_compare(cfg, name, ref, live.get(name)))
    result.abstention = _abstention(cfg, items, ref)
    return result


def _live(
    cfg: DriftConfig, version: str, items: list[Captured], result: VersionDrift
) -> dict[str, Distribution]:
    """The captured distributions of one version."""
    live: dict[str, Distribution] = {}
    photos = [c.photo for c in items if c.photo is not None]
    if len(photos) < len(items):
        result.notes.append(f"{len(items) - len(photos)} sidecars have no photo beside them")
    values: dict[str, list[float]] = {name: [] for name in EDGES}
    if photos:
        pre = Preprocessor(preprocess_meta(cfg.repository, version))
        bad = 0
        for path in photos:
            try:
                pixels, size = pre.decode_sized(path.read_bytes())
            except (OSError, PreprocessError):
                bad += 1
                continue
            for name, value in image_stats(pixels, size).to_dict().items():
                values[name].append(value)
        result.photos = len(photos) - bad
        if bad:
            result.notes.append(f"{bad} captured photos could not be decoded")
    for name, edges in EDGES.items():
        live[name] = Distribution.histogram(name, bucket_counts(values[name], edges))
    confidences = [c.confidence for c in items if c.confidence is not None]
    live[CONFIDENCE] = Distribution.histogram(
        CONFIDENCE, bucket_counts(confidences, CONFIDENCE_EDGES)
    )
    classes = Counter(c.prediction for c in items if c.prediction is not None)
    live[CLASS] = Distribution(sorted(classes), [classes[k] for k in sorted(classes)])
    return live


def _compare(
    cfg: DriftConfig, name: str, ref: Reference | None, live: Distribution | None
) -> Comparison:
    reference = ref.distributions.get(name) if ref else None
    if reference is None or live is None:
        return Comparison(name, NO_REFERENCE, None, live.n if live else 0, [], [], [])
    if name == CLASS:  # align the captured classes on the reference's
        counts = dict(zip(live.buckets, live.counts, strict=True))
        live = Distribution(reference.buckets, [counts.get(b, 0) for b in reference.buckets])
    if live.n == 0 or reference.n == 0:
        return Comparison(name, NO_DATA, None, live.n, reference.buckets, [], [])
    ref_shares, live_shares = reference.shares(), live.shares()
    value = psi(ref_shares, live_shares)
    verdict = DRIFT if value > cfg.psi_threshold else OK
    return Comparison(name, verdict, value, live.n, reference.buckets, ref_shares, live_shares)


def _abstention(cfg: DriftConfig, items: list[Captured], ref: Reference | None) -> dict[str, Any]:
    decided = [c.decision for c in items if c.decision is not None]
    live = sum(d == UNCERTAIN for d in decided) / len(decided) if decided else None
    reference = ref.abstention_share if ref else None
    out: dict[str, Any] = {"reference": reference, "captured": live, "n": len(decided)}
    if reference is None:
        out["verdict"] = NO_REFERENCE
    elif live is None:
        out["verdict"] = NO_DATA
    else:
        out["delta"] = live - reference
        out["verdict"] = DRIFT if abs(live - reference) > cfg.abstention_threshold else OK
    return out
