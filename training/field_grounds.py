"""The field-photo proxy's procedural grounds: soil, grass, out-of-focus canopy, leaf litter."""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from .compositing import FloatImage, fractal_noise


def _hsv_color(h: float, s: float, v: float) -> np.ndarray:
    """Hue in degrees, saturation and value in [0, 1] → RGB float in [0, 255]."""
    c = v * s
    x = c * (1 - abs((h / 60) % 2 - 1))
    m = v - c
    sector = int(h // 60) % 6
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][sector]
    return (np.asarray(rgb, np.float32) + m) * 255


def _soil(rng: np.random.Generator, size: int) -> FloatImage:
    base = _hsv_color(rng.uniform(18, 38), rng.uniform(0.3, 0.65), rng.uniform(0.22, 0.5))
    n = fractal_noise(rng, size)[..., None]
    img = base * (0.6 + 0.8 * n)
    # Clods and pebbles: small ellipses, lighter or darker than the soil.
    for _ in range(int(rng.integers(40, 160))):
        c = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        axes = (int(rng.integers(1, size // 40 + 2)), int(rng.integers(1, size // 40 + 2)))
        shade = base * rng.uniform(0.5, 1.6)
        cv2.ellipse(img, c, axes, float(rng.uniform(0, 180)), 0, 360, shade.tolist(), -1)
    return cv2.GaussianBlur(img, (0, 0), 0.8)


def _grass(rng: np.random.Generator, size: int) -> FloatImage:
    img = np.empty((size, size, 3), np.float32)
    img[:] = _hsv_color(rng.uniform(70, 110), rng.uniform(0.4, 0.8), rng.uniform(0.12, 0.3))
    img *= (0.7 + 0.6 * fractal_noise(rng, size))[..., None]
    lean = rng.uniform(-0.6, 0.6)
    for _ in range(int(rng.integers(150, 400))):
        x, y = rng.uniform(0, size), rng.uniform(0, size)
        length = rng.uniform(0.05, 0.3) * size
        angle = math.pi / 2 + lean + rng.normal(0, 0.35)
        end = (int(x + length * math.cos(angle)), int(y - length * math.sin(angle)))
        color = _hsv_color(rng.uniform(55, 115), rng.uniform(0.35, 0.85), rng.uniform(0.2, 0.75))
        cv2.line(img, (int(x), int(y)), end, color.tolist(), int(rng.integers(1, 4)), cv2.LINE_AA)
    return cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 2.0))


def _canopy(rng: np.random.Generator, size: int) -> FloatImage:
    """Out-of-focus foliage with patches of sky or light: big soft blobs, heavily blurred."""
    img = np.empty((size, size, 3), np.float32)
    img[:] = _hsv_color(rng.uniform(75, 120), rng.uniform(0.4, 0.8), rng.uniform(0.1, 0.3))
    for _ in range(int(rng.integers(25, 70))):
        c = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        axes = (int(rng.uniform(0.04, 0.16) * size), int(rng.uniform(0.02, 0.08) * size))
        if rng.random() < 0.12:
            color = _hsv_color(rng.uniform(190, 220), rng.uniform(0.0, 0.35), rng.uniform(0.7, 1.0))
        else:
            color = _hsv_color(rng.uniform(55, 120), rng.uniform(0.3, 0.9), rng.uniform(0.15, 0.7))
        cv2.ellipse(img, c, axes, float(rng.uniform(0, 180)), 0, 360, color.tolist(), -1)
    return cv2.GaussianBlur(img, (0, 0), rng.uniform(4, 10))


def _litter(rng: np.random.Generator, size: int) -> FloatImage:
    """Mulch and dead leaves: overlapping brown, tan and dark polygons."""
    img = np.empty((size, size, 3), np.float32)
    img[:] = _hsv_color(rng.uniform(15, 40), rng.uniform(0.3, 0.6), rng.uniform(0.15, 0.35))
    for _ in range(int(rng.integers(60, 180))):
        cx, cy = rng.uniform(0, size), rng.uniform(0, size)
        r = rng.uniform(0.02, 0.09) * size
        k = int(rng.integers(4, 8))
        angles = np.sort(rng.uniform(0, 2 * math.pi, k))
        radii = r * rng.uniform(0.4, 1.0, k)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
        color = _hsv_color(rng.uniform(15, 45), rng.uniform(0.2, 0.55), rng.uniform(0.12, 0.5))
        cv2.fillPoly(img, [pts.astype(np.int32)], color.tolist(), cv2.LINE_AA)
    img *= (0.75 + 0.5 * fractal_noise(rng, size))[..., None]
    return cv2.GaussianBlur(img, (0, 0), 0.7)


GROUNDS: dict[str, Callable[[np.random.Generator, int], FloatImage]] = {
    "soil": _soil,
    "grass": _grass,
    "canopy": _canopy,
    "litter": _litter,
}


def field_background(rng: np.random.Generator, size: int) -> tuple[FloatImage, str]:
    """One of the grounds, sometimes two blended along a soft random edge."""
    names = sorted(GROUNDS)
    first = names[int(rng.integers(len(names)))]
    img = GROUNDS[first](rng, size)
    if rng.random() < 0.35:
        second = names[int(rng.integers(len(names)))]
        blend = fractal_noise(rng, size, octaves=2, base=2)[..., None]
        blend = np.clip((blend - 0.5) * 6 + 0.5, 0, 1)
        img = img * blend + GROUNDS[second](rng, size) * (1 - blend)
        first = f"{first}+{second}"
    return np.clip(img, 0, 255), first
