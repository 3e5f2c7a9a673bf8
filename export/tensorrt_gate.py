"""Running a plan, and the precision gate: a reduced-precision plan is published only when its
top-1 answers agree with the FP32 ONNX model's often enough."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from plantdx.exceptions import ExportError, PrecisionGateError
from plantdx.model_repository.names import ONNX_INPUT, ONNX_OUTPUT

from .tensorrt_gpu import GpuInfo


class PlanRunner:
    """Runs a plan on the GPU with PyTorch tensors as I/O buffers (TensorRT 8.5+ tensor API)."""

    def __init__(
        self,
        trt: ModuleType,
        plan_path: Path,
        *,
        max_batch: int,
        input_name: str = ONNX_INPUT,
        output_name: str = ONNX_OUTPUT,
    ) -> None:
        import torch

        self.torch = torch
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise ExportError(f"TensorRT could not load the plan it just built ({plan_path.name})")
        self.context = self.engine.create_execution_context()
        self.max_batch = max_batch
        self.input_name, self.output_name = input_name, output_name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        stream = torch.cuda.Stream()
        out = []
        with torch.cuda.stream(stream):
            for i in range(0, len(batch), self.max_batch):
                x = torch.from_numpy(np.ascontiguousarray(batch[i : i + self.max_batch])).to("cuda")
                if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
                    raise ExportError(f"the plan refuses input shape {tuple(x.shape)}")
                shape = tuple(self.context.get_tensor_shape(self.output_name))
                y = torch.empty(shape, dtype=torch.float32, device="cuda")
                self.context.set_tensor_address(self.input_name, int(x.data_ptr()))
                self.context.set_tensor_address(self.output_name, int(y.data_ptr()))
                if not self.context.execute_async_v3(stream.cuda_stream):
                    raise ExportError("TensorRT failed to run the plan")
                stream.synchronize()
                out.append(y.cpu().numpy())
        return np.concatenate(out)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


@dataclass
class GateReport:
    """Top-1 agreement of a plan with the FP32 ONNX model on the same preprocessed images."""

    precision: str
    compute_capability: str
    n_images: int
    top1_agreement: float
    min_top1_agreement: float
    max_abs_diff_probs: float
    mean_abs_diff_probs: float
    source: str
    reference: str = "FP32 ONNX model, onnxruntime CPU"

    @property
    def passed(self) -> bool:
        return self.top1_agreement >= self.min_top1_agreement

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def precision_gate(
    reference_logits: np.ndarray,
    plan_logits: np.ndarray,
    *,
    precision: str,
    gpu: GpuInfo,
    min_agreement: float,
    source: str,
) -> GateReport:
    if reference_logits.shape != plan_logits.shape:
        raise ExportError(
            f"the plan answered shape {plan_logits.shape}; FP32 answered {reference_logits.shape}"
        )
    ref = reference_logits.astype(np.float64)
    got = plan_logits.astype(np.float64)
    if not np.isfinite(got).all():
        agreement = 0.0  # NaN/inf (FP16 overflow) never counts as agreeing
    else:
        agreement = float((ref.argmax(1) == got.argmax(1)).mean())
    diff = np.abs(_softmax(ref) - _softmax(np.nan_to_num(got)))
    return GateReport(
        precision=precision,
        compute_capability=gpu.compute_capability,
        n_images=len(ref),
        top1_agreement=agreement,
        min_top1_agreement=min_agreement,
        max_abs_diff_probs=float(diff.max()),
        mean_abs_diff_probs=float(diff.mean()),
        source=source,
    )


def require_gate(report: GateReport) -> None:
    if not report.passed:
        raise PrecisionGateError(
            f"the {report.precision.upper()} plan (sm{report.compute_capability}) agrees with "
            f"FP32 on {report.top1_agreement:.2%} of {report.n_images} images from "
            f"{report.source} (need {report.min_top1_agreement:.0%}); nothing was published. "
            "Try FP32, more or more representative --calibration images for INT8, or "
            "--gate-threshold if the drop is acceptable"
        )
