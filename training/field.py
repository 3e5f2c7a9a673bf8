"""A field-photo proxy: held-out lab photos re-staged the way users photograph leaves.

PlantVillage photos show one leaf, centred, on a plain board under even light. Field and garden
photos show the leaf among soil, grass and other leaves, off-centre, with cast shadows, uneven
light, colour casts and phone-camera blur. No field photos of these classes can be fetched
here, so this module builds a stand-in from photos the model has not trained on: each leaf is
cut out of its plain background (`leaf_mask`) and composited into a frame with procedurally drawn
ground, companion leaves of the same class, shadows, a lighting gradient, a colour cast and
camera degradation. The result is an ImageFolder (folder names are the class names), so
`plantdx evaluate RUN/best.pt --data PROXY_DIR` works on it directly.

It is a proxy, not field data: the ground textures are procedural and every leaf still carries
its lab-photo look (focus, resolution, the shape the segmentation gives it). Use it to compare
recipes; do not quote it as field accuracy.

    python -m plantdx.training.field RUN_DIR PROXY_DIR [--split test] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from plantdx.data import SPLIT_FILENAME, Sample, load_split, scan_image_folder
from plantdx.exceptions import DatasetError, PreprocessError
from plantdx.preprocessing import open_image

# Which parts of the staging to apply; evaluate with a subset to see which one hurts most.
EFFECTS = ("background", "companions", "framing", "shadows", "lighting", "camera")
PROXY_MANIFEST = "proxy_manifest.json"

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


# --------------------------------------------------------------------------------------------
# Procedural ground


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


# --------------------------------------------------------------------------------------------
# Staging one frame


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


def _fit_scale(leaf: Cutout, target: float) -> float:
    """Scale that makes the cut-out's longer side `target` pixels."""
    return target / max(leaf.size)


