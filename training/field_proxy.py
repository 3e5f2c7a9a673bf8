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

    plantdx data field-proxy RUN_DIR PROXY_DIR [--split test] [--seed 0]
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from plantdx.data import SPLIT_FILENAME, Sample, load_split, scan_image_folder
from plantdx.exceptions import DatasetError, PreprocessError
from plantdx.preprocessing import open_image

from .compositing import Cutout, FloatImage, cut_leaf, fractal_noise, paste
from .field_grounds import field_background

# Which parts of the staging to apply; evaluate with a subset to see which one hurts most.
EFFECTS = ("background", "companions", "framing", "shadows", "lighting", "camera")
PROXY_MANIFEST = "proxy_manifest.json"


# --------------------------------------------------------------------------------------------
# Staging one frame


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
