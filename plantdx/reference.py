"""What a model version expects to see, and how far what it sees has moved: the drift reference.

Export writes a `Reference` beside every classifier version (`classifier/N/reference.json`):
the histograms of the image statistics (`plantdx.imagestats`) of training and validation
photos, and, on the validation photos under the version's own decision rule, the class shares,
the histogram of the calibrated top-1 confidence (the buckets of the served
`plantdx_prediction_confidence`) and the abstention share. The served histograms, the
Prometheus recording rules and `plantdx drift` compare live shares with these through `psi`,
with the same thresholds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plantdx.exceptions import RepositoryError
from plantdx.imagestats import EDGES, bucket_labels, shares

REFERENCE_FILENAME = "reference.json"
FORMAT = 1

# The buckets of the served plantdx_prediction_confidence histogram (postprocess backend).
CONFIDENCE_EDGES: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
CONFIDENCE = "confidence"
CLASS = "class"
# Every compared distribution with numeric buckets: the image statistics and the confidence.
HISTOGRAM_EDGES: dict[str, tuple[float, ...]] = {**EDGES, CONFIDENCE: CONFIDENCE_EDGES}

# Verdicts: PSI above PSI_DRIFT is drift (the usual reading: < 0.1 stable, 0.1-0.25 moving,
# > 0.25 shifted); the abstention share drifts when it moves by more than ABSTENTION_DRIFT.
PSI_DRIFT = 0.25
ABSTENTION_DRIFT = 0.10
# Added to both shares inside the logarithm, so an empty bucket on either side stays finite.
PSI_EPSILON = 0.001


def psi(reference: Sequence[float], live: Sequence[float], eps: float = PSI_EPSILON) -> float:
    """Population stability index Σ (live − ref)·ln((live + ε)/(ref + ε)) of two share vectors."""
    if len(reference) != len(live):
        raise ValueError(f"{len(reference)} reference buckets against {len(live)} live ones")
    return float(
        sum((q - p) * math.log((q + eps) / (p + eps)) for p, q in zip(reference, live, strict=True))
    )


@dataclass
class Distribution:
    """Counts per bucket: `buckets` are `le` labels ("30", ..., "+Inf") with their numeric
    `edges`, or category names (classes) with no edges."""

    buckets: list[str]
    counts: list[int]
    edges: list[float] | None = None

    @property
    def n(self) -> int:
        return int(sum(self.counts))

    def shares(self) -> list[float]:
        return shares(self.counts)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"buckets": self.buckets, "counts": self.counts}
        if self.edges is not None:
            doc["edges"] = self.edges
        return doc

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Distribution:
        edges = d.get("edges")
        return cls(
            [str(b) for b in d["buckets"]],
            [int(c) for c in d["counts"]],
            [float(e) for e in edges] if edges is not None else None,
        )

    @classmethod
    def histogram(cls, name: str, counts: Sequence[int]) -> Distribution:
        """A distribution over the fixed buckets of statistic `name`."""
        edges = HISTOGRAM_EDGES[name]
        if len(counts) != len(edges) + 1:
            raise ValueError(f"{name}: {len(counts)} counts for {len(edges) + 1} buckets")
        return cls(bucket_labels(edges), [int(c) for c in counts], [float(e) for e in edges])


@dataclass
class Reference:
    """A version's reference; `distributions` holds the image statistics, CONFIDENCE and
    CLASS (the top-1 class, answered or not, as plantdx_predictions_total counts it)."""

    distributions: dict[str, Distribution] = field(default_factory=dict)
    abstention_share: float | None = None
    abstention_n: int = 0
    # Where the photos came from, per part ("statistics", "predictions").
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "distributions": {k: v.to_dict() for k, v in self.distributions.items()},
            "abstention": {"share": self.abstention_share, "n": self.abstention_n},
            "sources": self.sources,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reference:
        abstention = d.get("abstention") or {}
        share = abstention.get("share")
        return cls(
            {k: Distribution.from_dict(v) for k, v in (d.get("distributions") or {}).items()},
            float(share) if share is not None else None,
            int(abstention.get("n", 0)),
            dict(d.get("sources") or {}),
            list(d.get("notes") or []),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Reference:
        p = Path(path)
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RepositoryError(f"drift reference {p} is not readable: {exc}") from exc
