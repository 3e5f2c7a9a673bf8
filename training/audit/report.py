"""The audit's outputs: the summary table (printed and in report.md), audit.json with every
finding, exclude.txt and domains.tsv."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from plantdx.config import to_dict

from .apply import is_mixed
from .config import AuditConfig
from .decide import Flags
from .domain import Domains
from .duplicates import Pair
from .files import DOMAINS_FILENAME, EXCLUDE_FILENAME, photo_key, write_domains, write_exclude
from .photos import Described

Row = dict[str, Any]  # {"category", "unit", "total", "by_source": {name: n}, "excluded"}


def _row(d: Described, flags: Flags, category: str, unit: str, members: Iterable[int]) -> Row:
    ids = sorted(set(members))
    by = {s.name: 0 for s in d.sources}
    for i in ids:
        by[d.sources[d.photos[i].source].name] += 1
    return {
        "category": category,
        "unit": unit,
        "total": len(ids),
        "by_source": by,
        "excluded": sum(1 for i in ids if i in flags.excluded),
    }


def _pair_row(d: Described, flags: Flags, category: str, pairs: list[Pair]) -> Row:
    row = _row(d, flags, category, "pairs", (i for p in pairs for i in (p.a, p.b)))
    row["photos"], row["total"] = row["total"], len(pairs)
    return row


def summary(d: Described, flags: Flags, dom: Domains) -> list[Row]:
    """One row per category: how many, in which source (photos), how many excluded."""
    n = range(len(d.photos))
    pairs = flags.pairs
    rows = [
        _row(d, flags, "photos", "photos", n),
        _row(d, flags, "corrupt", "photos", flags.corrupt),
        _row(d, flags, "tiny", "photos", flags.tiny),
        _pair_row(d, flags, "byte duplicates", [p for p in pairs if p.kind == "byte"]),
        _pair_row(d, flags, "near duplicates", [p for p in pairs if p.kind == "near"]),
        _pair_row(d, flags, "leak across sources", [p for p in pairs if p.leak == "sources"]),
        _pair_row(d, flags, "leak across splits", [p for p in pairs if p.leak == "splits"]),
        _pair_row(d, flags, "label conflicts", flags.conflicts),
        _row(d, flags, "mosaics", "photos", flags.mosaic),
        _row(d, flags, "collages", "photos", flags.collage),
        _row(d, flags, "label issues", "photos", (x.index for x in flags.labels.issues)),
    ]
    if dom.scores is not None:
        rows.append(_row(d, flags, "lab-style", "photos", np.flatnonzero(dom.lab_style())))
        rows.append(_row(d, flags, "field-style", "photos", np.flatnonzero(dom.field_style())))
    rows.append(_row(d, flags, "excluded", "photos", flags.excluded))
    return rows


def markdown_table(d: Described, rows: list[Row]) -> str:
    names = [s.name for s in d.sources]
    head = ["category", "total", *names, "excluded"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        total = f"{r['total']} {r['unit']}" if r["unit"] == "pairs" else str(r["total"])
        cells = [r["category"], total, *(str(r["by_source"][n]) for n in names), str(r["excluded"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _photo(d: Described, i: int) -> dict[str, Any]:
    p = d.photos[i]
    return {"path": photo_key(p.path), "source": d.sources[p.source].name, "label": p.label}


def _pair(d: Described, p: Pair) -> dict[str, Any]:
    return {
        "a": _photo(d, p.a),
        "b": _photo(d, p.b),
        "kind": p.kind,
        "cosine": round(p.cosine, 4),
        "phash_bits": p.phash_bits,
        "inliers": p.inliers,
        "leak": p.leak,
        "label_conflict": p.conflict,
    }


def domain_counts(d: Described, dom: Domains) -> dict[str, dict[str, Any]]:
    if dom.scores is None:
        return {}
    out = {}
    for k, s in enumerate(d.sources):
        mine = np.array([p.source == k for p in d.photos])
        field = int(dom.field_style()[mine].sum())
        lab = int(dom.lab_style()[mine].sum())
        role = "lab reference" if k in dom.lab else "field reference" if k in dom.field else ""
        out[s.name] = {"lab": lab, "field": field, "mixed": is_mixed(lab, field), "role": role}
    return out


def audit_json(
    d: Described,
    flags: Flags,
    dom: Domains,
    cfg: AuditConfig,
    rows: list[Row],
    extra: dict[str, Any],
) -> dict[str, Any]:
    photos = d.photos
    return {
        "sources": [
            {
                "name": s.name,
                "root": str(s.root.resolve()),
                "photos": sum(1 for p in photos if p.source == k),
            }
            for k, s in enumerate(d.sources)
        ],
        "summary": rows,
        "corrupt": [{**_photo(d, i), "reason": photos[i].unreadable} for i in flags.corrupt],
        "tiny": [
            {**_photo(d, i), "width": photos[i].width, "height": photos[i].height}
            for i in flags.tiny
        ],
        "mosaics": [
            {**_photo(d, i), "kind": kind, "seams": [round(float(v), 2) for v in d.seams[i]]}
            for kind, members in (("mosaic", flags.mosaic), ("collage", flags.collage))
            for i in members
        ],
        "duplicates": {
            "groups": len(flags.groups),
            "pairs": [_pair(d, p) for p in flags.pairs],
        },
        "label_issues": {
            "checked": flags.labels.checked,
            "out_of_fold_accuracy": flags.labels.accuracy,
            "excluded": cfg.exclude_label_issues,
            "issues": [
                {
                    **_photo(d, x.index),
                    "suggested": x.suggested,
                    "confidence": x.confidence,
                }
                for x in flags.labels.issues
            ],
        },
        "domains": {
            "how": dom.how,
            "lab_references": [d.sources[k].name for k in dom.lab],
            "field_references": [d.sources[k].name for k in dom.field],
            "separability": dom.separability,
            "reference_recall": dom.reference_recall,
            "field_threshold": dom.threshold,
            "by_source": domain_counts(d, dom),
            "file": DOMAINS_FILENAME if dom.scores is not None else None,
        },
        "not_images": [[str(p), why] for p, why in d.not_images],
        "excluded": len(flags.excluded),
        "config": to_dict(cfg),
        **extra,
    }


def write_files(out: Path, d: Described, flags: Flags, dom: Domains, cfg: AuditConfig) -> None:
    """exclude.txt (and domains.tsv when there is a domain score)."""
    names = ", ".join(s.name for s in d.sources)
    write_exclude(
        out / EXCLUDE_FILENAME,
        [(photo_key(d.photos[i].path), why) for i, why in sorted(flags.excluded.items())],
        header=[
            f"plantdx data audit of {names}",
            f"{len(flags.excluded)} photo(s) excluded: PATH<TAB>REASON (audit.json has the rest)",
        ],
        commented=[
            (photo_key(d.photos[i].path), why) for i, why in sorted(flags.commented.items())
        ],
    )
    if dom.scores is not None:
        s, field = dom.scores, dom.field_style()
        write_domains(
            out / DOMAINS_FILENAME,
            (
                (photo_key(p.path), "field" if field[i] else "lab", float(s[i]))
                for i, p in enumerate(d.photos)
                if np.isfinite(s[i])
            ),
        )


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=1) + "\n")
