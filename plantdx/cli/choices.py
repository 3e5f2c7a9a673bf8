"""The fixed choices of the command-line options, as Enums so that `--help` lists them.

Each value is the string the stage configs take: commands pass `.value` on.
"""

from __future__ import annotations

from enum import Enum


class Protocol(str, Enum):
    http = "http"
    grpc = "grpc"


class ExportFormat(str, Enum):
    onnx = "onnx"
    tensorrt = "tensorrt"


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


class Target(str, Enum):
    local = "local"
    triton = "triton"


class Kind(str, Enum):
    cpu = "cpu"
    gpu = "gpu"


class VersionPolicy(str, Enum):
    latest = "latest"
    all = "all"
    specific = "specific"


class Driver(str, Enum):
    async_ = "async"
    threads = "threads"


class EvalSplit(str, Enum):
    all = "all"
    test = "test"
    val = "val"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class GateMetric(str, Enum):
    mean_source_accuracy = "mean_source_accuracy"
    accuracy = "accuracy"
    selective_accuracy = "selective_accuracy"


class Resize(str, Enum):
    squash = "squash"
    crop = "crop"
    pad = "pad"


class Optimizer(str, Enum):
    adam = "adam"
    adamw = "adamw"
    sgd = "sgd"


class Scheduler(str, Enum):
    cosine = "cosine"
    step = "step"
    none = "none"


class Sampling(str, Enum):
    balanced = "balanced"
    concat = "concat"


class SelectOn(str, Enum):
    mean_source_acc = "mean_source_acc"
    min_source_acc = "min_source_acc"
    pooled_acc = "pooled_acc"


class RunSplit(str, Enum):
    """A run's split (split.json)."""

    train = "train"
    val = "val"
    test = "test"


def value(choice: Enum | None) -> str | None:
    """The choice's string, or None when the option was not given."""
    return None if choice is None else str(choice.value)