def _drop_shadow(frame: FloatImage, alpha: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    size = frame.shape[0]
    dx, dy = (rng.uniform(0.01, 0.05) * size * rng.choice([-1, 1]) for _ in range(2))
    shift = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
    shadow = cv2.warpAffine(alpha, shift, (size, size))
    shadow = cv2.GaussianBlur(shadow, (0, 0), rng.uniform(2, 8))
    depth = rng.uniform(0.3, 0.6)
    frame *= (1 - depth * shadow * (1 - alpha))[..., None]
    return {"drop_shadow": [round(float(dx), 1), round(float(dy), 1), round(float(depth), 2)]}


def _dappled_shade(frame: FloatImage, rng: np.random.Generator) -> dict[str, Any]:
    """Shade of foliage above: soft-edged dark patches over leaf and ground alike."""
    size = frame.shape[0]
    n = fractal_noise(rng, size, octaves=3, base=2)
    cut = rng.uniform(0.35, 0.65)
    soft = rng.uniform(6, 14)
    shade = 1 / (1 + np.exp(-(n - cut) * soft * 2))
    depth = rng.uniform(0.35, 0.65)
    frame *= (1 - depth * shade)[..., None]
    return {"dappled": round(float(depth), 2)}


def _lighting(frame: FloatImage, rng: np.random.Generator) -> dict[str, Any]:
    size = frame.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    theta = rng.uniform(0, 2 * math.pi)
    ramp = xx * math.cos(theta) + yy * math.sin(theta)
    lo, hi = rng.uniform(0.55, 0.9), rng.uniform(1.05, 1.4)
    light = lo + (hi - lo) * (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    if rng.random() < 0.5:
        light *= 1 - rng.uniform(0.1, 0.35) * (xx**2 + yy**2) * 2  # vignette
    gains = np.asarray([rng.uniform(0.82, 1.18), 1.0, rng.uniform(0.82, 1.18)], np.float32)
    frame *= light[..., None] * gains
    gamma = rng.uniform(0.8, 1.25)
    np.clip(frame, 0, 255, out=frame)
    frame[:] = 255 * (frame / 255) ** gamma
    return {
        "light": [round(float(lo), 2), round(float(hi), 2)],
        "white_balance": [round(float(g), 2) for g in gains],
        "gamma": round(float(gamma), 2),
    }


def _camera(frame: FloatImage, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Focus, motion, sensor noise and JPEG: what a phone adds."""
    info: dict[str, Any] = {}
    roll = rng.random()
    if roll < 0.4:
        sigma = rng.uniform(0.5, 1.6)
        frame = cv2.GaussianBlur(frame, (0, 0), sigma)
        info["blur"] = round(float(sigma), 2)
    elif roll < 0.6:
        k = int(rng.integers(3, 8))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2] = 1 / k
        rot = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), rng.uniform(0, 180), 1)
        kernel = np.asarray(cv2.warpAffine(kernel, rot, (k, k)), np.float32)
        frame = cv2.filter2D(frame, -1, kernel / max(float(kernel.sum()), 1e-6))
        info["motion_blur"] = k
    noise = rng.uniform(1, 6)
    frame = frame + rng.normal(0, noise, frame.shape).astype(np.float32)
    info["noise"] = round(float(noise), 1)
    quality = int(rng.integers(55, 91))
    info["jpeg_quality"] = quality
    out = np.clip(frame, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB")), info


def stage(
    leaf: Cutout,
    companions: Sequence[Cutout],
    rng: np.random.Generator,
    *,
    size: int = 384,
    effects: Iterable[str] = EFFECTS,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One field-style frame around `leaf` → (uint8 size×size×3, what was done)."""
    fx = set(effects)
    unknown = fx - set(EFFECTS)
    if unknown:
        raise ValueError(f"unknown effect(s) {sorted(unknown)}; known: {', '.join(EFFECTS)}")
    info: dict[str, Any] = {}
    if "background" in fx:
        frame, info["ground"] = field_background(rng, size)
        frame = frame.astype(np.float32)
    else:
        # The lab board: the photo's own board colour, flat.
        frame = np.empty((size, size, 3), np.float32)
        frame[:] = leaf.board
    if "companions" in fx and companions and rng.random() < 0.8:
        k = int(rng.integers(1, min(3, len(companions)) + 1))
        for i in rng.permutation(len(companions))[:k]:
            other = companions[int(i)]
            paste(
                frame,
                other,
                center=(rng.uniform(-0.1, 1.1) * size, rng.uniform(-0.1, 1.1) * size),
                scale=_fit_scale(other, rng.uniform(0.35, 0.8) * size),
                angle=rng.uniform(0, 360),
                flip=bool(rng.random() < 0.5),
                blur=float(rng.choice([0.0, rng.uniform(1.5, 4.0)])),
                gain=rng.uniform(0.6, 1.0),
            )
        info["companions"] = k
    if "framing" in fx:
        extent = rng.uniform(0.45, 0.8)
        offset = (1 - extent) / 2 + 0.05
        center = (
            size * (0.5 + rng.uniform(-offset, offset)),
            size * (0.5 + rng.uniform(-offset, offset)),
        )
        angle, flip = rng.uniform(0, 360), bool(rng.random() < 0.5)
    else:
        extent, center, angle, flip = 0.9, (size / 2, size / 2), 0.0, False
    info["leaf"] = {
        "extent": round(float(extent), 2),
        "center": [round(float(c) / size, 3) for c in center],
        "angle": round(float(angle), 1),
    }
    alpha = paste(
        frame, leaf, center=center, scale=_fit_scale(leaf, extent * size), angle=angle, flip=flip
    )
    if "shadows" in fx:
        info.update(_drop_shadow(frame, alpha, rng))
        if rng.random() < 0.5:
            info.update(_dappled_shade(frame, rng))
    if "lighting" in fx:
        info.update(_lighting(frame, rng))
    if "camera" in fx:
        out, cam = _camera(frame, rng)
        info.update(cam)
    else:
        out = np.clip(frame, 0, 255).astype(np.uint8)
    return out, info


# --------------------------------------------------------------------------------------------
# The proxy dataset


@dataclass
class ProxyResult:
    out_dir: Path
    class_names: list[str]
    counts: dict[str, int]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _resolve_source(
    source: str | Path | Sequence[Sample], class_names: Sequence[str] | None, split: str
) -> tuple[list[Sample], list[str]]:
    if not isinstance(source, str | Path):
        if class_names is None:
            raise DatasetError("pass class_names with a list of samples")
        return list(source), list(class_names)
    path = Path(source)
    if path.is_dir() and (path / SPLIT_FILENAME).is_file():
        path = path / SPLIT_FILENAME
    if path.is_file():
        names, parts = load_split(path)
        if split not in parts:
            raise DatasetError(f"{path} has no split {split!r}")
        return parts[split], names
    if path.is_dir():
        folder = scan_image_folder(path, min_classes=1)
        return folder.samples, folder.class_names
    raise DatasetError(f"{path} is neither a run directory, a split.json nor an ImageFolder")


def _load_cutout(sample: Sample) -> Cutout:
    img = open_image(sample.path.read_bytes())
    return cut_leaf(np.asarray(img, dtype=np.uint8))


def make_field_proxy(
    source: str | Path | Sequence[Sample],
    out_dir: str | Path,
    seed: int = 0,
    *,
    class_names: Sequence[str] | None = None,
    split: str = "test",
    size: int = 384,
    per_photo: int = 1,
    effects: Iterable[str] = EFFECTS,
    quality: int = 92,
) -> ProxyResult:
    """Stage every held-out photo `per_photo` times; write OUT/<class>/<n>_<stem>.jpg.

    `source` is a run directory or split.json (its `split` photos are used), an ImageFolder,
    or samples with `class_names`. Output depends only on the photos, `seed` and the options.
    Companion leaves come from other photos of the same class in `source`, so no photo a model
    trained on slips in beside a held-out one.
    """
    samples, names = _resolve_source(source, class_names, split)
    if not samples:
        raise DatasetError("no photos to stage")
    if per_photo < 1:
        raise ValueError("per_photo must be at least 1")
    effects = tuple(effects)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cutouts: dict[int, Cutout] = {}
    skipped: list[tuple[str, str]] = []
    for i, s in enumerate(samples):
        try:
            cutouts[i] = _load_cutout(s)
        except (PreprocessError, OSError) as exc:
            skipped.append((str(s.path), str(exc)))
    by_class: dict[int, list[int]] = {}
    for i in cutouts:
        by_class.setdefault(samples[i].label, []).append(i)
    manifest: list[dict[str, Any]] = []
    counts = dict.fromkeys(names, 0)
    for i, leaf in cutouts.items():
        label = samples[i].label
        others = [cutouts[j] for j in by_class[label] if j != i] or [leaf]
        for k in range(per_photo):
            rng = np.random.default_rng([seed, i, k])
            pool = [others[int(j)] for j in rng.permutation(len(others))[:3]]
            pixels, info = stage(leaf, pool, rng, size=size, effects=effects)
            cls_dir = out / names[label]
            cls_dir.mkdir(exist_ok=True)
            name = f"{i:05d}_{k}_{samples[i].path.stem[-40:]}.jpg"
            Image.fromarray(pixels).save(cls_dir / name, quality=quality)
            counts[names[label]] += 1
            manifest.append(
                {"file": f"{names[label]}/{name}", "source": str(samples[i].path), **info}
            )
    doc = {"seed": seed, "size": size, "per_photo": per_photo, "effects": list(effects)}
    doc.update({"class_names": names, "skipped": skipped, "images": manifest})
    (out / PROXY_MANIFEST).write_text(json.dumps(doc, indent=1) + "\n")
    return ProxyResult(out, names, counts, skipped)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m plantdx.training.field", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "source", help="run directory, split.json or ImageFolder of held-out photos"
    )
    parser.add_argument("out", help="folder to write the proxy ImageFolder into")
    parser.add_argument("--split", default="test", help="split of a run to stage (default test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--per-photo", type=int, default=1)
    parser.add_argument(
        "--effects", default=",".join(EFFECTS), help=f"comma list from {','.join(EFFECTS)}"
    )
    args = parser.parse_args(argv)
    effects = [e for e in args.effects.split(",") if e]
    result = make_field_proxy(
        args.source,
        args.out,
        args.seed,
        split=args.split,
        size=args.size,
        per_photo=args.per_photo,
        effects=effects,
    )
    total = sum(result.counts.values())
    print(f"wrote {total} images in {len(result.class_names)} classes to {result.out_dir}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable photo(s)")


if __name__ == "__main__":
    main()
