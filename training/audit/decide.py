"""From findings to exclude.txt: which photo goes, for which reason (the first that applies):

1. corrupt: training's decoder refuses the file;
2. tiny: its shorter side is under `min_side` pixels;
3. label_conflict: the same photo (byte or near duplicate) carries another label elsewhere: when
   the copies are in two sources, the one in the source named first stays (name the curated
   source first; `conflicts="drop_all"` drops them all); copies in one source all go, since
   which label is right is not known there;
4. mosaic, collage: several photos in one image;
5. duplicate: of each group of copies one stays: the copy in the source named first (in --data
   order), then the one with the most pixels, then the first path; the others go, so no photo
   is twice in training, across sources or across its splits;
6. label_issue: only with `exclude_label_issues` (otherwise listed as comments).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import AuditConfig
from .duplicates import Pair
from .label_issues import LabelCheck
from .photos import Described


@dataclass
class Flags:
    """Every finding by photo index, and the decision."""

    corrupt: list[int] = field(default_factory=list)
    tiny: list[int] = field(default_factory=list)
    mosaic: list[int] = field(default_factory=list)
    collage: list[int] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    groups: list[list[int]] = field(default_factory=list)
    labels: LabelCheck = field(default_factory=lambda: LabelCheck([], {}, 0))
    excluded: dict[int, str] = field(default_factory=dict)
    commented: dict[int, str] = field(default_factory=dict)

    @property
    def conflicts(self) -> list[Pair]:
        return [p for p in self.pairs if p.conflict]


def decide(d: Described, flags: Flags, cfg: AuditConfig) -> None:
    """Fills flags.excluded and flags.commented."""
    photos = d.photos
    out: dict[int, str] = {}

    def put(i: int, reason: str) -> None:
        out.setdefault(i, reason)

    for i in flags.corrupt:
        put(i, f"corrupt: {photos[i].unreadable}")
    for i in flags.tiny:
        p = photos[i]
        put(i, f"tiny: {p.width}x{p.height} px (shorter side under {cfg.min_side} px)")
    for pair in flags.conflicts:
        first = min(pair.a, pair.b, key=lambda i: photos[i].source)
        for me, other in ((pair.a, pair.b), (pair.b, pair.a)):
            two_sources = photos[me].source != photos[other].source
            if cfg.conflicts == "keep_first" and two_sources and me == first:
                continue
            put(
                i=me,
                reason=f"label_conflict: the same photo ({pair.kind} duplicate) is labelled "
                f"{photos[other].label} at {photos[other].path.resolve()}",
            )
    for kind, members in (("mosaic", flags.mosaic), ("collage", flags.collage)):
        for i in members:
            what = "2x2 mosaic" if kind == "mosaic" else "side-by-side collage"
            seams = ", ".join(f"{v:.1f}" for v in d.seams[i])
            put(i, f"{kind}: a {what} of several photos (centre seams {seams})")
    leaks: dict[int, set[str]] = {}
    for pair in flags.pairs:
        if pair.leak:
            for i in (pair.a, pair.b):
                leaks.setdefault(i, set()).add(pair.leak)
    for group in flags.groups:
        free = sorted(
            (i for i in group if i not in out),
            key=lambda i: (photos[i].source, -photos[i].width * photos[i].height, photos[i].path),
        )
        for i in free[1:]:
            leak = " and ".join(sorted(leaks.get(i, set())))
            where = f"; leaked across {leak}" if leak else ""
            put(
                i,
                f"duplicate: one of {len(group)} copies, kept {photos[free[0]].path.resolve()}"
                f"{where}",
            )
    commented: dict[int, str] = {}
    for issue in flags.labels.issues:
        reason = (
            f"label_issue: labelled {issue.given}, the other photos say {issue.suggested} "
            f"(confidence {issue.confidence:.2f})"
        )
        if cfg.exclude_label_issues:
            put(issue.index, reason)
        elif issue.index not in out:
            commented[issue.index] = reason
    flags.excluded, flags.commented = out, commented
