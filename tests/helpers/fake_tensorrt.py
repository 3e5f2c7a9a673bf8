"""A stand-in for the `tensorrt` package on machines without TensorRT or a GPU.

It implements the part of the TensorRT Python API that plantdx.export.tensorrt calls, checks
the calls the way TensorRT would (profile names and shapes, calibrator protocol, timing cache),
records them, and writes a small JSON "plan". `FakeRunner` stands in for PlanRunner: it answers
with the ONNX model's own logits (the plan remembers its ONNX file), optionally distorted, so
the precision gate can be driven to pass or fail.

What this proves: everything around the build (options, profile, precision flags, calibration
feeding and caching, timing cache, metadata, repository layout, the gate's decision, the error
paths). What it cannot prove: that real TensorRT builds, or what accuracy FP16/INT8 really keep.
"""

from __future__ import annotations

import json
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PLAN_MAGIC = b"FAKEPLAN\n"


@dataclass
class Recorder:
    version: str = "10.3.0"
    compute_capability: str = "9.0"
    fail_build: bool = False
    calls: list[tuple[str, Any]] = field(default_factory=list)
    calibration_batches: list[np.ndarray] = field(default_factory=list)
    builds: int = 0

    def record(self, name: str, value: Any = None) -> None:
        self.calls.append((name, value))

    def values(self, name: str) -> list[Any]:
        return [v for n, v in self.calls if n == name]


def make_module(rec: Recorder) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = rec.version  # type: ignore[attr-defined]

    class Logger:
        ERROR, WARNING, INFO = 1, 2, 3

        def __init__(self, severity: int = 2) -> None:
            self.severity = severity

    class NetworkDefinitionCreationFlag:
        EXPLICIT_BATCH = 0

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class BuilderFlag:
        FP16, INT8, TF32 = "FP16", "INT8", "TF32"

    class IInt8EntropyCalibrator2:
        def __init__(self) -> None:
            pass

    @dataclass
    class Tensor:
        name: str
        shape: tuple[int, ...]

    class Network:
        def __init__(self) -> None:
            self.inputs: list[Tensor] = []
            self.onnx_path = ""

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path: str) -> bool:
            import onnx

            model = onnx.load(path)
            onnx.checker.check_model(model)
            for v in model.graph.input:
                dims = v.type.tensor_type.shape.dim
                shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
                self.network.inputs.append(Tensor(v.name, shape))
            self.network.onnx_path = path
            rec.record("parse", path)
            return True

        def get_error(self, i: int) -> str:
            return ""

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[Any, Any, Any]] = {}

        def set_shape(self, name: str, mn: Any, opt: Any, mx: Any) -> None:
            if not all(a <= b <= c for a, b, c in zip(mn, opt, mx, strict=True)):
                raise ValueError(f"profile shapes out of order: {mn} {opt} {mx}")
            self.shapes[name] = (tuple(mn), tuple(opt), tuple(mx))
            rec.record("set_shape", (name, tuple(mn), tuple(opt), tuple(mx)))

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def serialize(self) -> bytes:
            return self.data

    class Config:
        def __init__(self) -> None:
            self.flags = {BuilderFlag.TF32}  # TensorRT's default
            self.profiles: list[Profile] = []
            self.int8_calibrator: Any = None
            self.calibration_profile: Profile | None = None
            self.timing_cache: TimingCache | None = None

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            rec.record("memory_pool_limit", (pool, size))

        def set_flag(self, flag: str) -> None:
            self.flags.add(flag)

        def clear_flag(self, flag: str) -> None:
            self.flags.discard(flag)

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def set_calibration_profile(self, profile: Profile) -> None:
            self.calibration_profile = profile

        def create_timing_cache(self, data: bytes) -> TimingCache:
            rec.record("timing_cache_loaded", len(data))
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.timing_cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            assert self.timing_cache is not None
            return self.timing_cache

    class Builder:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            rec.record("create_network", flags)
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            rec.builds += 1
            rec.record("flags", sorted(config.flags))
            if rec.fail_build:
                return None
            if len(config.profiles) != 1:
                raise AssertionError("a dynamic-batch network needs exactly one profile")
            shapes = config.profiles[0].shapes
            for t in network.inputs:
                mn, opt, mx = shapes[t.name]  # KeyError: profile names another tensor
                for got in (mn, opt, mx):
                    fixed = [d for d, want in zip(got, t.shape, strict=True) if want != -1]
                    if fixed != [d for d in t.shape if d != -1]:
                        raise AssertionError(f"profile shape {got} does not fit {t.shape}")
            if BuilderFlag.INT8 in config.flags:
                self._calibrate(network, config)
            # Building adds timing entries: the cache grows.
            assert config.timing_cache is not None
            config.timing_cache.data += b"timing-entry;"
            doc = {
                "onnx": network.onnx_path,
                "flags": sorted(config.flags),
                "shapes": {k: [list(s) for s in v] for k, v in shapes.items()},
            }
            return PLAN_MAGIC + json.dumps(doc).encode()

        def _calibrate(self, network: Network, config: Config) -> None:
            calib = config.int8_calibrator
            if calib is None or config.calibration_profile is None:
                raise AssertionError("INT8 without a calibrator and calibration profile")
            if calib.read_calibration_cache():
                rec.record("calibration_cache_hit")
                return
            names = [t.name for t in network.inputs]
            batch_size = calib.get_batch_size()
            n = 0
            while (pointers := calib.get_batch(names)) is not None:
                assert len(pointers) == 1 and isinstance(pointers[0], int)
                n += 1
            rec.record("calibration_batches", (n, batch_size))
            calib.write_calibration_cache(f"fake-calibration:{n}x{batch_size}".encode())

    for obj in (
        Logger,
        NetworkDefinitionCreationFlag,
        MemoryPoolType,
        BuilderFlag,
        IInt8EntropyCalibrator2,
        OnnxParser,
        Builder,
    ):
        setattr(trt, obj.__name__, obj)
    return trt


def host_buffer(rec: Recorder) -> Callable[[np.ndarray], tuple[Any, int]]:
    """device_buffer on the host: the batch stays in memory and is recorded."""

    def buffer(batch: np.ndarray) -> tuple[Any, int]:
        arr = np.ascontiguousarray(batch)
        rec.calibration_batches.append(arr.copy())
        return arr, int(arr.ctypes.data)

    return buffer


class FakeRunner:
    """PlanRunner without a GPU: the ONNX model's logits, passed through `distort`."""

    distort: Callable[[np.ndarray], np.ndarray] = staticmethod(lambda x: x)  # type: ignore[assignment]

    def __init__(self, trt: Any, plan_path: Path, *, max_batch: int, **_: Any) -> None:
        data = Path(plan_path).read_bytes()
        if not data.startswith(PLAN_MAGIC):
            raise AssertionError("not a plan written by the fake builder")
        self.onnx_path = json.loads(data[len(PLAN_MAGIC) :])["onnx"]
        self.max_batch = max_batch

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        from plantdx.export.onnx import onnx_logits

        return type(self).distort(onnx_logits(self.onnx_path, batch, chunk=self.max_batch))
