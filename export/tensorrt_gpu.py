"""Can a TensorRT plan be built here: the TensorRT package, its version, the GPU it runs on.

A plan only loads on the compute capability it was built on, so plans are named after it
(model_sm90.plan).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from types import ModuleType

from plantdx.exceptions import TensorRTUnavailableError

GPU_BUILD_HINT = (
    "build the engine on a GPU node instead: the Kubernetes Job in k8s/jobs/tensorrt-build runs "
    "`plantdx export SOURCE --to tensorrt --target triton --kind gpu` in the NGC tritonserver "
    "image on the serving GPU pool (kubectl apply -k k8s/jobs/tensorrt-build), or run that "
    "command on a machine with an NVIDIA GPU and driver after `pip install 'plantdx[gpu]'`"
)
MIN_TENSORRT = (8, 6)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "9.0", the key Triton's cc_model_filenames uses

    @property
    def sm(self) -> str:
        return self.compute_capability.replace(".", "")


def detect_gpu() -> GpuInfo | None:
    """The first CUDA device as PyTorch sees it (the calibrator and the gate use its memory)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return GpuInfo(torch.cuda.get_device_name(0), f"{major}.{minor}")


def _gpu_missing() -> str:
    if shutil.which("nvidia-smi") is None:
        return "an NVIDIA GPU driver (nvidia-smi)"
    return "a CUDA device visible to PyTorch (a CUDA build of torch)"


def require_tensorrt() -> tuple[ModuleType, GpuInfo]:
    """Fail at once, before any work, when TensorRT or a GPU is missing."""
    missing = []
    trt: ModuleType | None = None
    try:
        import tensorrt

        trt = tensorrt
    except ImportError:
        missing.append("the TensorRT Python package (tensorrt)")
    gpu = detect_gpu()
    if gpu is None:
        missing.append(_gpu_missing())
    if missing or trt is None or gpu is None:
        raise TensorRTUnavailableError(
            "cannot build a TensorRT engine here: missing "
            + " and ".join(missing)
            + "; "
            + GPU_BUILD_HINT
        )
    if trt_version(trt)[:2] < MIN_TENSORRT:
        raise TensorRTUnavailableError(
            f"TensorRT {trt.__version__} is too old; plantdx needs "
            f"{'.'.join(map(str, MIN_TENSORRT))} or newer; " + GPU_BUILD_HINT
        )
    return trt, gpu


def trt_version(trt: ModuleType) -> tuple[int, ...]:
    return tuple(int(p) for p in str(trt.__version__).split(".")[:3] if p.isdigit())


def plan_filename(gpu: GpuInfo) -> str:
    return f"model_sm{gpu.sm}.plan"
