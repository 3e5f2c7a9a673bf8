"""Explanation overlays: a photo, the class heatmap laid over it and the answer as text.

One drawing for `plantdx predict --explain` (served heatmaps) and `plantdx evaluate --explain`
(PyTorch heatmaps). The heatmap covers the square the model saw: the whole photo stretched
(`squash`), its centre square (`crop`) or a square around it (`pad`), as
`plantdx.preprocessing` made the model's input; parts of the photo the model did not see stay
uncoloured.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from plantdx.preprocessing import RESIZE_MODES, open_image

ALPHA = 0.45
COLORMAP = "jet"
BAR = 28  # height of the text bar above the photo, in pixels


def seen_box(width: int, height: int, resize: str) -> tuple[float, float, float, float]:
    """(left, top, side_x, side_y) of the model's input square in photo pixels."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize {resize!r} is not one of {list(RESIZE_MODES)}")
    if resize == "squash" or width == height:
        return 0.0, 0.0, float(width), float(height)
    side = float(min(width, height) if resize == "crop" else max(width, height))
    return (width - side) / 2, (height - side) / 2, side, side


def heat_layer(heatmap: np.ndarray, width: int, height: int, resize: str) -> np.ndarray:
    """The heatmap upsampled (bilinear) onto the photo: [height, width], NaN where unseen."""
    left, top, sx, sy = seen_box(width, height, resize)
    hm = Image.fromarray(np.clip(np.asarray(heatmap, np.float32), 0.0, 1.0), mode="F")
    size = (max(1, round(sx)), max(1, round(sy)))
    up = np.asarray(hm.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    layer = np.full((height, width), np.nan, dtype=np.float32)
    x0, y0 = round(left), round(top)
    xs, ys = max(0, x0), max(0, y0)
    xe, ye = min(width, x0 + size[0]), min(height, y0 + size[1])
    layer[ys:ye, xs:xe] = up[ys - y0 : ye - y0, xs - x0 : xe - x0]
    return layer


def caption(label: str, confidence: float, decision: str) -> str:
    """'label 93.1%', or 'uncertain (top guess: label 41.0%)'."""
    if decision and decision != label:
        return f"{decision} (top guess: {label} {confidence:.1%})"
    return f"{label} {confidence:.1%}"


def draw_overlay(
    photo: bytes | Image.Image,
    heatmap: np.ndarray,
    text: str,
    out: str | Path,
    *,
    resize: str = "squash",
    alpha: float = ALPHA,
    colormap: str = COLORMAP,
) -> Path:
    """Write a PNG: `text` above the photo with the heatmap blended over it."""
    import matplotlib

    img = open_image(photo) if isinstance(photo, bytes) else photo
    img = img.convert("RGB")
    width, height = img.size
    layer = heat_layer(heatmap, width, height, resize)
    seen = ~np.isnan(layer)
    colours = matplotlib.colormaps[colormap](np.nan_to_num(layer))[..., :3] * 255.0
    base = np.asarray(img, dtype=np.float32)
    blended = np.where(seen[..., None], (1 - alpha) * base + alpha * colours, base)
    canvas = Image.new("RGB", (width, height + BAR), (255, 255, 255))
    canvas.paste(Image.fromarray(blended.round().astype(np.uint8)), (0, BAR))
    ImageDraw.Draw(canvas).text((6, 7), text, fill=(0, 0, 0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    return out


def overlay_name(source: str | Path, index: int) -> str:
    """A file name for the overlay of one input: its stem, numbered to stay unique."""
    return f"{index:04d}-{Path(str(source)).stem or 'image'}.png"
