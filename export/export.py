"""`plantdx export`: checkpoint → ONNX (→ TensorRT) → parity check (→ precision gate) → version.

Nothing reaches the model repository until every check has passed: the ONNX file and any plan
are built in a temporary directory, and `publish_version` moves the finished version in.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

from plantdx.checkpoint import Checkpoint, file_sha256, load_checkpoint
from plantdx.config import resolve, to_dict
from plantdx.data import SPLIT_FILENAME, is_image_file, load_split
from plantdx.exceptions import ConfigError, DatasetError, ExportError, PreprocessError
from plantdx.model_repository.config import ServingOptions
from plantdx.model_repository.repository import (
    ENGINES_FILENAME,
    GATE_FILENAME,
    PARITY_FILENAME,
    StagedVersion,
    publish_version,
    write_json,
)
from plantdx.preprocessing import Preprocessor

from . import tensorrt as trt_export
from .onnx import (
    DEFAULT_OPSET,
    ParityReport,
    Simplification,
    check_parity,
    export_onnx,
    onnx_logits,
    require_parity,
    simplify_onnx,
)

log = logging.getLogger(__name__)

CALIBRATION_CACHE_FILENAME = "calibration.cache"


@dataclass
class ExportConfig:
    source: str = ""
    to: Literal["onnx", "tensorrt"] = "onnx"
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    repository: str = "model_repository_out"
    # None: local (pip Triton, onnxruntime in a Python backend) for ONNX, triton for TensorRT.
    target: Literal["local", "triton"] | None = None
    # None: cpu for ONNX, gpu for TensorRT (plans run on GPUs only).
    kind: Literal["cpu", "gpu"] | None = None
    max_batch: int = 32
    opt_batch: int = 8
    opset: int = DEFAULT_OPSET
    simplify: bool = False
    # Parity (ONNX vs PyTorch) on real images: --check-data, else the run's test split.
    check_data: str | None = None
    check_images: int = 64
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
    version_policy: Literal["latest", "all", "specific"] = "latest"
    latest_versions: int = 1
    specific_versions: list[int] = field(default_factory=list)
    # Overrides of model_repository.config.ServingOptions, e.g. {"preprocess": {"instances": 4}}.
    serving: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportResult:
    repository: Path
    version: int
    parity: dict[str, Any]
    provenance: dict[str, Any]
    gate: dict[str, Any] | None = None
    plans: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


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
    return dataclasses.replace(cfg, target=target, kind=kind)


def export(cfg: ExportConfig) -> ExportResult:
    cfg = settle(cfg)
    trt = gpu = None
    if cfg.to == "tensorrt":
        trt, gpu = trt_export.require_tensorrt()
    calibration_paths = None
    if cfg.precision == "int8" and cfg.calibration:
        calibration_paths = trt_export.calibration_images(cfg.calibration, cfg.calibration_images)
        if len(calibration_paths) < cfg.opt_batch:
            raise DatasetError(
                f"{cfg.calibration} has {len(calibration_paths)} images; INT8 calibration needs "
                f"at least one batch of --opt-batch {cfg.opt_batch}"
            )
    opts = serving_options(cfg)
    source_path = _resolve_source(cfg.source)
    ckpt = load_checkpoint(source_path)
    model = ckpt.build_model()
    limit = max(cfg.check_images, cfg.gate_images if trt else 0)
    images, where = _check_images(ckpt, cfg, source_path, limit)
    notes: list[str] = []
    if where == SYNTHETIC_CHECK:
        notes.append(
            f"parity was checked on {len(images)} generated leaf images, not on photos: no "
            "--check-data was given and the run's split was not found; pass --check-data DIR"
        )
    if cfg.trt_accelerator and cfg.precision == "fp16":
        notes.append(
            "FP16 is applied by Triton's onnxruntime TensorRT accelerator when the model loads, "
            "so this export could not gate it against FP32: check its agreement on the serving "
            "GPU (scripts/gpu_check.sh), or use --to tensorrt for a gated FP16 plan"
        )
    with tempfile.TemporaryDirectory(prefix="plantdx-export-") as tmp:
        tmpdir = Path(tmp)
        onnx_path = export_onnx(
            model, tmpdir / "model.onnx", image_size=ckpt.preprocessing.image_size, opset=cfg.opset
        )
        simplification = simplify_onnx(onnx_path) if cfg.simplify else None
        if simplification and simplification.note:
            log.warning(simplification.note)
            notes.append(simplification.note)
        report = check_parity(
            model,
            onnx_path,
            _spread(images, cfg.check_images),
            source=where,
            max_abs=cfg.max_abs_diff,
            min_agreement=cfg.min_top1_agreement,
        )
        require_parity(report)
        onnx_sha = file_sha256(onnx_path)
        trt_build = None
        if trt is not None and gpu is not None:
            trt_build = _build_and_gate(
                trt, gpu, cfg, ckpt, onnx_path, onnx_sha, images, where, calibration_paths
            )
        provenance = _provenance(
            ckpt, cfg, source_path, onnx_sha, report, simplification, trt, gpu, trt_build
        )
        published: dict[str, Any] = {}

        def write_files(staged: StagedVersion) -> None:
            shutil.copyfile(onnx_path, staged.dir / "model.onnx")
            write_json(staged.dir / PARITY_FILENAME, report.to_dict())
            if trt_build is not None:
                published.update(_write_plans(staged, trt_build, cfg, trt, gpu))

        version = publish_version(
            cfg.repository,
            class_names=ckpt.class_names,
            meta=ckpt.preprocessing,
            write_classifier_files=write_files,
            provenance=provenance,
            options=opts,
            target=cfg.target or "local",
            platform=cfg.to,
            trt_accelerator=cfg.trt_accelerator,
            trt_fp16=cfg.precision == "fp16",
        )
    return ExportResult(
        Path(cfg.repository),
        version,
        report.to_dict(),
        provenance,
        gate=trt_build.gate.to_dict() if trt_build else None,
        plans=published.get("plans", {}),
        notes=notes + [_note(n) for n in published.get("not_carried", [])],
    )


def _note(left: dict[str, str]) -> str:
    where = left.get("compute_capability") or f"version {left.get('version')}"
    return f"plans of {where} were not carried into the new version: {left['reason']}"


def serving_options(cfg: ExportConfig) -> ServingOptions:
    """ServingOptions defaults ← `serving` overrides ← the export's own batching and policy."""
    flat = _flatten(to_dict(ServingOptions()))
    flat.update(_flatten(cfg.serving))
    try:
        base = resolve(ServingOptions, None, flat)
    except ConfigError as exc:
        raise ConfigError(f"serving: {exc}") from exc
    classifier = dataclasses.replace(
        base.classifier, max_batch_size=cfg.max_batch, preferred_batch_sizes=(cfg.opt_batch,)
    )
    return dataclasses.replace(
        base,
        kind=cfg.kind or "cpu",
        classifier=classifier,
        version_policy=cfg.version_policy,
        latest_n=cfg.latest_versions,
        specific_versions=tuple(cfg.specific_versions),
    )


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ---------------------------------------------------------------------------------------------
# TensorRT.


