"""The GPU check's numbers: output agreement between two runs of a model, and images/s of
PyTorch (CPU, GPU FP32 and FP16 autocast) and of the TensorRT plans it built."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .gpu_record import Skip, need_trt


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def compare(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Largest differences of logits and probabilities, and the top-1 agreement."""
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    return {
        "max_abs_logits": float(np.abs(ref - got).max()),
        "max_abs_probs": float(np.abs(_softmax(ref) - _softmax(got)).max()),
        "top1_agreement": float((ref.argmax(1) == got.argmax(1)).mean()),
    }


def images_per_s(fn: Callable[[], Any], batch: int, iters: int, sync: Callable[[], Any]) -> float:
    for _ in range(3):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return round(batch * iters / (time.perf_counter() - t0), 1)


def torch_speed(device: str) -> dict[str, float]:
    """efficientnet_lite0 at 224 px: CPU batch 8, and on a GPU batch 1 and 64 in FP32 and
    FP16 autocast (channels_last)."""
    from plantdx.models import create_model

    model = create_model("efficientnet_lite0", num_classes=15, pretrained=False, image_size=224)
    model = model.eval()
    out = {}
    with torch.no_grad():
        x = torch.randn(8, 3, 224, 224)
        out["torch_cpu_batch8"] = images_per_s(lambda: model(x), 8, 3, lambda: None)
        if device == "cuda":
            m = model.to("cuda").to(memory_format=torch.channels_last)
            for b in (1, 64):
                xg = torch.randn(b, 3, 224, 224, device="cuda").contiguous(
                    memory_format=torch.channels_last
                )
                sync = torch.cuda.synchronize
                out[f"torch_gpu_fp32_batch{b}"] = images_per_s(lambda: m(xg), b, 30, sync)  # noqa: B023
                with torch.autocast("cuda", dtype=torch.float16):
                    out[f"torch_gpu_fp16_batch{b}"] = images_per_s(lambda: m(xg), b, 30, sync)  # noqa: B023
    return out


def trt_speed(device: str, plans: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Images/s of each plan built (`plans`: precision → its export, as `Steps.trt` holds
    them), batch 64, host↔device copies included (as in serving)."""
    need_trt(device)
    if not plans:
        raise Skip("no plan was built")
    import tensorrt as trt

    from plantdx.export.tensorrt import PlanRunner

    # The plans take the classifier's uint8 pixels (normalised inside the network).
    x = np.random.default_rng(0).integers(0, 256, (64, 3, 224, 224), dtype=np.uint8)
    out = {}
    for precision, built in plans.items():
        plan = Path(built["repo"]) / "classifier" / str(built["version"]) / built["file"]
        runner = PlanRunner(trt, plan, max_batch=64)
        out[precision] = images_per_s(lambda: runner(x), 64, 20, torch.cuda.synchronize)  # noqa: B023
    return out
