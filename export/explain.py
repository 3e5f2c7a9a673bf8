"""Explanations in an export: the classifier's class-activation maps as a second ONNX output,
and the heatmap parity check that gates publication beside the probability parity.

`--target local` exports one graph with both outputs (the Python backend computes the maps
only when asked). `--target triton` keeps the classifier's graph (or its TensorRT plan) as it
is and exports the class-activation graph beside it, `cams.onnx`, for `classifier_cams`
(model_repository/explain.py says why): its logits are checked against PyTorch like the
classifier's, and its maps by the same heatmap parity.

The heatmap compared is the one users see: the top class's map (by the PyTorch logits, so both
sides show the same class), normalised by `plantdx.heatmap.normalize_heatmap`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from plantdx.exceptions import ParityError
from plantdx.heatmap import HEATMAP_TOLERANCE, class_heatmaps
from plantdx.model_repository.names import ONNX_CAMS, ONNX_INPUT, ONNX_OUTPUT
from plantdx.models.cam import CamModel as CamModel
from plantdx.models.cam import cam_model, cam_supported
from plantdx.preprocessing import PreprocessMeta

from .onnx import (
    check_parity,
    export_onnx,
    onnx_session,
    require_parity,
    torch_pixels,
)

UNAVAILABLE_NOTE = (
    "explanations are unavailable for architecture {arch}: its head is not global pooling + "
    "one linear layer, so the classifier was exported without class-activation maps and no "
    "plantdx_explain ensemble was published"
)
CAMS_GRAPH = "cams.onnx"  # --target triton: the class-activation graph, for classifier_cams
CAMS_OUTPUTS = (ONNX_OUTPUT, ONNX_CAMS)


@dataclass
class ExplainPlan:
    """What the export writes: the module to export, its ONNX outputs, the class-activation
    module exported as a graph of its own (--target triton), and why there are no maps when
    there are none."""

    module: nn.Module
    output_names: tuple[str, ...]
    note: str | None = None
    separate: CamModel | None = None

    @property
    def cams(self) -> bool:
        return isinstance(self.module, CamModel) or self.separate is not None


def plan(model: nn.Module, arch: str, *, to: str, target: str = "local") -> ExplainPlan:
    if not cam_supported(arch):
        return ExplainPlan(model, (ONNX_OUTPUT,), UNAVAILABLE_NOTE.format(arch=arch))
    if to != "onnx" or target != "local":
        return ExplainPlan(model, (ONNX_OUTPUT,), separate=cam_model(model, arch).eval())
    return ExplainPlan(cam_model(model, arch).eval(), CAMS_OUTPUTS)


@dataclass
class HeatmapParityReport:
    n_images: int
    max_abs_diff_heatmap: float
    tolerance: float
    cam_shape: list[int]
    source: str

    @property
    def passed(self) -> bool:
        return self.max_abs_diff_heatmap <= self.tolerance

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "passed": self.passed}


def check_heatmap_parity(
    model: CamModel,
    onnx_path: str | Path,
    batch: np.ndarray,
    *,
    source: str,
    tolerance: float = HEATMAP_TOLERANCE,
    chunk: int = 16,
    meta: PreprocessMeta | None = None,
) -> HeatmapParityReport:
    """PyTorch's and onnxruntime's normalised top-class heatmaps on the same images (`batch`
    as the ONNX model takes it; uint8 pixels reach PyTorch normalised by `meta`)."""
    session = onnx_session(onnx_path)
    worst = 0.0
    shape: list[int] = []
    model = model.eval()
    with torch.no_grad():
        for i in range(0, len(batch), chunk):
            x = batch[i : i + chunk]
            t_in = torch_pixels(x, meta) if meta is not None else x
            t_logits, t_cams = (t.numpy() for t in model(torch.from_numpy(t_in)))
            (o_cams,) = session.run([ONNX_CAMS], {ONNX_INPUT: x})
            top = t_logits.argmax(axis=1)
            diff = np.abs(
                class_heatmaps(t_cams, t_logits, top) - class_heatmaps(o_cams, t_logits, top)
            )
            worst = max(worst, float(diff.max()))
            shape = list(t_cams.shape[1:])
    return HeatmapParityReport(len(batch), worst, tolerance, shape, source)


def require_heatmap_parity(report: HeatmapParityReport) -> None:
    if not report.passed:
        raise ParityError(
            f"ONNX class-activation heatmaps disagree with PyTorch on {report.n_images} images "
            f"from {report.source}: max |Δ| = {report.max_abs_diff_heatmap:.2e} (limit "
            f"{report.tolerance:.0e}); nothing was published"
        )


@dataclass
class CamsGraph:
    """The class-activation graph of a --target triton export, checked."""

    path: Path
    parity: dict[str, Any]
    heatmap: HeatmapParityReport


def cams_graph(
    explained: ExplainPlan,
    plain: nn.Module,
    tmpdir: Path,
    batch: np.ndarray,
    *,
    image_size: int,
    opset: int,
    normalize: PreprocessMeta | None,
    meta: PreprocessMeta,
    source: str,
    max_abs: float,
    min_agreement: float,
) -> CamsGraph:
    """Export `explained.separate` as `cams.onnx` (the classifier's input, then `logits` and
    `cams`) and check it as the classifier is checked: its logits against PyTorch's (the
    probability parity) and its maps by the heatmap parity; raises ParityError on a miss."""
    assert explained.separate is not None
    path = export_onnx(
        explained.separate,
        tmpdir / CAMS_GRAPH,
        image_size=image_size,
        opset=opset,
        output_names=CAMS_OUTPUTS,
        normalize=normalize,
    )
    logits = check_parity(
        plain, path, batch, source=source, max_abs=max_abs, min_agreement=min_agreement, meta=meta
    )
    require_parity(logits)
    heatmap = check_heatmap_parity(explained.separate, path, batch, source=source, meta=meta)
    require_heatmap_parity(heatmap)
    return CamsGraph(path, logits.to_dict(), heatmap)
