"""TensorRT: a plan is built on the GPU that will run it, with the TensorRT that will load it.

`build_plan` drives the TensorRT Python API on the exported ONNX file: explicit batch, one
optimisation profile (min 1, opt, max), FP16 or INT8 (an entropy calibrator fed by
plantdx.preprocessing, with a calibration cache), and a timing cache reused across builds.
`PlanRunner` runs a plan for the precision gate, which compares its top-1 answers with the
FP32 ONNX model before a reduced-precision version may be published.

A plan only loads on the compute capability it was built on, so plans are named after it
(model_sm90.plan) and listed in the version's engines.json, from which the config's
`cc_model_filenames` is written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from plantdx.checkpoint import file_sha256
from plantdx.data import is_image_file
from plantdx.exceptions import (
    ConfigError,
    DatasetError,
    ExportError,
    PrecisionGateError,
    PreprocessError,
    TensorRTUnavailableError,
)
from plantdx.model_repository.names import ONNX_INPUT, ONNX_OUTPUT
from plantdx.model_repository.repository import ENGINES_FILENAME, read_json
from plantdx.preprocessing import PreprocessMeta, Preprocessor

log = logging.getLogger(__name__)

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


# ---------------------------------------------------------------------------------------------
# Build settings.


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

    def batches(self) -> Iterator[np.ndarray]:
        """Full batches of preprocessed images; unreadable files are skipped."""
        pre = Preprocessor(self.meta)
        batch: list[np.ndarray] = []
        for path in self.images:
            try:
                batch.append(pre(path.read_bytes()))
            except PreprocessError as exc:
                log.warning("calibration skips %s: %s", path, exc)
                continue
            if len(batch) == self.batch_size:
                yield np.ascontiguousarray(np.stack(batch), dtype=np.float32)
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
            _atomic_write_bytes(calibration.cache_path, bytes(cache))

    return EntropyCalibrator()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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
    _atomic_write_bytes(settings.timing_cache, timing_after)

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


# ---------------------------------------------------------------------------------------------
# Running a plan, and the precision gate.


class PlanRunner:
    """Runs a plan on the GPU with PyTorch tensors as I/O buffers (TensorRT 8.5+ tensor API)."""

    def __init__(
        self,
        trt: ModuleType,
        plan_path: Path,
        *,
        max_batch: int,
        input_name: str = ONNX_INPUT,
        output_name: str = ONNX_OUTPUT,
    ) -> None:
        import torch

        self.torch = torch
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise ExportError(f"TensorRT could not load the plan it just built ({plan_path.name})")
        self.context = self.engine.create_execution_context()
        self.max_batch = max_batch
        self.input_name, self.output_name = input_name, output_name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = self.torch
        stream = torch.cuda.Stream()
        out = []
        with torch.cuda.stream(stream):
            for i in range(0, len(batch), self.max_batch):
                x = torch.from_numpy(np.ascontiguousarray(batch[i : i + self.max_batch])).to("cuda")
                if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
                    raise ExportError(f"the plan refuses input shape {tuple(x.shape)}")
                shape = tuple(self.context.get_tensor_shape(self.output_name))
                y = torch.empty(shape, dtype=torch.float32, device="cuda")
                self.context.set_tensor_address(self.input_name, int(x.data_ptr()))
                self.context.set_tensor_address(self.output_name, int(y.data_ptr()))
                if not self.context.execute_async_v3(stream.cuda_stream):
                    raise ExportError("TensorRT failed to run the plan")
                stream.synchronize()
                out.append(y.cpu().numpy())
        return np.concatenate(out)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


@dataclass
class GateReport:
    """Top-1 agreement of a plan with the FP32 ONNX model on the same preprocessed images."""

    precision: str
    compute_capability: str
    n_images: int
    top1_agreement: float
    min_top1_agreement: float
    max_abs_diff_probs: float
    mean_abs_diff_probs: float
    source: str
    reference: str = "FP32 ONNX model, onnxruntime CPU"

    @property
    def passed(self) -> bool:
        return self.top1_agreement >= self.min_top1_agreement

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def precision_gate(
    reference_logits: np.ndarray,
    plan_logits: np.ndarray,
    *,
    precision: str,
    gpu: GpuInfo,
    min_agreement: float,
    source: str,
) -> GateReport:
    if reference_logits.shape != plan_logits.shape:
        raise ExportError(
            f"the plan answered shape {plan_logits.shape}; FP32 answered {reference_logits.shape}"
        )
    ref = reference_logits.astype(np.float64)
    got = plan_logits.astype(np.float64)
    if not np.isfinite(got).all():
        agreement = 0.0  # NaN/inf (FP16 overflow) never counts as agreeing
    else:
        agreement = float((ref.argmax(1) == got.argmax(1)).mean())
    diff = np.abs(_softmax(ref) - _softmax(np.nan_to_num(got)))
    return GateReport(
        precision=precision,
        compute_capability=gpu.compute_capability,
        n_images=len(ref),
        top1_agreement=agreement,
        min_top1_agreement=min_agreement,
        max_abs_diff_probs=float(diff.max()),
        mean_abs_diff_probs=float(diff.mean()),
        source=source,
    )


def require_gate(report: GateReport) -> None:
    if not report.passed:
        raise PrecisionGateError(
            f"the {report.precision.upper()} plan (sm{report.compute_capability}) agrees with "
            f"FP32 on {report.top1_agreement:.2%} of {report.n_images} images from "
            f"{report.source} (need {report.min_top1_agreement:.0%}); nothing was published. "
            "Try FP32, more or more representative --calibration images for INT8, or "
            "--gate-threshold if the drop is acceptable"
        )


# ---------------------------------------------------------------------------------------------
# Carrying the plans of other GPU architectures into the next version.


def carry_plans(
    previous_dir: Path | None,
    dest: Path,
    *,
    identity: dict[str, Any],
    gpu: GpuInfo,
    tensorrt_version: str,
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Copy the previous version's plans for other GPU architectures when they are the same model.

    Versions are immutable, so a build on a new architecture publishes a new version that
    holds the new plan and the earlier ones: same ONNX file, precision and profile (the
    `identity`), and the same TensorRT version (Triton loads every plan with one TensorRT).
    Returns the carried engines.json entries and notes on the plans left behind.
    """
    if previous_dir is None:
        return {}, []
    previous = read_json(previous_dir / ENGINES_FILENAME)
    carried: dict[str, Any] = {}
    left: list[dict[str, str]] = []
    if previous.get("identity") != identity:
        return {}, [
            {"version": previous_dir.name, "reason": "another model, precision or profile"}
        ] if previous.get("plans") else []
    for cc, entry in sorted(previous.get("plans", {}).items()):
        if cc == gpu.compute_capability:
            continue  # rebuilt now
        if entry.get("tensorrt") != tensorrt_version:
            left.append(
                {
                    "compute_capability": cc,
                    "reason": f"built with TensorRT {entry.get('tensorrt')}, this build uses "
                    f"{tensorrt_version}",
                }
            )
            continue
        src = previous_dir / entry["file"]
        if not src.is_file() or file_sha256(src) != entry.get("sha256"):
            left.append({"compute_capability": cc, "reason": f"{src.name} is missing or changed"})
            continue
        shutil.copy2(src, dest / entry["file"])
        carried[cc] = {
            **entry,
            "carried_from_version": int(previous_dir.name),
        }
    return carried, left
