"""`plantdx export`'s config and result, and the rules a config must follow before any work."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plantdx.choices import ExportFormat, Kind, Precision, Target, VersionPolicy
from plantdx.decision import check_threshold
from plantdx.exceptions import ConfigError

from .onnx import DEFAULT_OPSET


@dataclass
class ExportConfig:
    source: str = ""
    to: ExportFormat = "onnx"
    precision: Precision = "fp32"
    repository: str = "model_repository_out"
    # None: local (pip Triton, onnxruntime in a Python backend) for ONNX, triton for TensorRT.
    target: Target | None = None
    # None: cpu for ONNX, gpu for TensorRT (plans run on GPUs only).
    kind: Kind | None = None
    max_batch: int = 32
    opt_batch: int = 8
    opset: int = DEFAULT_OPSET
    simplify: bool = False
    # Parity (ONNX vs PyTorch) on real images: --check-data, else the run's test split.
    check_data: str | None = None
    check_images: int = 64
    # The drift reference (reference.json): at most this many training and validation photos.
    reference_photos: int = 200
    max_abs_diff: float = 1e-4
    min_top1_agreement: float = 1.0
    # Precision gate (TensorRT plan vs FP32 ONNX) on up to gate_images of the same images.
    gate_threshold: float = 0.99
    gate_images: int = 512
    # TensorRT build.
    calibration: str | None = None
    calibration_images: int = 512
    calibration_cache: str | None = None
    timing_cache: str | None = None
    workspace_mb: int = 4096
    carry_plans: bool = True
    # ONNX on Triton's onnxruntime_onnx with the TensorRT execution accelerator (GPU only).
    trt_accelerator: bool = False
    version_policy: VersionPolicy = "latest"
    latest_versions: int = 1
    specific_versions: list[int] = field(default_factory=list)
    # Overrides of model_repository.config.ServingOptions, e.g. {"preprocess": {"instances": 4}}.
    serving: dict[str, Any] = field(default_factory=dict)
    # This deployment's abstention threshold (postprocess parameter `abstain_threshold`),
    # replacing the threshold of every served version's decision rule; None: the versions' own.
    abstain_threshold: float | None = None


@dataclass
class ExportResult:
    repository: Path
    version: int
    parity: dict[str, Any]
    provenance: dict[str, Any]
    gate: dict[str, Any] | None = None
    plans: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # The version's decision rule (preprocess/N/decision.json) and the deployment override.
    decision: dict[str, Any] = field(default_factory=dict)
    abstain_threshold: float | None = None
    # The heatmap parity report when the classifier has class-activation maps, else None.
    explain: dict[str, Any] | None = None


def settle(cfg: ExportConfig) -> ExportConfig:
    """Fill target/kind from the format and refuse combinations that cannot be served."""
    trt = cfg.to == "tensorrt"
    target = cfg.target or ("triton" if trt else "local")
    kind = cfg.kind or ("gpu" if trt else "cpu")
    if not cfg.source:
        raise ConfigError(
            "no export source: pass a checkpoint, run directory, run id or models:/ URI"
        )
    if trt and target == "local":
        raise ConfigError(
            "--target local runs on the pip-installed Triton, which has no TensorRT backend; "
            "TensorRT plans need --target triton (the NGC tritonserver container)"
        )
    if trt and kind == "cpu":
        raise ConfigError("TensorRT plans run on GPUs only: use --kind gpu (the default)")
    if target == "local" and kind == "gpu":
        raise ConfigError(
            "--target local runs the classifier with onnxruntime on the CPU inside Triton's "
            "Python backend; GPU instances need --target triton"
        )
    if cfg.trt_accelerator and (trt or target != "triton" or kind != "gpu"):
        raise ConfigError(
            "--trt-accelerator is for --to onnx --target triton --kind gpu (Triton's "
            "onnxruntime backend with its TensorRT execution provider)"
        )
    if not trt and cfg.precision == "int8":
        raise ConfigError("INT8 needs a calibrated TensorRT build: --to tensorrt --calibration DIR")
    if not trt and cfg.precision == "fp16" and not cfg.trt_accelerator:
        raise ConfigError(
            "an FP16 ONNX export runs through TensorRT: use --to tensorrt --precision fp16 "
            "(gated), or --target triton --kind gpu --trt-accelerator"
        )
    if cfg.precision == "int8" and not cfg.calibration:
        raise ConfigError("--precision int8 needs --calibration DIR (a folder of images)")
    if cfg.opset < DEFAULT_OPSET:
        raise ConfigError(f"--opset must be {DEFAULT_OPSET} or newer, got {cfg.opset}")
    if not 1 <= cfg.opt_batch <= cfg.max_batch:
        raise ConfigError(
            f"batch sizes must satisfy 1 <= --opt-batch <= --max-batch, got "
            f"{cfg.opt_batch} and {cfg.max_batch}"
        )
    if not 0 < cfg.gate_threshold <= 1 or not 0 < cfg.min_top1_agreement <= 1:
        raise ConfigError("agreement thresholds are fractions in (0, 1]")
    if cfg.version_policy == "specific" and not cfg.specific_versions:
        raise ConfigError("--version-policy specific needs --versions (e.g. --versions 3,4)")
    if cfg.latest_versions < 1:
        raise ConfigError("--latest-n must be at least 1")
    if cfg.abstain_threshold is not None:
        check_threshold(cfg.abstain_threshold, "--abstain-threshold", ConfigError)
    return dataclasses.replace(cfg, target=target, kind=kind)
