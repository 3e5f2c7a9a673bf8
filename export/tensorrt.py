"""TensorRT: a plan is built on the GPU that will run it, with the TensorRT that will load it.

The work lives in one module per job; this module gathers their public names, so callers write
`from plantdx.export import tensorrt as trt_export`:

- `tensorrt_gpu`: is TensorRT usable here (`require_tensorrt`, `detect_gpu`), and plan names.
  A plan only loads on the compute capability it was built on, so plans are named after it
  (model_sm90.plan).
- `tensorrt_settings`: the build settings — the optimisation profile, the INT8 calibration
  images and the timing and calibration caches.
- `tensorrt_build`: `build_plan` drives the TensorRT Python API on the exported ONNX file:
  explicit batch, one optimisation profile (min 1, opt, max), FP16 or INT8 (an entropy
  calibrator fed by plantdx.preprocessing, with a calibration cache), and a timing cache reused
  across builds.
- `tensorrt_gate`: `PlanRunner` runs a plan for the precision gate, which compares its top-1
  answers with the FP32 ONNX model before a reduced-precision version may be published.
- `tensorrt_carry`: the version's plans are listed in its engines.json, from which the
  config's `cc_model_filenames` is written; plans built for other GPUs are carried into the
  next version.
"""

from __future__ import annotations

from .tensorrt_build import PlanBuild, build_plan, device_buffer, make_calibrator
from .tensorrt_carry import carry_plans
from .tensorrt_gate import GateReport, PlanRunner, precision_gate, require_gate
from .tensorrt_gpu import (
    GPU_BUILD_HINT,
    MIN_TENSORRT,
    GpuInfo,
    detect_gpu,
    plan_filename,
    require_tensorrt,
    trt_version,
)
from .tensorrt_settings import (
    BuildSettings,
    Calibration,
    Profile,
    cache_dir,
    calibration_cache_path,
    calibration_images,
    default_timing_cache,
)

__all__ = [
    "GPU_BUILD_HINT",
    "MIN_TENSORRT",
    "BuildSettings",
    "Calibration",
    "GateReport",
    "GpuInfo",
    "PlanBuild",
    "PlanRunner",
    "Profile",
    "build_plan",
    "cache_dir",
    "calibration_cache_path",
    "calibration_images",
    "carry_plans",
    "default_timing_cache",
    "detect_gpu",
    "device_buffer",
    "make_calibrator",
    "plan_filename",
    "precision_gate",
    "require_gate",
    "require_tensorrt",
    "trt_version",
]
