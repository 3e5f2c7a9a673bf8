"""Drawing one synthetic leaf photo: the background, the leaf's shape and tone, and each
class's lesion pattern (`plantdx.synth` turns them into photos and datasets)."""

from __future__ import annotations

import colorsys
import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from plantdx.exceptions import DatasetError

FloatArray = np.ndarray  # float32, values in [0, 1]
RGB = tuple[float, float, float]


@dataclass
class _Leaf:
    """What the lesion painters need: where the leaf is, and its outline for edge lesions."""

    mask: FloatArray  # (H, W) soft coverage in [0, 1]
    outline: np.ndarray  # (N, 2) polygon in pixel coordinates
    center: np.ndarray  # (2,) leaf centre, pixels
    length: float  # tip-to-base length, pixels
    inside: np.ndarray  # (M, 2) x, y of pixels well inside the leaf


# ---------------------------------------------------------------------------------------------
# small helpers


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> FloatArray:
    """Value noise: a coarse random grid upsampled bicubically, rescaled to [0, 1]."""
    cells = max(2, cells)
    grid = Image.fromarray(rng.random((cells, cells), dtype=np.float32))  # mode F
    arr = np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / max(hi - lo, 1e-6)


def _new_mask(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("L", (size, size), 0)
    return img, ImageDraw.Draw(img)


def _to_float(img: Image.Image, blur: float = 0.0) -> FloatArray:
    if blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    return np.asarray(img, dtype=np.float32) / 255.0


def _blend(base: FloatArray, color: RGB | FloatArray, alpha: FloatArray) -> FloatArray:
    """Paint `color` over `base` with per-pixel `alpha` (H, W)."""
    return base + (np.asarray(color, dtype=np.float32) - base) * alpha[..., None]


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> FloatArray:
    """Gaussian noise in float32: several times faster than `rng.normal` on whole images."""
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[FloatArray, FloatArray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    return xx, yy


def _ramp(rng: np.random.Generator, size: int, strength: float) -> FloatArray:
    """1 + a linear gradient in a random direction: uneven light across the frame."""
    xx, yy = _grid(size)
    ang = rng.uniform(0, 2 * np.pi)
    return 1.0 + np.float32(strength) * (
        xx * np.float32(np.cos(ang)) + yy * np.float32(np.sin(ang))
    )


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return (r, g, b)


def _jitter(rng: np.random.Generator, color: RGB, amount: float = 0.06) -> RGB:
    c = np.clip(np.asarray(color) + rng.normal(0.0, amount, 3), 0.0, 1.0)
    return (float(c[0]), float(c[1]), float(c[2]))


def _ellipse(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill: int = 255) -> None:
    draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)


def _blob(rng: np.random.Generator, x: float, y: float, r: float, rough: float) -> list[float]:
    """An irregular closed outline around (x, y): radius modulated by a few random harmonics."""
    t = np.linspace(0.0, 2.0 * np.pi, 40, endpoint=False)
    rad = np.ones_like(t)
    for k in (1, 2, 3, 4):
        rad += rough / k * rng.normal() * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    rad = r * np.clip(rad * (1.0 + rng.normal(0, 0.04 * rough, t.shape)), 0.4, 1.7)
    pts = np.stack([x + rad * np.cos(t), y + rad * np.sin(t)], axis=1)
    return pts.ravel().tolist()


def _scaled(poly: list[float], x: float, y: float, s: float) -> list[float]:
    p = np.asarray(poly).reshape(-1, 2)
    return ((p - (x, y)) * s + (x, y)).ravel().tolist()


def _pick_inside(rng: np.random.Generator, leaf: _Leaf, n: int) -> np.ndarray:
    idx = rng.integers(0, len(leaf.inside), n)
    return leaf.inside[idx].astype(np.float32) + rng.uniform(-0.5, 0.5, (n, 2))


# ---------------------------------------------------------------------------------------------
# background and leaf


def _background(rng: np.random.Generator, size: int) -> FloatArray:
    """Grey or beige like PlantVillage's lab photos, sometimes a gradient or a paper texture."""
    if rng.random() < 0.55:
        v = rng.uniform(0.45, 0.85)
        base = np.array([v, v, v]) + rng.normal(0, 0.015, 3)
    else:
        base = np.array(
            _hsv(rng.uniform(0.07, 0.13), rng.uniform(0.08, 0.3), rng.uniform(0.5, 0.9))
        )
    img = np.broadcast_to(base.astype(np.float32), (size, size, 3)).copy()
    kind = rng.random()
    if kind < 0.35:
        img *= _ramp(rng, size, rng.uniform(0.15, 0.45))[..., None]
    elif kind < 0.65:
        tex = _smooth_noise(rng, size, int(rng.integers(3, 9))) - 0.5
        img *= (1.0 + rng.uniform(0.06, 0.18) * tex)[..., None]
        img += _noise(rng, (size, size, 1), rng.uniform(0.01, 0.03))
    return np.clip(img, 0.0, 1.0)


def _leaf_geometry(rng: np.random.Generator, size: int) -> dict[str, np.ndarray | float]:
    """Outline, midrib and veins in pixel coordinates for one random leaf."""
    half = size * rng.uniform(0.33, 0.47)  # half of the tip-to-base length
    width = half * rng.uniform(0.38, 0.62)
    a = rng.uniform(0.7, 1.3)  # larger: more pointed tip
    b = rng.uniform(0.35, 0.75)  # smaller: rounder base
    bend = rng.uniform(-0.15, 0.15)
    asym = rng.uniform(0.9, 1.1)

    u = -np.cos(np.linspace(0.0, np.pi, 90))  # base (-1) to tip (+1), dense at the ends
    peak = (b - a) / (a + b)
    norm = (1 - peak) ** a * (1 + peak) ** b
    w = width * (1 - u) ** a * (1 + u) ** b / norm
    wobble = 1.0 + 0.04 * np.interp(u, np.linspace(-1, 1, 7), rng.normal(0, 1, 7))
    teeth = 1.0 + rng.uniform(0.0, 0.035) * np.abs(np.sin(u * rng.uniform(20, 45)))
    w = w * wobble * teeth

    def midrib_y(x: np.ndarray) -> np.ndarray:
        return bend * half * x**2

    top = np.stack([u * half, midrib_y(u) + w * asym], axis=1)
    bottom = np.stack([u * half, midrib_y(u) - w / asym], axis=1)[::-1]
    outline = np.concatenate([top, bottom])

    stem_len = half * rng.uniform(0.12, 0.3)
    xs = np.linspace(-1.0, 0.93, 12)
    midrib = np.stack([xs * half, midrib_y(xs)], axis=1)
    stem = np.array([[-half - stem_len, midrib_y(np.array(-1.0)) - bend * stem_len], [-half, 0.0]])

    veins = []
    n_veins = int(rng.integers(4, 8))
    for pos in np.linspace(-0.7, 0.65, n_veins) + rng.normal(0, 0.04, n_veins):
        for side in (1.0, -1.0):
            end = min(pos + rng.uniform(0.25, 0.4), 0.97)
            w_end = float(np.interp(end, u, w)) * (asym if side > 0 else 1 / asym)
            mid = (pos + end) / 2
            w_mid = float(np.interp(mid, u, w)) * (asym if side > 0 else 1 / asym)
            seg = np.array(
                [
                    [pos * half, midrib_y(np.array(pos))],
                    [mid * half, midrib_y(np.array(mid)) + side * 0.5 * w_mid],
                    [end * half, midrib_y(np.array(end)) + side * 0.88 * w_end],
                ]
            )
            veins.append(seg)

    ang = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    center = size / 2 + rng.uniform(-0.07, 0.07, 2) * size

    def place(p: np.ndarray) -> np.ndarray:
        return p @ rot.T + center

    return {
        "outline": place(outline),
        "midrib": place(midrib),
        "stem": place(stem),
        "veins": np.stack([place(v) for v in veins]),
        "center": center,
        "length": 2 * half,
        "width": width,
    }


def _draw_leaf_body(
    rng: np.random.Generator, size: int
) -> tuple[_Leaf, FloatArray, FloatArray, FloatArray]:
    """Leaf colour layer, its soft mask, vein mask and stem mask, before any lesion."""
    geo = _leaf_geometry(rng, size)
    outline = np.asarray(geo["outline"])

    # Drawn at twice the size and reduced: smooth, anti-aliased edges.
    big, draw = _new_mask(size * 2)
    draw.polygon((outline * 2).ravel().tolist(), fill=255)
    mask = _to_float(big.reduce(2), blur=0.4)

    veins_img, vdraw = _new_mask(size)
    vw = max(1, round(size * 0.006))
    vdraw.line(np.asarray(geo["midrib"]).ravel().tolist(), fill=255, width=max(2, 2 * vw))
    for seg in np.asarray(geo["veins"]):
        vdraw.line(seg.ravel().tolist(), fill=170, width=vw, joint="curve")
    veins = _to_float(veins_img, blur=0.6) * mask

    stem_img, sdraw = _new_mask(size)
    sdraw.line(
        np.asarray(geo["stem"]).ravel().tolist(), fill=255, width=max(2, round(size * 0.012))
    )
    stem = _to_float(stem_img, blur=0.5)

    hue = rng.uniform(0.22, 0.34)
    sat = rng.uniform(0.5, 0.8)
    val = rng.uniform(0.35, 0.62)
    base = np.asarray(_hsv(hue, sat, val), dtype=np.float32)
    tone = 1.0 + 0.22 * (_smooth_noise(rng, size, int(rng.integers(4, 8))) - 0.5)
    fine = 1.0 + _noise(rng, (size, size), 0.025)
    shade = _ramp(rng, size, rng.uniform(0.1, 0.35))
    leaf = base * (tone * fine * shade)[..., None]
    vein_color = _hsv(hue - 0.02, sat * 0.55, min(val * 1.45, 0.95))
    leaf = _blend(leaf, vein_color, 0.65 * veins)

    inside = np.argwhere(_to_float(big.reduce(2)) > 0.99)[:, ::-1]  # (x, y)
    if len(inside) == 0:  # degenerate leaf: fall back to its centre
        inside = np.asarray([np.round(geo["center"])], dtype=np.int64)
    info = _Leaf(
        mask=mask,
        outline=outline,
        center=np.asarray(geo["center"]),
        length=float(geo["length"]),
        inside=inside,
    )
    return info, np.clip(leaf, 0.0, 1.0), veins, stem


# ---------------------------------------------------------------------------------------------
# lesion painters: each takes the leaf colour layer and returns it with the disease painted on


def _healthy(rng: np.random.Generator, leaf: FloatArray, info: _Leaf) -> FloatArray:
    return leaf


def _leaf_spot(rng: np.random.Generator, leaf: FloatArray, info: _Leaf) -> FloatArray:
    """Many small round dark-brown spots, each inside a yellow chlorotic halo."""
    size = leaf.shape[0]
    halo_img, halo = _new_mask(size)
    core_img, core = _new_mask(size)
    centre_img, centre = _new_mask(size)
    n = int(rng.integers(18, 45))
    for (x, y), r in zip(
        _pick_inside(rng, info, n), info.length * rng.uniform(0.012, 0.03, n), strict=True
    ):
        _ellipse(halo, x, y, r * rng.uniform(1.8, 2.4))
        _ellipse(core, x, y, r)
        if rng.random() < 0.5:
            _ellipse(centre, x, y, r * 0.45)
    leaf = _blend(leaf, _jitter(rng, (0.86, 0.8, 0.22), 0.04), 0.8 * _to_float(halo_img, 1.5))
    leaf = _blend(leaf, _jitter(rng, (0.3, 0.17, 0.07), 0.03), _to_float(core_img, 0.7))
    return _blend(leaf, _jitter(rng, (0.55, 0.45, 0.35), 0.04), 0.7 * _to_float(centre_img, 0.6))


def _rust(rng: np.random.Generator, leaf: FloatArray, info: _Leaf) -> FloatArray:
    """Clusters of tiny raised orange pustules on a faintly yellowed leaf."""
    size = leaf.shape[0]
    chl_img, chl = _new_mask(size)
    pus_img, pus = _new_mask(size)
    dot_img, dot = _new_mask(size)
    centres = _pick_inside(rng, info, int(rng.integers(3, 8)))
    points = [
        rng.normal(c, info.length * rng.uniform(0.03, 0.07), (int(rng.integers(12, 35)), 2))
        for c in centres
    ]
    points.append(_pick_inside(rng, info, int(rng.integers(10, 30))))
    for c in centres:
        _ellipse(chl, c[0], c[1], info.length * rng.uniform(0.08, 0.14))
    for x, y in np.concatenate(points):
        r = info.length * rng.uniform(0.006, 0.014)
        _ellipse(pus, x, y, r)
        _ellipse(dot, x - r * 0.2, y - r * 0.2, r * 0.45)
    leaf = _blend(leaf, _jitter(rng, (0.7, 0.72, 0.25), 0.04), 0.45 * _to_float(chl_img, 6.0))
    leaf = _blend(leaf, _jitter(rng, (0.82, 0.4, 0.08), 0.04), _to_float(pus_img, 0.6))
    return _blend(leaf, _jitter(rng, (0.95, 0.6, 0.2), 0.04), 0.7 * _to_float(dot_img, 0.5))


def _blight(rng: np.random.Generator, leaf: FloatArray, info: _Leaf) -> FloatArray:
    """A few large irregular necrotic patches, mostly from the margin, with concentric rings."""
    size = leaf.shape[0]
    margin_img, margin = _new_mask(size)
    necro_img, necro = _new_mask(size)
    n = int(rng.integers(1, 4))
    for _ in range(n):
        if rng.random() < 0.75:  # from the edge, pulled slightly inwards
            x, y = info.outline[rng.integers(0, len(info.outline))]
            x, y = np.array([x, y]) + (info.center - (x, y)) * rng.uniform(0.05, 0.2)
        else:
            x, y = _pick_inside(rng, info, 1)[0]
        r = info.length * rng.uniform(0.16, 0.3) / np.sqrt(n)
        poly = _blob(rng, float(x), float(y), float(r), rough=0.35)
        margin.polygon(_scaled(poly, x, y, rng.uniform(1.15, 1.35)), fill=255)
        necro.polygon(poly, fill=255)
        rings = int(rng.integers(3, 6))
        for k in range(1, rings):
            # Each ring its own slightly irregular, off-centre outline: grown in flushes.
            s = 1.0 - k / (rings + 0.3)
            cx, cy = np.array([x, y]) + rng.normal(0, r * 0.04, 2)
            ring_poly = _blob(rng, float(cx), float(cy), float(r * s), rough=0.2)
            necro.polygon(ring_poly, fill=255 if k % 2 == 0 else 150)
    leaf = _blend(leaf, _jitter(rng, (0.72, 0.66, 0.2), 0.05), 0.7 * _to_float(margin_img, 3.0))
    n_arr = _to_float(necro_img, 1.0)
    dark = np.asarray(_jitter(rng, (0.16, 0.1, 0.05), 0.03), dtype=np.float32)
    mid = np.asarray(_jitter(rng, (0.42, 0.28, 0.14), 0.025), dtype=np.float32)
    ring = np.clip((n_arr - 0.59) / 0.41, 0.0, 1.0)[..., None]  # 1 on dark rings, 0 on light
    colour = mid * (1 - ring) + dark * ring
    grain = 1.0 + _noise(rng, (size, size, 1), 0.06)
    return _blend(leaf, colour * grain, np.clip(n_arr / 0.59, 0.0, 1.0))


def _mosaic(rng: np.random.Generator, leaf: FloatArray, info: _Leaf) -> FloatArray:
    """Mottled patchwork of light yellow-green and dark green areas."""
    size = leaf.shape[0]
    cells = max(4, int(size / info.length * rng.uniform(8, 13)))
    field = 0.6 * _smooth_noise(rng, size, cells) + 0.4 * _smooth_noise(rng, size, cells * 2)
    light = np.clip((field - 0.52) * 6.0 + 0.5, 0.0, 1.0)
    dark = np.clip((0.38 - field) * 6.0, 0.0, 1.0)
    leaf = _blend(leaf, _jitter(rng, (0.74, 0.82, 0.3), 0.04), 0.75 * light)
    return _blend(leaf, _jitter(rng, (0.07, 0.27, 0.05), 0.02), 0.6 * dark)


def _powdery_mildew(rng: np.random.Generator, leaf: FloatArray, info: _Leaf) -> FloatArray:
    """Diffuse whitish blotches with a grainy, powdery texture."""
    size = leaf.shape[0]
    blot_img, blot = _new_mask(size)
    for cx, cy in _pick_inside(rng, info, int(rng.integers(4, 10))):
        spread = info.length * rng.uniform(0.04, 0.1)
        for x, y in rng.normal((cx, cy), spread, (int(rng.integers(6, 16)), 2)):
            _ellipse(blot, x, y, info.length * rng.uniform(0.02, 0.05))
    powder = _to_float(blot_img, size * 0.012)
    grain = np.clip(0.6 + 0.5 * rng.random((size, size), dtype=np.float32), 0.0, 1.0)
    fuzz = 0.6 + 0.4 * _smooth_noise(rng, size, int(size / 6))
    white = _jitter(rng, (0.93, 0.94, 0.9), 0.02)
    return _blend(leaf, white, np.clip(0.92 * powder * grain * fuzz, 0.0, 1.0))


_PAINTERS: dict[str, Callable[[np.random.Generator, FloatArray, _Leaf], FloatArray]] = {
    "healthy": _healthy,
    "leaf_spot": _leaf_spot,
    "rust": _rust,
    "blight": _blight,
    "mosaic": _mosaic,
    "powdery_mildew": _powdery_mildew,
}


def _painter(cls: str) -> Callable[[np.random.Generator, FloatArray, _Leaf], FloatArray]:
    """The disease is the part after '___', so 'Tomato___rust' works as well as 'Leaf___rust'."""
    key = cls.rpartition("___")[2].lower()
    if key not in _PAINTERS:
        known = ", ".join(sorted(_PAINTERS))
        raise DatasetError(
            f"unknown synthetic class {cls!r}: the part after '___' must be one of {known}"
        )
    return _PAINTERS[key]
