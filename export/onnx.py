"""PyTorch → ONNX, and the parity check that decides whether an export may be published."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from plantdx.exceptions import ExportError, ParityError
from plantdx.model_repository.config import ONNX_INPUT, ONNX_OUTPUT

DEFAULT_OPSET = 17


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    image_size: int,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write one self-contained ONNX file with a dynamic batch axis and named tensors."""
    import onnx

    path = Path(path)
    model = model.eval().to(memory_format=torch.contiguous_format)
    dummy = torch.zeros(2, 3, image_size, image_size)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which takes 15 s here and
        # writes external weights; the classic exporter is exact for these CNNs and ViTs.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (dummy,),
                str(path),
                input_names=[ONNX_INPUT],
                output_names=[ONNX_OUTPUT],
                dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as exc:
            raise ExportError(f"ONNX export failed: {exc}") from exc
    proto = onnx.load(str(path))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"exported ONNX fails onnx.checker: {exc}") from exc
    return path


def onnx_session(path: str | Path, threads: int = 0) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class ParityReport:
    n_images: int
    max_abs_diff_logits: float
    max_abs_diff_probs: float
    top1_agreement: float
    max_abs_tolerance: float
    min_top1_agreement: float
    source: str

    @property
    def passed(self) -> bool:
        return (
            self.max_abs_diff_probs <= self.max_abs_tolerance
            and self.top1_agreement >= self.min_top1_agreement
        )

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "passed": self.passed}


def check_parity(
    model: nn.Module,
    onnx_path: str | Path,
    batch: np.ndarray,
    *,
    source: str,
    max_abs: float = 1e-4,
    min_agreement: float = 1.0,
    chunk: int = 16,
) -> ParityReport:
    """Compare PyTorch and onnxruntime on the same preprocessed images."""
    session = onnx_session(onnx_path)
    torch_logits, onnx_logits = [], []
    model = model.eval()
    with torch.no_grad():
        for i in range(0, len(batch), chunk):
            x = batch[i : i + chunk]
            torch_logits.append(model(torch.from_numpy(x)).numpy())
            onnx_logits.append(session.run(None, {ONNX_INPUT: x})[0])
    t = np.concatenate(torch_logits).astype(np.float64)
    o = np.concatenate(onnx_logits).astype(np.float64)
    return ParityReport(
        n_images=len(batch),
        max_abs_diff_logits=float(np.abs(t - o).max()),
        max_abs_diff_probs=float(np.abs(softmax(t) - softmax(o)).max()),
        top1_agreement=float((t.argmax(1) == o.argmax(1)).mean()),
        max_abs_tolerance=max_abs,
        min_top1_agreement=min_agreement,
        source=source,
    )


def require_parity(report: ParityReport) -> None:
    if not report.passed:
        raise ParityError(
            f"ONNX disagrees with PyTorch on {report.n_images} images from {report.source}: "
            f"max |Δp| = {report.max_abs_diff_probs:.2e} (limit {report.max_abs_tolerance:.0e}), "
            f"top-1 agreement {report.top1_agreement:.2%} (need {report.min_top1_agreement:.0%}); "
            "nothing was published"
        )
