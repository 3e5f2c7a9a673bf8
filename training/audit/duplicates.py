"""Byte and near duplicates, within and across sources.

Byte duplicates share a SHA-256. Near-duplicate candidates are pairs whose perceptual hashes
(imagehash's pHash of the decoded photo) are close, and each photo's few most similar photos by
ImageNet-feature cosine (a cropped copy keeps its features but not its hash); the keypoint
check (`matching.py`) then keeps the pairs that are the same photo or the same leaf shot again.
A pair is leakage when its two photos are in two sources, or in two splits of the split
training makes; a label conflict when they carry two labels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import AuditConfig
from .matching import inliers
from .photos import Described

_BLOCK = 512  # rows of the similarity matrices at a time


@dataclass
class Pair:
    a: int
    b: int
    kind: str  # "byte" | "near"
    cosine: float
    phash_bits: int
    inliers: int | None  # keypoint matches on one transform (None: not needed)
    leak: str | None = None  # "sources" | "splits" | None
    conflict: bool = False


def candidate_pairs(d: Described, cfg: AuditConfig) -> dict[tuple[int, int], tuple[float, int]]:
    """{(i, j): (cosine, hash bits apart)} with i < j, over readable photos."""
    idx = np.flatnonzero(d.readable)
    feats = d.features[idx]
    signs = d.phash[idx].astype(np.float32) * 2 - 1
    bits = signs.shape[1]
    k = min(cfg.neighbours, max(len(idx) - 1, 0))
    out: dict[tuple[int, int], tuple[float, int]] = {}
    for start in range(0, len(idx), _BLOCK):
        rows = slice(start, start + _BLOCK)
        cos = feats[rows] @ feats.T
        ham = np.rint((bits - signs[rows] @ signs.T) / 2).astype(np.int32)
        local = np.arange(cos.shape[0])
        cos[local, local + start] = -np.inf
        ham[local, local + start] = bits + 1
        hits = set(zip(*np.nonzero(ham <= cfg.max_phash_bits), strict=True))
        if k:
            near = np.argpartition(-cos, k - 1, axis=1)[:, :k]
            hits |= {(r, int(c)) for r, c in zip(local.repeat(k), near.ravel(), strict=True)}
        for r, c in hits:
            if cos[r, c] < cfg.min_cosine and ham[r, c] > cfg.max_phash_bits:
                continue
            i, j = int(idx[start + r]), int(idx[c])
            out[(min(i, j), max(i, j))] = (float(cos[r, c]), int(ham[r, c]))
    return out


def find_pairs(
    d: Described,
    cfg: AuditConfig,
    candidates: dict[tuple[int, int], tuple[float, int]],
    *,
    split_of: Mapping[Path, str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Pair]:
    """The duplicate pairs among byte-identical photos and the candidates."""
    photos = d.photos
    by_hash: dict[str, list[int]] = {}
    for i in np.flatnonzero(d.readable):
        by_hash.setdefault(photos[i].sha256, []).append(int(i))
    same_bytes = {
        (a, b) for group in by_hash.values() for x, a in enumerate(group) for b in group[x + 1 :]
    }
    pairs: list[Pair] = []
    for a, b in sorted(same_bytes):
        cos, bits = candidates.get((a, b), (1.0, 0))
        pairs.append(Pair(a, b, "byte", cos, bits, None))
    to_check = []
    for (a, b), (cos, bits) in sorted(candidates.items()):
        if (a, b) in same_bytes:
            continue
        if bits <= cfg.copy_phash_bits and cos >= cfg.copy_cosine:
            pairs.append(Pair(a, b, "near", cos, bits, None))
        else:
            to_check.append((a, b, cos, bits))

    def check(item: tuple[int, int, float, int]) -> Pair | None:
        a, b, cos, bits = item
        n = inliers(d.points[a], d.points[b])
        fewer = min(len(d.points[a][0]), len(d.points[b][0]))
        if progress:
            progress(1)
        if n >= cfg.min_inliers or (n >= cfg.few_inliers and n >= cfg.inlier_share * fewer):
            return Pair(a, b, "near", cos, bits, n)
        return None

    if progress:
        progress(len(candidates) - len(to_check))
    # OpenCV releases the GIL: two threads check twice as many pairs on two cores.
    with ThreadPoolExecutor(max_workers=2) as pool:
        pairs += [p for p in pool.map(check, to_check) if p is not None]
    pairs.sort(key=lambda p: (p.a, p.b))
    for p in pairs:
        pa, pb = photos[p.a], photos[p.b]
        p.conflict = pa.label != pb.label
        if pa.source != pb.source:
            p.leak = "sources"
        elif split_of is not None:
            sa, sb = split_of.get(pa.path), split_of.get(pb.path)
            p.leak = "splits" if sa and sb and sa != sb else None
    return pairs


def groups(pairs: list[Pair], n: int) -> list[list[int]]:
    """Photos joined by duplicate pairs (connected components of two or more)."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for p in pairs:
        parent[root(p.a)] = root(p.b)
    out: dict[int, list[int]] = {}
    for p in pairs:
        for i in (p.a, p.b):
            members = out.setdefault(root(i), [])
            if i not in members:
                members.append(i)
    return [sorted(g) for g in out.values()]
