"""Mosaics and collages: several photos pasted into one image.

A 2x2 mosaic of four photos (tomato-mixed-extra holds hundreds of four lab leaves) has a seam
along its centre row and its centre column, where one tile meets the next: the pixels jump
across the centre line far more than between any two neighbouring rows or columns near it. A
side-by-side collage has that seam on one centre line only. The seam strength of each half of
each centre line is the median, along it, of the jump across the line over the median jump
between the neighbouring lines (1 or less for a photo without a seam; a lab leaf whose midrib
runs down the middle reaches about 2 on one line).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from .config import AuditConfig

Kind = Literal["mosaic", "collage"]
# The neighbouring lines each side of the centre that give a seam its baseline.
_BAND = range(2, 8)
_FLOOR = 2.0  # grey levels, so that flat areas do not divide by ~0


def seam_strengths(pixels: np.ndarray) -> np.ndarray:
    """[row left half, row right half, column top half, column bottom half] of a square
    uint8 HWC image (the jump across the centre row/column over the jumps near it)."""
    x = pixels.astype(np.float32)
    n = x.shape[0]
    c = n // 2
    out = []
    for img in (x, x.transpose(1, 0, 2)):
        # Jump between line r-1 and line r, per position along the line.
        def jump(r: int, img: np.ndarray = img) -> np.ndarray:
            return np.abs(img[r] - img[r - 1]).mean(-1)

        seam = jump(c)
        near = np.stack([jump(c - d) for d in _BAND] + [jump(c + d) for d in _BAND])
        ratio = seam / (np.median(near, axis=0) + _FLOOR)
        out += [float(np.median(ratio[:c])), float(np.median(ratio[c:]))]
    return np.asarray(out, dtype=np.float32)


def line_strengths(seams: np.ndarray) -> tuple[float, float]:
    """(weaker, stronger) of the centre row and the centre column (each the mean of its
    halves)."""
    row, col = float(seams[:2].mean()), float(seams[2:].mean())
    return min(row, col), max(row, col)


def classify(seams: np.ndarray, cfg: AuditConfig) -> Kind | None:
    """mosaic: both centre lines are seams (or one clearly and the other somewhat); collage:
    one centre line is a strong seam; None otherwise."""
    weak, strong = line_strengths(seams)
    if weak >= cfg.mosaic_both or (strong >= cfg.mosaic_one and weak >= cfg.mosaic_other):
        return "mosaic"
    if strong >= cfg.collage_one:
        return "collage"
    return None
