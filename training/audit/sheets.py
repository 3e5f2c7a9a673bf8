"""Contact sheets: the thumbnails of what the audit flags, one PNG per category (more pages when
there are many), each tile captioned with its source, label and why it is there."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .decide import Flags
from .domain import Domains
from .duplicates import Pair
from .photos import THUMB, Described

# Tiles per page and per row: single photos, pairs.
PER_PAGE = {1: 64, 2: 32}
COLUMNS = {1: 8, 2: 4}
_LINE = 12
_PAD = 6


@dataclass
class Tile:
    photos: list[int]  # one photo, or two side by side (a pair)
    caption: list[str]


def short_label(label: str) -> str:
    """`Tomato___Late_blight` → `Tomato Late_blight`, `Pepper,_bell___healthy` → `Pepper
    healthy`: short enough for a caption, the crop kept."""
    crop, _, disease = label.rpartition("___")
    return f"{crop.split(',')[0]} {disease}" if crop else label


def caption(d: Described, i: int) -> str:
    p = d.photos[i]
    return f"{d.sources[p.source].name[:12]} {short_label(p.label)}"


def write_sheets(
    d: Described, tiles: list[Tile], folder: Path, name: str, title: str
) -> list[Path]:
    """sheets/NAME.png (NAME-2.png, ... when the tiles fill more than one page)."""
    if not tiles:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    size = PER_PAGE[max(len(t.photos) for t in tiles)]
    pages = [tiles[k : k + size] for k in range(0, len(tiles), size)]
    paths = []
    for n, page in enumerate(pages, 1):
        path = folder / (f"{name}.png" if n == 1 else f"{name}-{n}.png")
        _page(d, page, f"{title} ({n}/{len(pages)})" if len(pages) > 1 else title).save(path)
        paths.append(path)
    return paths


def _page(d: Described, tiles: list[Tile], title: str) -> Image.Image:
    font = ImageFont.load_default()
    wide = max(len(t.photos) for t in tiles)
    lines = max(len(t.caption) for t in tiles)
    cell_w = wide * THUMB + _PAD
    cell_h = THUMB + lines * _LINE + _PAD
    columns = COLUMNS[wide]
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * cell_w + _PAD, rows * cell_h + 2 * _LINE), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((_PAD, 2), title, fill="black", font=font)
    chars = cell_w // 6
    for k, tile in enumerate(tiles):
        x = _PAD + (k % columns) * cell_w
        y = 2 * _LINE + (k // columns) * cell_h
        for j, i in enumerate(tile.photos):
            thumb = d.thumbs[i]
            if not thumb.any():  # unreadable: a grey tile
                thumb = np.full_like(thumb, 200)
            sheet.paste(Image.fromarray(thumb), (x + j * THUMB, y))
        for n, text in enumerate(tile.caption):
            draw.text((x, y + THUMB + n * _LINE), text[:chars], fill="black", font=font)
    return sheet


def category_tiles(
    d: Described,
    flags: Flags,
    dom: Domains,
    lab_refs: set[int],
    field_refs: set[int],
    limit: int,
) -> dict[str, tuple[str, list[Tile]]]:
    """{sheet name: (title, tiles)} of every category with something to show, at most `limit`
    tiles each (pairs most alike first; domain calls of each source spread over the scores)."""
    photos = d.photos
    references = lab_refs | field_refs

    def pair_tile(p: Pair) -> Tile:
        how = f"{p.inliers} pts" if p.inliers is not None else f"{p.phash_bits} bits"
        leak = f" leak:{p.leak}" if p.leak else ""
        return Tile(
            [p.a, p.b],
            [f"{p.kind} cos {p.cosine:.2f} {how}{leak}", caption(d, p.a), caption(d, p.b)],
        )

    def one(i: int, why: str) -> Tile:
        return Tile([i], [d.sources[photos[i].source].name[:16], short_label(photos[i].label), why])

    out: dict[str, tuple[str, list[Tile]]] = {}
    dup = sorted((p for p in flags.pairs if not p.conflict), key=lambda p: -p.cosine)
    out["duplicates"] = ("byte and near duplicates (pairs)", [pair_tile(p) for p in dup[:limit]])
    out["label_conflicts"] = (
        "label conflicts: one photo, two labels",
        [pair_tile(p) for p in flags.conflicts[:limit]],
    )
    for kind in ("mosaic", "collage"):
        members = getattr(flags, kind)
        tiles = [one(i, " ".join(f"{v:.1f}" for v in d.seams[i])) for i in members[:limit]]
        out[f"{kind}s"] = (f"{kind}s", tiles)
    out["tiny"] = (
        "tiny photos",
        [one(i, f"{photos[i].width}x{photos[i].height}") for i in flags.tiny][:limit],
    )
    out["label_issues"] = (
        "label issues (cleanlab): given label, then the one the other photos suggest",
        [
            one(x.index, f"-> {short_label(x.suggested)} {x.confidence:.2f}")
            for x in flags.labels.issues[:limit]
        ],
    )
    if dom.scores is not None:
        scores, field = dom.scores, dom.field_style()
        for domain in ("lab", "field"):
            tiles = []
            for k in range(len(d.sources)):
                if k in references:
                    continue  # the references' own calls: see reference_disagreements
                idx = [
                    i
                    for i, p in enumerate(photos)
                    if p.source == k
                    and i not in flags.excluded
                    and np.isfinite(scores[i])
                    and field[i] == (domain == "field")
                ]
                idx.sort(key=lambda i: scores[i])
                step = max(1, len(idx) // max(1, limit // max(1, len(d.sources))))
                tiles += [one(i, f"{domain} {scores[i]:.2f}") for i in idx[::step]]
            out[f"domain_{domain}"] = (
                f"{domain}-style photos of the sources that are no reference (score = field-style)",
                tiles[:limit],
            )
        wrong = [
            i
            for i, p in enumerate(photos)
            if p.source in references
            and i not in flags.excluded
            and np.isfinite(scores[i])
            and field[i] != (p.source in field_refs)
        ]
        out["reference_disagreements"] = (
            "reference photos the score puts in the other domain (out of fold)",
            [one(i, f"score {scores[i]:.2f}") for i in wrong[:limit]],
        )
    return {k: v for k, v in out.items() if v[1]}
