"""Procedural leaf photos, so the demo can train and serve without downloading a dataset.

Each image is a randomly shaped, rotated and lit leaf on a lab-like background, with a lesion
pattern per class. The patterns differ in colour and texture strongly enough that a pretrained
CNN separates them after a short fine-tune, while shape, pose, tone and background vary per
sample so the classifier cannot key on a fixed template.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from plantdx.exceptions import DatasetError

from .synth_paint import (
    _background,
    _blend,
    _draw_leaf_body,
    _jitter,
    _noise,
    _painter,
    _ramp,
    _to_float,
)

CLASSES: tuple[str, ...] = (
    "Leaf___healthy",
    "Leaf___leaf_spot",
    "Leaf___rust",
    "Leaf___blight",
    "Leaf___mosaic",
    "Leaf___powdery_mildew",
)

CLASSES_FILENAME = "classes.txt"
MIN_SIZE = 32

# ---------------------------------------------------------------------------------------------
# public API


def draw_leaf(cls: str, rng: np.random.Generator, size: int = 256) -> Image.Image:
    """One synthetic photo of a leaf with the disease named by `cls`."""
    painter = _painter(cls)
    if size < MIN_SIZE:
        raise DatasetError(f"image size must be at least {MIN_SIZE} px, got {size}")
    img = _background(rng, size)
    info, leaf, _veins, stem = _draw_leaf_body(rng, size)
    leaf = np.clip(painter(rng, leaf, info), 0.0, 1.0)

    # A soft drop shadow under the leaf grounds it on the table.
    dy, dx = (max(1, round(d * size / 256)) for d in rng.uniform(1, 4, 2))
    shadow = np.zeros_like(info.mask)
    shadow[dy:, dx:] = info.mask[: size - dy, : size - dx]
    shadow_img = Image.fromarray((shadow * 255).astype(np.uint8))
    img = img * (1.0 - rng.uniform(0.15, 0.35) * _to_float(shadow_img, size * 0.015))[..., None]
    stem_color = _jitter(rng, (0.35, 0.42, 0.15), 0.05)
    img = _blend(img, stem_color, stem * (1.0 - info.mask))
    img = _blend(img, leaf, info.mask)

    # Lighting, exposure and sensor noise.
    light = _ramp(rng, size, rng.uniform(0.0, 0.25)) * np.float32(rng.uniform(0.88, 1.12))
    img = img * light[..., None] + _noise(rng, img.shape, rng.uniform(0.005, 0.02))
    out = Image.fromarray((np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8))
    blur = rng.uniform(0.0, 0.9) * size / 256
    return out.filter(ImageFilter.GaussianBlur(blur)) if blur > 0.15 else out


def _sample_rng(seed: int, cls: str, index: int) -> np.random.Generator:
    """Keyed on the class name, not its position, so subsets and reorders give the same files."""
    return np.random.default_rng([seed, zlib.crc32(cls.encode()), index])


def generate_dataset(
    out_dir: str | Path,
    *,
    per_class: int = 60,
    size: int = 256,
    seed: int = 0,
    classes: Sequence[str] = CLASSES,
    quality: int = 90,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Write an ImageFolder tree of JPEGs; same seed, same bytes."""
    names = list(classes)
    if not names:
        raise DatasetError("at least one class is needed")
    if len(set(names)) != len(names):
        raise DatasetError(f"duplicate class names in {names}")
    for name in names:
        _painter(name)
        if not name or name != name.strip() or any(c in name for c in "/\\\n"):
            raise DatasetError(f"class name {name!r} cannot be used as a folder name")
    if per_class < 1:
        raise DatasetError(f"per_class must be at least 1, got {per_class}")
    if seed < 0:
        raise DatasetError(f"seed must be non-negative, got {seed}")
    if size < MIN_SIZE:
        raise DatasetError(f"image size must be at least {MIN_SIZE} px, got {size}")
    if not 1 <= quality <= 100:
        raise DatasetError(f"JPEG quality must be between 1 and 100, got {quality}")

    root = Path(out_dir)
    total = per_class * len(names)
    done = 0
    counts: dict[str, int] = {}
    for name in names:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = draw_leaf(name, _sample_rng(seed, name, i), size)
            img.save(folder / f"{name}_{i:04d}.jpg", format="JPEG", quality=quality)
            done += 1
            if progress is not None:
                progress(done, total)
        counts[name] = per_class
    (root / CLASSES_FILENAME).write_text("".join(f"{n}\n" for n in sorted(names)))
    return counts
