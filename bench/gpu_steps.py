"""The GPU check's steps, in order: environment; synthetic leaves; one training epoch with
mixed precision for test_tiny and efficientnet_lite0; ONNX export with the parity check;
GPU-versus-CPU outputs (PyTorch FP32, FP16 autocast, onnxruntime CUDA); images/s; TensorRT
FP32/FP16/INT8 builds with the precision gate and `repo validate` when tensorrt imports; the
`gpu`-marked tests when pytest is there."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plantdx.choices import Device, Precision

from .gpu_record import Check, Skip, need, need_trt, version

_MODULES = ("plantdx", "onnx", "onnxruntime", "tensorrt", "tritonclient", "mlflow",
            "albumentations", "cv2", "onnxslim", "pytest")  # fmt: skip


class Steps:
    def __init__(self, check: Check, device: Device) -> None:
        self.check, self.device = check, device
        self.work = check.work
        self.leaves, self.check_dir = check.work / "leaves", check.work / "check"
        self.runs: dict[str, Path] = {}
        self.trt: dict[str, dict[str, Any]] = {}

    def environment(self) -> dict[str, Any]:
        cuda = self.device == "cuda"
        info: dict[str, Any] = {
            "device": self.device,
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
        }
        if cuda:
            info["gpu"] = torch.cuda.get_device_name(0)
            info["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        for m in _MODULES:
            info[m] = version(m)
        try:
            import onnxruntime as ort

            info["onnxruntime_providers"] = ort.get_available_providers()
        except ImportError:
            pass
        return info

    def synth(self) -> dict[str, Any]:
        from plantdx.synth import generate_dataset

        train = generate_dataset(self.leaves, per_class=60, size=192, seed=0)
        check = generate_dataset(self.check_dir, per_class=10, size=192, seed=1)
        return {"train_images": sum(train.values()), "check_images": sum(check.values()),
                "classes": len(train)}  # fmt: skip

    def train_one_epoch(self, model: str, image_size: int, pretrained: bool) -> dict[str, Any]:
        if not self.leaves.is_dir():
            raise Skip("no synthetic data")
        need("albumentations")
        from plantdx.training import TrainConfig, train
        from plantdx.training.progress import Reporter

        out = self.work / f"run-{model}"
        cfg = TrainConfig(data=str(self.leaves), out=str(out), model=model, pretrained=pretrained,
                          image_size=image_size, epochs=1, batch_size=32, lr=2e-3,
                          device=self.device, amp=True, channels_last=True, mlflow=False,
                          warmup_epochs=0.2)  # fmt: skip
        t0 = time.perf_counter()
        result = train(cfg, reporter=Reporter(quiet=True))
        history = json.loads((out / "history.json").read_text())
        self.runs[model] = out / "best.pt"
        return {"device": result.metrics.get("device"), "amp": self.device == "cuda",
                "pretrained": pretrained, "seconds": round(time.perf_counter() - t0, 1),
                "train_img_per_s": round(history[-1]["train_img_per_s"], 1),
                "val_acc": round(result.metrics["val_acc"], 3),
                "test_acc": round(result.metrics["test_acc"], 3)}  # fmt: skip

    def lite0(self) -> dict[str, Any]:
        try:
            from plantdx.models import lite0_weights_path

            lite0_weights_path()
            pretrained = True
        except Exception:
            pretrained = False  # no weights package: random init, the speed is what counts here
        return self.train_one_epoch("efficientnet_lite0", 224, pretrained=pretrained)

    def checkpoint(self) -> Path:
        for name in ("efficientnet_lite0", "test_tiny"):
            if name in self.runs:
                return self.runs[name]
        raise Skip("no trained checkpoint")

    def onnx(self) -> dict[str, Any]:
        need("onnx"), need("onnxruntime"), need("tritonclient")
        from plantdx.export import ExportConfig, export
        from plantdx.model_repository.validate import validate_repository

        repo = self.work / "repo-onnx"
        t0 = time.perf_counter()
        r = export(ExportConfig(source=str(self.checkpoint()), repository=str(repo),
                                check_data=str(self.check_dir), simplify=True))  # fmt: skip
        return {"seconds": round(time.perf_counter() - t0, 1), "parity": r.parity,
                "simplify": r.provenance["simplify"], "notes": r.notes,
                "validate": validate_repository(repo) or "ok"}  # fmt: skip

    def check_batch(self, meta: Any) -> np.ndarray:
        """The check photos as the exported classifier takes them (uint8 pixels)."""
        from plantdx.data import list_images
        from plantdx.preprocessing import Preprocessor

        pre = Preprocessor(meta)
        return np.stack([pre.pixels(p.read_bytes()) for p in list_images(self.check_dir)])

    def compare_outputs(self) -> dict[str, Any]:
        from plantdx.checkpoint import load_checkpoint
        from plantdx.export.onnx import torch_pixels

        from .gpu_speed import compare

        ckpt = load_checkpoint(self.checkpoint())
        pixels = self.check_batch(ckpt.preprocessing)
        x = torch.from_numpy(torch_pixels(pixels, ckpt.preprocessing))
        model = ckpt.build_model().eval()
        out: dict[str, Any] = {"model": ckpt.model_name, "images": len(x)}
        with torch.no_grad():
            cpu = model(x).numpy()
            tf32 = torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = False  # FP32 on the GPU means FP32 here
            dev = model.to(self.device)
            out["torch_fp32_vs_cpu"] = compare(cpu, dev(x.to(self.device)).float().cpu().numpy())
            torch.backends.cudnn.allow_tf32 = tf32
            half = torch.float16 if self.device == "cuda" else torch.bfloat16
            with torch.autocast(self.device, dtype=half):
                got = dev(x.to(self.device)).float().cpu().numpy()
                out["torch_autocast_vs_cpu"] = compare(cpu, got)
        onnx_file = self.work / "repo-onnx" / "classifier" / "1" / "model.onnx"
        try:
            import onnxruntime as ort
        except ImportError:
            ort = None
        if ort is not None and onnx_file.is_file():
            cpu_s = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
            ref = cpu_s.run(None, {"input": pixels})[0]
            out["onnxruntime_cpu_vs_torch_cpu"] = compare(cpu, ref)
            if "CUDAExecutionProvider" in ort.get_available_providers():
                cuda_s = ort.InferenceSession(str(onnx_file), providers=["CUDAExecutionProvider"])
                got = cuda_s.run(None, {"input": pixels})[0]
                out["onnxruntime_cuda_vs_cpu"] = compare(ref, got)
            else:
                out["onnxruntime_cuda_vs_cpu"] = "skipped: onnxruntime has no CUDAExecutionProvider"
        return out

    def trt_export(self, precision: Precision, **kw: Any) -> dict[str, Any]:
        need_trt(self.device)
        from plantdx.export import ExportConfig, export
        from plantdx.model_repository.validate import validate_repository

        repo = self.work / "repo-trt"
        t0 = time.perf_counter()
        r = export(ExportConfig(source=str(self.checkpoint()), repository=str(repo),
                                to="tensorrt", precision=precision,
                                check_data=str(self.check_dir), max_batch=64, opt_batch=16,
                                **kw))  # fmt: skip
        plan = next(iter(p for p in r.plans.values() if "carried_from_version" not in p))
        self.trt[precision] = {
            "version": r.version, "seconds": round(time.perf_counter() - t0, 1),
            "build_seconds": plan["build_seconds"], "plan_mb": round(plan["bytes"] / 1e6, 1),
            "gate": r.gate, "validate": validate_repository(repo) or "ok", "repo": str(repo),
            "file": plan["file"],
        }  # fmt: skip
        return self.trt[precision]

    def pytest_gpu(self) -> dict[str, Any]:
        need("pytest")
        root = self.check.root
        tests = [str(root / "tests" / "export" / "test_export_tensorrt.py")]
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "gpu", *tests],
            capture_output=True, text=True, cwd=root, timeout=max(10, self.check.left() - 5),
        )  # fmt: skip
        tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
        if r.returncode not in (0, 5):
            raise RuntimeError("; ".join(tail))
        if " passed" not in tail[-1]:
            raise Skip(tail[-1])
        return {"exit_code": r.returncode, "summary": tail}


def run_steps(check: Check, device: Device) -> Steps:
    """Every step in order; each is recorded by `check`."""
    from . import gpu_speed

    s = Steps(check, device)
    plan: list[tuple[str, float, Callable[[], Any]]] = [
        ("environment", 0, s.environment),
        ("synthetic leaves (plantdx data synth)", 20, s.synth),
        ("train test_tiny, 1 epoch, mixed precision", 20,
         lambda: s.train_one_epoch("test_tiny", 64, pretrained=False)),
        ("train efficientnet_lite0, 1 epoch, mixed precision", 60, s.lite0),
        ("ONNX export + parity (plantdx export --to onnx)", 30, s.onnx),
        ("GPU versus CPU outputs", 30, s.compare_outputs),
        ("inference images/s (efficientnet_lite0, 224 px)", 40,
         lambda: gpu_speed.torch_speed(device)),
        ("TensorRT FP32 plan + gate", 60, lambda: s.trt_export("fp32")),
        ("TensorRT FP16 plan + gate", 60, lambda: s.trt_export("fp16")),
        ("TensorRT INT8 plan (entropy calibration) + gate", 60,
         lambda: s.trt_export("int8", calibration=str(s.leaves), calibration_images=256)),
        ("TensorRT plan images/s (batch 64)", 20, lambda: gpu_speed.trt_speed(device, s.trt)),
        ("pytest -m gpu (tests that need a GPU)", 60, s.pytest_gpu),
    ]  # fmt: skip
    for name, needs_s, fn in plan:
        check.step(name, fn, needs_s)
    return s
