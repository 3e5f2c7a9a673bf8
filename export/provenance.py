"""What an exported version records about itself (`provenance.json`): its source, tools,
checks and decision rule."""

from __future__ import annotations

import dataclasses
import datetime as dt
import platform
from pathlib import Path
from types import ModuleType
from typing import Any

from plantdx.checkpoint import Checkpoint, file_sha256

from . import tensorrt as trt_export
from .config import ExportConfig
from .onnx import ParityReport, Simplification
from .sources import RUN_ID


def source_kind(source: str) -> str:
    if source.startswith("models:/"):
        return "mlflow_registry"
    if source.startswith("runs:/") or RUN_ID.fullmatch(source):
        return "mlflow_run"
    return "checkpoint"


def provenance(
    ckpt: Checkpoint,
    cfg: ExportConfig,
    source: Path,
    onnx_sha: str,
    parity: ParityReport,
    simplification: Simplification | None,
    trt: ModuleType | None,
    gpu: trt_export.GpuInfo | None,
    gate: trt_export.GateReport | None,
) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch

    import plantdx

    tools = {
        "plantdx": plantdx.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }
    if simplification and simplification.tool:
        tools["simplifier"] = simplification.tool
    if trt is not None:
        tools["tensorrt"] = str(trt.__version__)
    return {
        "source": str(cfg.source),
        "source_kind": source_kind(cfg.source),
        "checkpoint": str(source.resolve()),
        "checkpoint_sha256": file_sha256(source),
        "onnx_sha256": onnx_sha,
        "mlflow_run_id": ckpt.mlflow_run_id,
        "model_name": ckpt.model_name,
        "num_classes": ckpt.num_classes,
        "precision": cfg.precision,
        "format": cfg.to,
        "kind": cfg.kind,
        "opset": cfg.opset,
        "batching": {"max": cfg.max_batch, "opt": cfg.opt_batch},
        "simplify": simplification.to_dict() if simplification else None,
        "preprocessing": ckpt.preprocessing.to_dict(),
        "metrics": {k: v for k, v in ckpt.metrics.items() if isinstance(v, int | float)},
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "tools": tools,
        "gpu": dataclasses.asdict(gpu) if gpu else None,
        "parity": parity.to_dict(),
        "precision_gate": gate.to_dict() if gate else None,
        "trt_accelerator": (
            {"precision_mode": cfg.precision.upper(), "gated": False}
            if cfg.trt_accelerator
            else None
        ),
    }