@dataclass
class _TrtBuild:
    plan: trt_export.PlanBuild
    gate: trt_export.GateReport
    identity: dict[str, Any]
    calibration_cache: Path | None


def _build_and_gate(
    trt: ModuleType,
    gpu: trt_export.GpuInfo,
    cfg: ExportConfig,
    ckpt: Checkpoint,
    onnx_path: Path,
    onnx_sha: str,
    images: np.ndarray,
    where: str,
    calibration_paths: list[Path] | None,
) -> _TrtBuild:
    profile = trt_export.Profile(1, cfg.opt_batch, cfg.max_batch, ckpt.preprocessing.image_size)
    calibration = None
    if calibration_paths is not None:
        cache = (
            Path(cfg.calibration_cache)
            if cfg.calibration_cache
            else trt_export.calibration_cache_path(onnx_sha, calibration_paths, ckpt.preprocessing)
        )
        calibration = trt_export.Calibration(
            tuple(calibration_paths), ckpt.preprocessing, cfg.opt_batch, cache, str(cfg.calibration)
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
    return _TrtBuild(plan, gate, identity, calibration.cache_path if calibration else None)


def _write_plans(
    staged: StagedVersion,
    build: _TrtBuild,
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


# ---------------------------------------------------------------------------------------------
# Sources and check images.


RUN_ID = re.compile(r"[0-9a-f]{32}")


def _resolve_source(source: str) -> Path:
    path = Path(source)
    if path.is_dir():
        path = path / "best.pt"
    if path.is_file():
        return path
    if source.startswith(("models:/", "runs:/")) or RUN_ID.fullmatch(source):
        from plantdx.tracking import download_checkpoint

        return download_checkpoint(source)
    raise ExportError(
        f"export source {source!r} is not a checkpoint file, run directory, MLflow run id "
        "(32 hex digits) or MLflow URI (models:/NAME/VERSION, models:/NAME@ALIAS, runs:/ID/PATH)"
    )


def _split_file(source_path: Path, ckpt: Checkpoint) -> Path | None:
    """The run's split.json: beside the checkpoint, else among the MLflow run's artifacts."""
    local = source_path.parent / SPLIT_FILENAME
    if local.is_file():
        return local
    if not ckpt.mlflow_run_id:
        return None
    try:
        from plantdx.tracking import configure

        mlflow = configure()
        path = mlflow.artifacts.download_artifacts(
            run_id=ckpt.mlflow_run_id, artifact_path=SPLIT_FILENAME
        )
    except Exception:  # no tracking server, or a run without split.json: not an error here
        return None
    return Path(path) if Path(path).is_file() else None


def _check_paths(ckpt: Checkpoint, cfg: ExportConfig, source_path: Path) -> tuple[list[Path], str]:
    if cfg.check_data:
        root = Path(cfg.check_data)
        if not root.is_dir():
            raise DatasetError(f"--check-data folder {root} does not exist")
        paths = sorted(p for p in root.rglob("*") if is_image_file(p))
        if not paths:
            raise DatasetError(f"--check-data folder {root} holds no images")
        return paths, str(root)
    split_file = _split_file(source_path, ckpt)
    if split_file is not None:
        try:
            _, split = load_split(split_file)
        except DatasetError:
            return [], ""
        paths = [s.path for s in split["test"] + split["val"] if s.path.is_file()]
        return (
            paths,
            f"the test and validation splits of {ckpt.mlflow_run_id or source_path.parent}",
        )
    return [], ""


SYNTHETIC_CHECK = "generated leaf images (no real images found)"


def _check_images(
    ckpt: Checkpoint, cfg: ExportConfig, source_path: Path, limit: int
) -> tuple[np.ndarray, str]:
    """Preprocessed real images for the checks: --check-data, else the run's own held-out split."""
    pre = Preprocessor(ckpt.preprocessing)
    paths, where = _check_paths(ckpt, cfg, source_path)
    arrays = []
    for p in _spread(paths, limit):
        try:
            arrays.append(pre(p.read_bytes()))
        except PreprocessError:
            continue
    if arrays:
        return np.stack(arrays), where
    from plantdx.synth import CLASSES, draw_leaf

    log.warning("no real images for the export checks; pass --check-data DIR")
    rng = np.random.default_rng(0)
    drawn = [draw_leaf(CLASSES[i % len(CLASSES)], rng) for i in range(min(limit, 24))]
    return np.stack([pre(img) for img in drawn]), SYNTHETIC_CHECK


def _spread(items: Any, n: int) -> Any:
    """At most n items, evenly spaced over the sequence."""
    step = max(1, len(items) // max(n, 1))
    return items[::step][:n]


# ---------------------------------------------------------------------------------------------
# Provenance.


def _source_kind(source: str) -> str:
    if source.startswith("models:/"):
        return "mlflow_registry"
    if source.startswith("runs:/") or RUN_ID.fullmatch(source):
        return "mlflow_run"
    return "checkpoint"


def _provenance(
    ckpt: Checkpoint,
    cfg: ExportConfig,
    source: Path,
    onnx_sha: str,
    parity: ParityReport,
    simplification: Simplification | None,
    trt: ModuleType | None,
    gpu: trt_export.GpuInfo | None,
    build: _TrtBuild | None,
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
        "source_kind": _source_kind(cfg.source),
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
        "precision_gate": build.gate.to_dict() if build else None,
        "trt_accelerator": (
            {"precision_mode": cfg.precision.upper(), "gated": False}
            if cfg.trt_accelerator
            else None
        ),
    }
