"""`plantdx evaluate --explain N`: overlays of up to N misclassified photos, computed in PyTorch
with the same CAM wrapper (`plantdx.models.cam`) and normalisation (`plantdx.heatmap`) the
export checks the served heatmaps against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from plantdx.checkpoint import Checkpoint
from plantdx.heatmap import class_heatmaps
from plantdx.models.cam import cam_model
from plantdx.overlay import draw_overlay, overlay_name
from plantdx.preprocessing import Normalizer, Preprocessor, open_image

EXPLAIN_DIR = "explanations"


def explain_misclassified(
    model: torch.nn.Module,
    ckpt: Checkpoint,
    misclassified: list[dict[str, Any]],
    out: Path,
    device: torch.device,
    limit: int,
) -> list[str]:
    """One PNG per photo (the predicted class's heatmap, 'true X / predicted Y p%');
    the paths written. Raises ExplainUnavailableError for architectures without CAMs."""
    wrapper = cam_model(model, ckpt.model_name).eval().to(device)
    pre, norm = Preprocessor(ckpt.preprocessing), Normalizer(ckpt.preprocessing)
    folder = out / EXPLAIN_DIR
    written = []
    for i, row in enumerate(misclassified[:limit]):
        data = Path(row["file"]).read_bytes()
        x = torch.from_numpy(norm(pre.decode(data))[None]).to(device)
        with torch.no_grad():
            logits, cams = (t.float().cpu().numpy() for t in wrapper(x))
        predicted = ckpt.class_names.index(row["predicted"])
        heat = class_heatmaps(cams, logits, np.array([predicted]))[0]
        text = f"true {row['true']} / predicted {row['predicted']} {row['confidence']:.1%}"
        path = draw_overlay(
            open_image(data),
            heat,
            text,
            folder / overlay_name(row["file"], i),
            resize=ckpt.preprocessing.resize,
        )
        written.append(str(path))
    return written
