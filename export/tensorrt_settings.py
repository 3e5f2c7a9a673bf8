"""What a TensorRT build is asked for: the optimisation profile, the precision, the INT8
calibration images, and where the timing and calibration caches live."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from plantdx.data import is_image_file
from plantdx.exceptions import ConfigError, DatasetError, PreprocessError
from plantdx.model_repository.names import ONNX_INPUT
from plantdx.preprocessing import PreprocessMeta, Preprocessor

from .tensorrt_gpu import GpuInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Profile:
    """The one optimisation profile: batch sizes for the input `name` of size image_size²."""

    min: int
    opt: int
    max: int
    image_size: int
    name: str = ONNX_INPUT

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ConfigError(
                f"batch sizes must satisfy 1 <= min <= opt <= max, got "
                f"min {self.min}, opt {self.opt}, max {self.max}"
            )

    def shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, 3, self.image_size, self.image_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": self.name,
            "min": list(self.shape(self.min)),
            "opt": list(self.shape(self.opt)),
            "max": list(self.shape(self.max)),
        }


@dataclass(frozen=True)
class Calibration:
    """INT8 calibration: images (any folder layout) and where the calibration cache lives."""

    images: tuple[Path, ...]
    meta: PreprocessMeta
    batch_size: int
    cache_path: Path
    source: str
    # The network takes uint8 pixels and normalises them itself (export.onnx.NormalizedInput);
    # False: normalised float32 pixels (a repository made before that).
    uint8: bool = False

    def batches(self) -> Iterator[np.ndarray]:
        """Full batches of preprocessed images, as the network takes them; unreadable files
        are skipped."""
        base = Preprocessor(self.meta)
        pre = base.pixels if self.uint8 else base
        dtype = np.uint8 if self.uint8 else np.float32
        batch: list[np.ndarray] = []
        for path in self.images:
            try:
                batch.append(pre(path.read_bytes()))
            except PreprocessError as exc:
                log.warning("calibration skips %s: %s", path, exc)
                continue
            if len(batch) == self.batch_size:
                yield np.ascontiguousarray(np.stack(batch), dtype=dtype)
                batch = []


@dataclass(frozen=True)
class BuildSettings:
    precision: str  # fp32 | fp16 | int8
    profile: Profile
    workspace_bytes: int
    timing_cache: Path
    calibration: Calibration | None = None


def cache_dir() -> Path:
    """Timing and calibration caches: $PLANTDX_CACHE, else the user's cache directory."""
    root = os.environ.get("PLANTDX_CACHE") or os.environ.get("XDG_CACHE_HOME")
    base = Path(root) if root else Path.home() / ".cache"
    return (base if os.environ.get("PLANTDX_CACHE") else base / "plantdx") / "tensorrt"


def default_timing_cache(trt: ModuleType, gpu: GpuInfo) -> Path:
    # Timing entries are per GPU and TensorRT version; one file per pair keeps them valid.
    return cache_dir() / f"timing-trt{trt.__version__}-sm{gpu.sm}.cache"


def calibration_images(folder: str | Path, limit: int) -> list[Path]:
    """Up to `limit` images spread evenly over a folder (any layout, searched recursively)."""
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"calibration folder {root} does not exist")
    paths = sorted(p for p in root.rglob("*") if is_image_file(p))
    if not paths:
        raise DatasetError(f"calibration folder {root} holds no images")
    step = max(1, len(paths) // max(limit, 1))
    return paths[::step][:limit]


def calibration_cache_path(onnx_sha256: str, images: Sequence[Path], meta: PreprocessMeta) -> Path:
    """A cache file keyed by the model, the images and their preprocessing."""
    h = hashlib.sha256(onnx_sha256.encode())
    h.update(json.dumps(meta.to_dict(), sort_keys=True).encode())
    for p in images:
        h.update(f"{p}:{p.stat().st_size}\n".encode())
    return cache_dir() / f"calibration-{h.hexdigest()[:24]}.cache"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
