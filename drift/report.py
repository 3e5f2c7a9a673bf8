"""`plantdx drift`'s config and report: per version, each distribution's comparison with the
version's reference and the abstention share's, and the report as a table (`offline` fills it,
`plots` draws it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from plantdx.reference import ABSTENTION_DRIFT, PSI_DRIFT

from .capture import SAMPLED

OK, DRIFT, NO_REFERENCE, NO_DATA = "ok", "drift", "no reference", "no data"


@dataclass
class DriftConfig:
    repository: str = ""
    capture: str = ""
    # Folder for one PNG per version and distribution (reference vs captured); None: none.
    out: str | None = "drift-report"
    # Which captures count (sidecar `reason`).
    reasons: tuple[str, ...] = (SAMPLED,)
    psi_threshold: float = PSI_DRIFT
    abstention_threshold: float = ABSTENTION_DRIFT


@dataclass
class Comparison:
    statistic: str
    verdict: str
    psi: float | None
    n: int
    buckets: list[str]
    reference: list[float]
    captured: list[float]
    plot: str | None = None


@dataclass
class VersionDrift:
    version: str
    captures: int
    photos: int
    comparisons: list[Comparison] = field(default_factory=list)
    abstention: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def drifted(self) -> list[str]:
        found = [c.statistic for c in self.comparisons if c.verdict == DRIFT]
        return found + (["abstention"] if self.abstention.get("verdict") == DRIFT else [])


@dataclass
class DriftReport:
    repository: str
    capture: str
    reasons: list[str]
    psi_threshold: float
    abstention_threshold: float
    versions: list[VersionDrift]
    unreadable: list[str] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)

    @property
    def drift(self) -> bool:
        return any(v.drifted for v in self.versions)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["drift"] = self.drift
        for v, d in zip(self.versions, doc["versions"], strict=True):
            d["drifted"] = v.drifted
        return doc


def render_table(report: DriftReport) -> str:
    """The report as text: one line per version and distribution."""
    lines = [
        f"capture {report.capture} against {report.repository} "
        f"(captures: {', '.join(report.reasons)}; PSI > {report.psi_threshold:g} is drift)"
    ]
    if report.excluded:
        left = ", ".join(f"{n} {r}" for r, n in sorted(report.excluded.items()))
        lines.append(f"left out: {left} (not a random sample of the traffic)")
    for v in report.versions:
        lines.append("")
        lines.append(f"version {v.version}: {v.captures} captures, {v.photos} photos")
        lines.append(f"  {'statistic':<16}{'n':>6}{'PSI':>9}  verdict")
        for c in v.comparisons:
            value = f"{c.psi:.3f}" if c.psi is not None else "-"
            lines.append(f"  {c.statistic:<16}{c.n:>6}{value:>9}  {c.verdict}")
        a = v.abstention
        if a.get("reference") is not None and a.get("captured") is not None:
            detail = f"{a['captured']:.1%} vs {a['reference']:.1%}"
        else:
            detail = "-"
        lines.append(f"  {'abstention':<16}{a.get('n', 0):>6}{detail:>18}  {a.get('verdict')}")
        lines.extend(f"  note: {n}" for n in v.notes)
    lines.extend(f"unreadable sidecar {p}" for p in report.unreadable)
    lines.append("")
    lines.append("drift: " + ("yes" if report.drift else "no"))
    return "\n".join(lines)
