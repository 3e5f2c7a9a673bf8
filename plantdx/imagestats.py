"""Image statistics of a served photo, the inputs of drift monitoring.

One function, `image_stats`, computes them for one decoded upright RGB photo; the served
preprocess, the reference written at export and `plantdx drift` all call it on the same
pixels (the photo as the version's `Preprocessor.decode` leaves it: the model's input size),
so live and reference histograms are comparable. Each statistic has fixed histogram bucket
edges (`EDGES`), shared by the Prometheus histograms, the reference and the offline report.

- brightness: mean luma (BT.601, 0-255)
- colourfulness: Hasler and Süsstrunk's metric (0 grey, ~100 very colourful)
- sharpness: variance of a 4-neighbour Laplacian of the grey image at WORK_SIZE px
- green_fraction: share of pixels whose hue is in GREEN_HUE with enough saturation and value
- megapixels, aspect_ratio: of the original (upright) photo, width / height

numpy and Pillow only: the Triton Python backend imports it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

# Statistics are computed on the photo resized to WORK_SIZE × WORK_SIZE (bilinear).
WORK_SIZE = 96
GREEN_HUE = (70.0, 170.0)  # degrees
MIN_SATURATION = 0.2
MIN_VALUE = 0.15

# Upper bucket edges (Prometheus `le`), +Inf implied; never change them for a statistic
# without renaming it: references written with other edges would no longer compare.
EDGES: dict[str, tuple[float, ...]] = {
    "brightness": (30, 50, 70, 90, 110, 130, 150, 170, 190, 210, 230),
    "colourfulness": (10, 20, 30, 40, 50, 60, 70, 80, 100, 120),
    "sharpness": (10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
    "green_fraction": (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    "megapixels": (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 12, 20),
    "aspect_ratio": (0.5, 0.6, 0.7, 0.8, 0.95, 1.05, 1.25, 1.4, 1.6, 1.9, 2.2),
}
STATISTICS = tuple(EDGES)
# The served histograms: plantdx_image_<statistic>{model, version}.
METRIC_PREFIX = "plantdx_image_"


@dataclass(frozen=True)
class ImageStats:
    brightness: float
    colourfulness: float
    sharpness: float
    green_fraction: float
    megapixels: float
    aspect_ratio: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def image_stats(
    pixels: np.ndarray | Image.Image, size: tuple[int, int] | None = None
) -> ImageStats:
    """The statistics of one upright RGB photo (uint8 HWC array or PIL image).

    `size` is the original photo's (width, height) when `pixels` was decoded smaller (the
    model input); None: the size of `pixels`.
    """
    img = pixels if isinstance(pixels, Image.Image) else Image.fromarray(np.asarray(pixels))
    if img.mode != "RGB":
        img = img.convert("RGB")
    width, height = size or img.size
    if img.size != (WORK_SIZE, WORK_SIZE):
        img = img.resize((WORK_SIZE, WORK_SIZE), Image.Resampling.BILINEAR)
    rgb = np.asarray(img, dtype=np.float32)
    grey = np.asarray(img.convert("L"), dtype=np.float32)  # BT.601 luma
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    colourfulness = math.hypot(float(rg.std()), float(yb.std())) + 0.3 * math.hypot(
        float(rg.mean()), float(yb.mean())
    )
    lap = (
        grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * grey[1:-1, 1:-1]
    )
    return ImageStats(
        brightness=float(grey.mean()),
        colourfulness=colourfulness,
        sharpness=float(lap.var()),
        green_fraction=_green_fraction(img),
        megapixels=width * height / 1e6,
        aspect_ratio=width / height,
    )


def _green_fraction(img: Image.Image) -> float:
    """Share of pixels with a hue in GREEN_HUE, and saturation and value high enough to have
    a hue at all (Pillow's HSV: every channel 0-255)."""
    hsv = np.asarray(img.convert("HSV"))
    hue, sat, val = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    green = (
        (hue >= round(GREEN_HUE[0] / 360 * 255))
        & (hue <= round(GREEN_HUE[1] / 360 * 255))
        & (sat >= round(MIN_SATURATION * 255))
        & (val >= round(MIN_VALUE * 255))
    )
    return float(green.mean())


def le_label(edge: float) -> str:
    """An edge as the Prometheus `le` label of the served histograms, without a trailing ".0"
    (the recording rules strip it from what Prometheus stores, so both spellings match)."""
    if math.isinf(edge):
        return "+Inf"
    text = repr(float(edge))
    return text[:-2] if text.endswith(".0") else text


def bucket_labels(edges: Sequence[float]) -> list[str]:
    """The `le` labels of every bucket, +Inf last."""
    return [le_label(e) for e in edges] + ["+Inf"]


def bucket_counts(values: Iterable[float], edges: Sequence[float]) -> list[int]:
    """Per-bucket counts (not cumulative) of values, a bucket being (previous edge, edge]."""
    counts = [0] * (len(edges) + 1)
    edge_array = np.asarray(edges, dtype=np.float64)
    for v in values:
        counts[int(np.searchsorted(edge_array, float(v), side="left"))] += 1
    return counts


def shares(counts: Sequence[float]) -> list[float]:
    total = float(sum(counts))
    return [c / total for c in counts] if total > 0 else [0.0] * len(counts)
