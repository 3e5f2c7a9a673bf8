"""Cutting a leaf off its lab board and compositing it onto another ground.

PlantVillage photos show one leaf on a plain board. `leaf_mask` segments the leaf, `cut_leaf`
crops it with a soft alpha edge, and `paste` warps a cut-out into a frame; `fractal_noise` is
the smooth noise the procedural grounds are drawn from. Train-time augmentation (`augment.py`)
and the field-photo proxy (`field_proxy.py`) both build on these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

FloatImage = np.ndarray  # H×W×3 float32 in [0, 255]


# --------------------------------------------------------------------------------------------
# Leaf segmentation on PlantVillage's plain backgrounds


def leaf_mask(rgb: np.ndarray) -> np.ndarray:
    """uint8 H×W×3 photo of a leaf on a plain board → uint8 mask (255 = leaf).

    PlantVillage boards are flat grey, beige, blue or black. The board's colour is taken from
    the photo's border; a pixel is leaf when its chroma (Cr, Cb) is far from the board's,
    with the cut chosen per photo by Otsu (clamped, so an all-leaf or all-board photo cannot
    push it anywhere silly). Chroma rather than brightness, so the leaf's own cast shadow (a
    darker, greyer board) stays board. The largest component is the leaf; filling its holes
    brings back lesions inside it whose colour happens to match the board.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"leaf_mask needs a uint8 H×W×3 image, got {rgb.dtype} {rgb.shape}")
    ycc = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
    side = max(rgb.shape[:2])
    ring = max(2, side // 32)
    border = np.concatenate(
        [
            ycc[:ring].reshape(-1, 3),
            ycc[-ring:].reshape(-1, 3),
            ycc[:, :ring].reshape(-1, 3),
            ycc[:, -ring:].reshape(-1, 3),
        ]
    )
    board = np.median(border[:, 1:], axis=0).astype(np.int16)
    chroma = np.abs(ycc[..., 1:].astype(np.int16) - board).sum(-1)
    chroma8 = np.clip(chroma * 4, 0, 255).astype(np.uint8)
    cut, _ = cv2.threshold(chroma8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    cut = float(np.clip(cut / 4, 4, 24))
    mask = ((chroma > cut) & (ycc[..., 0] > 20)).astype(np.uint8) * 255
    small = max(3, side // 50) | 1
    mask = cv2.morphologyEx(
        mask, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (small, small))
    )
    large = max(5, side // 28) | 1
    mask = cv2.morphologyEx(
        mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (large, large))
    )
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return mask
    keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    mask = np.where(labels == keep, 255, 0).astype(np.uint8)
    return _fill_holes(mask)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = mask
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), (255,))
    holes = cv2.bitwise_not(flood)[1:-1, 1:-1]
    return mask | holes


@dataclass
class Cutout:
    """A leaf cropped to its mask's bounding box, with a soft alpha edge."""

    rgb: np.ndarray  # h×w×3 float32
    alpha: np.ndarray  # h×w float32 in [0, 1]
    board: np.ndarray = field(default_factory=lambda: np.full(3, 128, np.float32))

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[0]


def cut_leaf(rgb: np.ndarray, mask: np.ndarray | None = None) -> Cutout:
    """The leaf of a lab photo as an RGB + alpha cut-out (feathered by ~1 px)."""
    mask = leaf_mask(rgb) if mask is None else mask
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        # Nothing segmented: keep the whole photo rather than invent a leaf.
        ys, xs = np.array([0, rgb.shape[0] - 1]), np.array([0, rgb.shape[1] - 1])
        mask = np.full(rgb.shape[:2], 255, np.uint8)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    soft = cv2.erode(mask, np.ones((3, 3), np.uint8))
    alpha = cv2.GaussianBlur(soft.astype(np.float32) / 255.0, (3, 3), 0)
    outside = rgb[mask == 0]
    board = np.median(outside, axis=0) if len(outside) else np.full(3, 128.0)
    return Cutout(
        rgb[y0:y1, x0:x1].astype(np.float32), alpha[y0:y1, x0:x1], board.astype(np.float32)
    )


def fractal_noise(
    rng: np.random.Generator, size: int, octaves: int = 5, base: int = 3
) -> np.ndarray:
    """Smooth value noise in [0, 1]: random grids upsampled bicubically, summed by octave."""
    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = base * 2**o
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        out += amp * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.55
    out /= total
    lo, hi = np.percentile(out, (1, 99))
    return np.clip((out - lo) / max(hi - lo, 1e-6), 0, 1)


def paste(
    frame: FloatImage,
    leaf: Cutout,
    *,
    center: tuple[float, float],
    scale: float,
    angle: float,
    flip: bool = False,
    blur: float = 0.0,
    gain: float = 1.0,
) -> np.ndarray:
    """Warp a cut-out into `frame` in place; returns its alpha in frame coordinates."""
    w, h = leaf.size
    rgb, alpha = leaf.rgb, leaf.alpha
    if flip:
        rgb, alpha = rgb[:, ::-1], alpha[:, ::-1]
    m = np.asarray(cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale), np.float64)
    m[:, 2] += np.asarray(center) - np.asarray([w / 2, h / 2])
    size = (frame.shape[1], frame.shape[0])
    warped = cv2.warpAffine(np.ascontiguousarray(rgb), m, size, flags=cv2.INTER_AREA)
    a = cv2.warpAffine(np.ascontiguousarray(alpha), m, size, flags=cv2.INTER_LINEAR)
    if blur > 0:
        warped = cv2.GaussianBlur(warped, (0, 0), blur)
        a = cv2.GaussianBlur(a, (0, 0), blur)
    a3 = a[..., None]
    frame *= 1 - a3
    frame += warped * gain * a3
    return a
