"""Building a TensorRT plan from the exported ONNX file, with its INT8 calibrator.

`build_plan` drives the TensorRT Python API: explicit batch, one optimisation profile (min 1,
opt, max), FP16 or INT8 (an entropy calibrator fed by plantdx.preprocessing, with a calibration
cache), and a timing cache reused across builds.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from plantdx.checkpoint import file_sha256
from plantdx.exceptions import ConfigError, ExportError

from .tensorrt_gpu import GpuInfo, trt_version
from .tensorrt_settings import BuildSettings, Calibration, atomic_write_bytes

# ---------------------------------------------------------------------------------------------
# Device memory for the calibrator: PyTorch's CUDA allocator (no pycuda/cuda-python needed).


def device_buffer(batch: np.ndarray) -> tuple[Any, int]:
    """Copy a host batch to the GPU; returns (an object keeping it alive, its device pointer)."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(batch)).to("cuda")
    return tensor, int(tensor.data_ptr())


def make_calibrator(trt: ModuleType, calibration: Calibration) -> Any:
    """An IInt8EntropyCalibrator2 over the calibration images, with a cache file."""
    base = trt.IInt8EntropyCalibrator2

    class EntropyCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.batches = calibration.batches()
            self.current: Any = None
            self.batches_served = 0
            self.cache_hit = False

        def get_batch_size(self) -> int:
            return calibration.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            try:
                batch = next(self.batches)
            except StopIteration:
                return None
            self.current, pointer = device_buffer(batch)
            self.batches_served += 1
            return [pointer]

        def read_calibration_cache(self) -> bytes | None:
            if calibration.cache_path.is_file():
                self.cache_hit = True
                return calibration.cache_path.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write_bytes(calibration.cache_path, bytes(cache))

    return EntropyCalibrator()


# ---------------------------------------------------------------------------------------------
# The build.


@dataclass
class PlanBuild:
    """A plan that was built, and everything needed to reproduce or audit it."""

    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


def build_plan(
    trt: ModuleType,
    onnx_path: Path,
    plan_path: Path,
    settings: BuildSettings,
    gpu: GpuInfo,
) -> PlanBuild:
    started = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch; 8.x must be asked for it.
    flags = 0
    if trt_version(trt)[0] < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse the ONNX model: {errors or 'unknown error'}")
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    if inputs != [settings.profile.name]:
        raise ExportError(
            f"the ONNX model has inputs {inputs}; expected [{settings.profile.name!r}]"
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    profile = builder.create_optimization_profile()
    p = settings.profile
    profile.set_shape(p.name, p.shape(p.min), p.shape(p.opt), p.shape(p.max))
    config.add_optimization_profile(profile)

    flag_names = _set_precision(trt, config, settings.precision)
    calibrator = None
    if settings.precision == "int8":
        if settings.calibration is None:
            raise ConfigError("INT8 needs calibration images (--calibration DIR)")
        calibrator = make_calibrator(trt, settings.calibration)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)

    timing_before = settings.timing_cache.read_bytes() if settings.timing_cache.is_file() else b""
    timing = config.create_timing_cache(timing_before)
    config.set_timing_cache(timing, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(
            "TensorRT could not build the engine (see its log above: unsupported layer, "
            "not enough workspace, or calibration failure)"
        )
    plan_path.write_bytes(memoryview(serialized).tobytes())
    timing_after = bytes(memoryview(config.get_timing_cache().serialize()))
    atomic_write_bytes(settings.timing_cache, timing_after)

    metadata: dict[str, Any] = {
        "file": plan_path.name,
        "sha256": file_sha256(plan_path),
        "bytes": plan_path.stat().st_size,
        "tensorrt": str(trt.__version__),
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
        "precision": settings.precision,
        "builder_flags": flag_names,
        "profile": p.to_dict(),
        "workspace_bytes": settings.workspace_bytes,
        "timing_cache": {
            "path": str(settings.timing_cache),
            "bytes_before": len(timing_before),
            "bytes_after": len(timing_after),
        },
        "calibration": None,
        "build_seconds": round(time.perf_counter() - started, 2),
        "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if calibrator is not None and settings.calibration is not None:
        c = settings.calibration
        metadata["calibration"] = {
            "algorithm": "IInt8EntropyCalibrator2",
            "source": c.source,
            "images": len(c.images),
            "batch_size": c.batch_size,
            "batches_fed": calibrator.batches_served,
            "cache": str(c.cache_path),
            "cache_reused": calibrator.cache_hit,
        }
        if not calibrator.cache_hit and calibrator.batches_served == 0:
            raise ExportError(
                f"no calibration batch of {c.batch_size} readable images in {c.source}"
            )
    return PlanBuild(plan_path, metadata)


def _set_precision(trt: ModuleType, config: Any, precision: str) -> list[str]:
    flags: list[str] = []
    if precision == "fp32":
        # TF32 is on by default on Ampere and newer; an "fp32" plan means real FP32.
        config.clear_flag(trt.BuilderFlag.TF32)
        return ["-TF32"]
    # INT8 layers fall back to FP16 rather than FP32 where TensorRT has no INT8 kernel.
    config.set_flag(trt.BuilderFlag.FP16)
    flags.append("FP16")
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        flags.append("INT8")
    return flags
