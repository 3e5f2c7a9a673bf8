"""`plantdx export`: checkpoint → ONNX (→ TensorRT) → parity check → repository version."""

from __future__ import annotations

import datetime as dt
import logging
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from plantdx.checkpoint import Checkpoint, file_sha256, load_checkpoint
from plantdx.data import SPLIT_FILENAME, load_split, scan_image_folder
from plantdx.exceptions import DatasetError, ExportError, PreprocessError
from plantdx.model_repository.config import Batching, ServingOptions
from plantdx.model_repository.repository import publish_version
from plantdx.preprocessing import Preprocessor

from .onnx import DEFAULT_OPSET, check_parity, export_onnx, require_parity

log = logging.getLogger(__name__)


@dataclass
class ExportConfig:
    source: str = ""
    to: Literal["onnx", "tensorrt"] = "onnx"
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    repository: str = "model_repository_out"
    target: Literal["local", "triton"] = "local"
    kind: Literal["cpu", "gpu"] = "cpu"
    max_batch: int = 32
    opt_batch: int = 8
    opset: int = DEFAULT_OPSET
    check_data: str | None = None
    check_images: int = 64
    calibration: str | None = None
    max_abs_diff: float = 1e-4
    min_top1_agreement: float = 1.0
    version_policy: Literal["latest", "all", "specific"] = "latest"
    serving: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportResult:
    repository: Path
    version: int
    parity: dict[str, Any]
    provenance: dict[str, Any]


def _check_images(ckpt: Checkpoint, cfg: ExportConfig, source_path: Path) -> tuple[np.ndarray, str]:
    """Preprocessed real images for the parity check: --check-data, else the run's test split."""
    pre = Preprocessor(ckpt.preprocessing)
    paths: list[Path] = []
    where = ""
    if cfg.check_data:
        folder = scan_image_folder(cfg.check_data, min_classes=1)
        paths = [s.path for s in folder.samples]
        where = str(cfg.check_data)
    else:
        split_file = source_path.parent / SPLIT_FILENAME
        if split_file.is_file():
            try:
                _, split = load_split(split_file)
                paths = [s.path for s in split["test"] + split["val"] if s.path.is_file()]
                where = f"the test split of {split_file.parent}"
            except DatasetError:
                paths = []
    if paths:
        step = max(1, len(paths) // cfg.check_images)
        arrays = []
        for p in paths[::step][: cfg.check_images]:
            try:
                arrays.append(pre(p.read_bytes()))
            except PreprocessError:
                continue
        if arrays:
            return np.stack(arrays), where
    from plantdx.synth import CLASSES, draw_leaf

    rng = np.random.default_rng(0)
    images = [draw_leaf(CLASSES[i % len(CLASSES)], rng) for i in range(min(cfg.check_images, 24))]
    return np.stack([pre(img) for img in images]), "generated leaf images (no real images found)"


def _resolve_source(source: str) -> Path:
    path = Path(source)
    if path.is_dir():
        path = path / "best.pt"
    if path.is_file():
        return path
    if source.startswith(("models:/", "runs:/")) or len(source) == 32:
        from plantdx.tracking import download_checkpoint

        return download_checkpoint(source)
    raise ExportError(
        f"export source {source!r} is not a checkpoint file, run directory or MLflow URI"
    )


def export(cfg: ExportConfig) -> ExportResult:
    if cfg.to == "tensorrt":
        from .tensorrt import require_tensorrt

        require_tensorrt()
    source_path = _resolve_source(cfg.source)
    ckpt = load_checkpoint(source_path)
    model = ckpt.build_model()
    image_size = ckpt.preprocessing.image_size
    batch, where = _check_images(ckpt, cfg, source_path)
    with tempfile.TemporaryDirectory(prefix="plantdx-export-") as tmp:
        onnx_path = export_onnx(
            model, Path(tmp) / "model.onnx", image_size=image_size, opset=cfg.opset
        )
        report = check_parity(
            model,
            onnx_path,
            batch,
            source=where,
            max_abs=cfg.max_abs_diff,
            min_agreement=cfg.min_top1_agreement,
        )
        require_parity(report)
        provenance = _provenance(ckpt, cfg, source_path, onnx_path, report.to_dict())
        opts = ServingOptions(
            kind=cfg.kind,
            classifier=Batching(
                max_batch_size=cfg.max_batch, preferred_batch_sizes=(cfg.opt_batch,)
            ),
            version_policy=cfg.version_policy,
        )

        def write_files(dest: Path) -> None:
            import shutil

            shutil.copyfile(onnx_path, dest / "model.onnx")

        version = publish_version(
            cfg.repository,
            class_names=ckpt.class_names,
            meta=ckpt.preprocessing,
            write_classifier_files=write_files,
            provenance=provenance,
            options=opts,
            target=cfg.target,
        )
    return ExportResult(Path(cfg.repository), version, report.to_dict(), provenance)


def _provenance(
    ckpt: Checkpoint, cfg: ExportConfig, source: Path, onnx_path: Path, parity: dict[str, Any]
) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch

    import plantdx

    return {
        "source": str(cfg.source),
        "checkpoint": str(source.resolve()),
        "checkpoint_sha256": file_sha256(source),
        "onnx_sha256": file_sha256(onnx_path),
        "mlflow_run_id": ckpt.mlflow_run_id,
        "model_name": ckpt.model_name,
        "num_classes": ckpt.num_classes,
        "precision": cfg.precision,
        "format": cfg.to,
        "opset": cfg.opset,
        "preprocessing": ckpt.preprocessing.to_dict(),
        "metrics": {k: v for k, v in ckpt.metrics.items() if isinstance(v, int | float)},
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "tools": {
            "plantdx": plantdx.__version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
        "parity": parity,
    }
