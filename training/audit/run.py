"""`plantdx data audit`: the audit in order. One decode of every photo (hashes, seams, keypoints,
thumbnails and features from it), then duplicates, mosaics, the domain score and label issues
on what that pass kept, then the decisions and the files."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from plantdx.data import scan_sources, stratified_split
from plantdx.exceptions import DatasetError

from ..progress import Reporter
from .classifiers import embed
from .config import AuditConfig
from .decide import Flags, decide
from .domain import Domains, score_domains
from .duplicates import candidate_pairs, find_pairs, groups
from .features import FeatureExtractor
from .files import DOMAINS_FILENAME, EXCLUDE_FILENAME
from .label_issues import check_labels
from .mosaic import classify
from .photos import Described, describe, scan_photos
from .report import Row, audit_json, markdown_table, summary, write_files, write_json
from .sheets import category_tiles, write_sheets


@dataclass
class AuditResult:
    out: Path
    sources: list[str]
    rows: list[Row]
    seconds: dict[str, float]
    domains: Domains
    sheets: list[Path] = field(default_factory=list)
    excluded: int = 0


def training_split(cfg: AuditConfig) -> dict[Path, str] | None:
    """The split `plantdx train --data SOURCE ...` makes of these sources (no exclusions), by
    photo path; None when they do not make a training set."""
    try:
        folder = scan_sources(cfg.sources)
    except DatasetError:
        return None
    split = stratified_split(
        folder, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.split_seed
    )
    return {s.path: name for name, items in split.items() for s in items}


def run_audit(cfg: AuditConfig, *, reporter: Reporter | None = None) -> AuditResult:
    rep = reporter or Reporter(quiet=True)
    out = Path(cfg.out)
    clock: dict[str, float] = {}
    start = last = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        clock[name] = round(now - last, 2)
        last = now

    photos, sources, not_images = scan_photos(cfg.sources)
    if not photos:
        raise DatasetError("the sources hold no photos")
    extractor = FeatureExtractor(cfg.feature_size)
    lap("load feature model")
    with rep.task("decode and describe photos", total=len(photos)) as advance:
        d = describe(photos, sources, not_images, cfg, extractor, progress=advance)
    lap("decode, hash, keypoints, features")

    flags = Flags()
    readable = d.readable
    flags.corrupt = [i for i, p in enumerate(photos) if p.unreadable and not d.too_small(i)]
    flags.tiny = [
        i
        for i, p in enumerate(photos)
        if d.too_small(i) or (readable[i] and min(p.width, p.height) < cfg.min_side)
    ]
    for i in np.flatnonzero(readable):
        kind = classify(d.seams[i], cfg)
        if kind:
            getattr(flags, kind).append(int(i))
    candidates = candidate_pairs(d, cfg)
    with rep.task("check duplicate candidates", total=len(candidates), unit="pairs") as advance:
        flags.pairs = find_pairs(d, cfg, candidates, split_of=training_split(cfg), progress=advance)
    flags.groups = groups(flags.pairs, len(photos))
    lap("duplicates and mosaics")

    rows = np.flatnonzero(readable)
    z = embed(d.features[rows], seed=cfg.seed)
    pasted = np.zeros(len(photos), dtype=bool)
    pasted[flags.mosaic + flags.collage] = True
    usable = readable.copy()
    dom = score_domains(d, z, usable, ~pasted, cfg)
    lap("domain score")
    plain = ~pasted[rows]
    flags.labels = check_labels(d, z[plain], rows[plain], cfg)
    lap("label issues")

    decide(d, flags, cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_files(out, d, flags, dom, cfg)
    table = summary(d, flags, dom)
    lab_refs, field_refs = set(dom.lab), set(dom.field)
    sheets: list[Path] = []
    tiles = category_tiles(d, flags, dom, lab_refs, field_refs, cfg.sheet_items)
    for name, (title, items) in tiles.items():
        sheets += write_sheets(d, items, out / "sheets", name, title)
    lap("decide and write")
    clock["total"] = round(time.perf_counter() - start, 2)
    extra: dict[str, Any] = {
        "seconds": clock,
        "candidate_pairs": len(candidates),
        "sheets": [str(p.relative_to(out)) for p in sheets],
    }
    write_json(out / "audit.json", audit_json(d, flags, dom, cfg, table, extra))
    (out / "report.md").write_text(markdown(d, cfg, table, dom, flags, extra))
    names = [s.name for s in d.sources]
    return AuditResult(out, names, table, clock, dom, sheets, len(flags.excluded))


def markdown(
    d: Described,
    cfg: AuditConfig,
    table: list[Row],
    dom: Domains,
    flags: Flags,
    extra: dict[str, Any],
) -> str:
    names = ", ".join(f"`{s.name}`" for s in d.sources)
    lines = [
        f"# Data audit of {names}",
        "",
        markdown_table(d, table),
        "",
        "Pairs are counted as pairs in `total`, as photos in the source columns. A pair leaks "
        "across sources when its two photos are in two sources, across splits when they are in "
        f"one source but land in two splits of training's split (seed {cfg.split_seed}).",
        "",
        f"`{EXCLUDE_FILENAME}`: {len(flags.excluded)} photo(s), one a line with the reason "
        "(corrupt, tiny, label_conflict, mosaic, collage, duplicate: all copies but one of each "
        "group, the one kept in the source named first). Label issues are "
        + ("excluded." if cfg.exclude_label_issues else "listed as `# ` comments, not excluded."),
        "",
        "## Domains",
        "",
        f"References: {dom.how or 'none'}.",
    ]
    if dom.scores is not None and dom.reference_recall is not None:
        lines += [
            "Out-of-fold recall on the lab and field references: "
            f"{dom.reference_recall[0]:.3f}, {dom.reference_recall[1]:.3f}. "
            f"`{DOMAINS_FILENAME}` gives every photo `lab` or `field` (field: score = "
            f"P(field-style) ≥ {dom.threshold}). A source with both (at least 5 % and 10 photos each) trains as two sources, "
            "NAME (field-style) and NAME:lab.",
        ]
    if dom.separability:
        lines += ["", "Separability of source pairs (the worse of the two recalls):", ""]
        lines += [f"- {k}: {v:.3f}" for k, v in dom.separability.items()]
    lines += ["", "## Label issues", ""]
    lines += [
        f"cleanlab on out-of-fold probabilities of a logistic regression on the pooled features "
        f"({flags.labels.checked} photos; its accuracy by source: "
        + ", ".join(f"{k} {v:.2f}" for k, v in flags.labels.accuracy.items())
        + ")."
    ]
    lines += ["", "## Contact sheets", ""]
    lines += [f"- `{p}`" for p in extra["sheets"]] or ["none"]
    lines += ["", "## Time (s)", ""]
    lines += [f"- {k}: {v}" for k, v in extra["seconds"].items()]
    return "\n".join(lines) + "\n"
