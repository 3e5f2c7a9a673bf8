"""The TensorRT part of `plantdx export`: build a plan on this GPU, gate it against the FP32
ONNX on real images, and write it (with the plans carried from the previous version) into the
staged version."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from plantdx.checkpoint import Checkpoint
from plantdx.model_repository.repository import (
    ENGINES_FILENAME,
    GATE_FILENAME,
    StagedVersion,
    write_json,
)

from . import tensorrt as trt_export
from .config import ExportConfig
from .onnx import onnx_logits, takes_uint8

CALIBRATION_CACHE_FILENAME = "calibration.cache"


@dataclass
class TrtBuild:
    plan: trt_export.PlanBuild
    gate: trt_export.GateReport
    identity: dict[str, Any]
    calibration_cache: Path | None


def build_and_gate(
    trt: ModuleType,
    gpu: trt_export.GpuInfo,
    cfg: ExportConfig,
    ckpt: Checkpoint,
    onnx_path: Path,
    onnx_sha: str,
    images: np.ndarray,
    where: str,
    calibration_paths: list[Path] | None,
) -> TrtBuild:
    profile = trt_export.Profile(1, cfg.opt_batch, cfg.max_batch, ckpt.preprocessing.image_size)
    calibration = None
    if calibration_paths is not None:
        cache = (
            Path(cfg.calibration_cache)
            if cfg.calibration_cache
            else trt_export.calibration_cache_path(onnx_sha, calibration_paths, ckpt.preprocessing)
        )
        calibration = trt_export.Calibration(
            tuple(calibration_paths),
            ckpt.preprocessing,
            cfg.opt_batch,
            cache,
            str(cfg.calibration),
            uint8=takes_uint8(onnx_path),
        )
    settings = trt_export.BuildSettings(
        precision=cfg.precision,
        profile=profile,
        workspace_bytes=cfg.workspace_mb << 20,
        timing_cache=Path(cfg.timing_cache)
        if cfg.timing_cache
        else trt_export.default_timing_cache(trt, gpu),
        calibration=calibration,
    )
    plan = trt_export.build_plan(
        trt, onnx_path, onnx_path.parent / trt_export.plan_filename(gpu), settings, gpu
    )
    runner = trt_export.PlanRunner(trt, plan.path, max_batch=cfg.max_batch)
    gate = trt_export.precision_gate(
        onnx_logits(onnx_path, images),
        runner(images),
        precision=cfg.precision,
        gpu=gpu,
        min_agreement=cfg.gate_threshold,
        source=where,
    )
    plan.metadata["gate"] = gate.to_dict()
    trt_export.require_gate(gate)
    identity = {"onnx_sha256": onnx_sha, "precision": cfg.precision, "profile": profile.to_dict()}
    return TrtBuild(plan, gate, identity, calibration.cache_path if calibration else None)


def write_plans(
    staged: StagedVersion,
    build: TrtBuild,
    cfg: ExportConfig,
    trt: ModuleType | None,
    gpu: trt_export.GpuInfo | None,
) -> dict[str, Any]:
    assert trt is not None and gpu is not None
    carried: dict[str, Any] = {}
    left: list[dict[str, str]] = []
    if cfg.carry_plans:
        carried, left = trt_export.carry_plans(
            staged.previous_dir,
            staged.dir,
            identity=build.identity,
            gpu=gpu,
            tensorrt_version=str(trt.__version__),
        )
    shutil.copyfile(build.plan.path, staged.dir / build.plan.path.name)
    plans = {
        **carried,
        gpu.compute_capability: {**build.plan.metadata, "built_in_version": staged.version},
    }
    engines = {"identity": build.identity, "plans": plans, "not_carried": left}
    write_json(staged.dir / ENGINES_FILENAME, engines)
    write_json(staged.dir / GATE_FILENAME, build.gate.to_dict())
    if build.calibration_cache is not None and build.calibration_cache.is_file():
        shutil.copyfile(build.calibration_cache, staged.dir / CALIBRATION_CACHE_FILENAME)
    return engines
