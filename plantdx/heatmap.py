"""Class-activation heatmaps: the one normalisation used by the PyTorch check, the served
`heatmap` model and the client's overlays.

A class-activation map (CAM) of class c is W_c · F(h, w) + b_c over the last feature map F of
a network whose head is global average pooling + one linear layer; its spatial mean is the
logit of c. A heatmap is that map, ReLU'd and divided by its maximum: values in [0, 1], all
zero when nothing in the photo speaks for the class (max ≤ 0).
"""

from __future__ import annotations

import numpy as np

# PyTorch and onnxruntime heatmaps of the top class must agree within this (max |Δ|, in the
# 0..1 heatmap scale) on the export's check images, or the export is not published.
HEATMAP_TOLERANCE = 1e-3


def normalize_heatmap(cam: np.ndarray) -> np.ndarray:
    """ReLU then divide by the maximum over the last two axes; all-zero where the max ≤ 0.

    `cam` is [h, w] or [..., h, w]; returns FP32 of the same shape in [0, 1].
    """
    x = np.maximum(np.asarray(cam, dtype=np.float32), 0.0)
    peak = x.max(axis=(-2, -1), keepdims=True)
    safe = np.where(peak > 0, peak, 1.0).astype(np.float32)
    return np.where(peak > 0, x / safe, 0.0).astype(np.float32)


def class_heatmaps(
    cams: np.ndarray, logits: np.ndarray, classes: np.ndarray | None = None
) -> np.ndarray:
    """The normalised heatmap of one class per image: `classes[i]` when given and ≥ 0, else
    the top class (argmax of the logits). cams [B, C, h, w], logits [B, C] → [B, h, w]."""
    cams = np.asarray(cams)
    logits = np.asarray(logits).reshape(len(cams), -1)
    top = logits.argmax(axis=1)
    if classes is not None:
        wanted = np.asarray(classes).reshape(-1).astype(np.int64)
        if len(wanted) != len(cams):
            raise ValueError(f"{len(wanted)} class indices for {len(cams)} images")
        bad = wanted[(wanted >= cams.shape[1])]
        if bad.size:
            raise ValueError(f"class index {int(bad[0])} is out of range (0..{cams.shape[1] - 1})")
        top = np.where(wanted >= 0, wanted, top)
    return normalize_heatmap(cams[np.arange(len(cams)), top])
