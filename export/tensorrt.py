"""TensorRT: a plan is built on the GPU that will run it, with the TensorRT that will load it."""

from __future__ import annotations

import shutil

from plantdx.exceptions import TensorRTUnavailableError

GPU_BUILD_HINT = (
    "build the engine on a GPU node instead: run `plantdx export SOURCE --to tensorrt "
    "--target triton` inside the NGC tritonserver image (see k8s/base/ trt-build Job), or "
    "`pip install 'plantdx[gpu]'` on a machine with an NVIDIA GPU and driver"
)


def require_tensorrt() -> None:
    """Fail at once, before any work, when TensorRT or a GPU is missing."""
    missing = []
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        missing.append("the TensorRT Python package (tensorrt)")
    if shutil.which("nvidia-smi") is None:
        missing.append("an NVIDIA GPU driver (nvidia-smi)")
    else:
        try:
            import torch

            if not torch.cuda.is_available():
                missing.append("a CUDA device visible to PyTorch")
        except ImportError:
            pass
    if missing:
        raise TensorRTUnavailableError(
            "cannot build a TensorRT engine here: missing "
            + " and ".join(missing)
            + "; "
            + GPU_BUILD_HINT
        )
