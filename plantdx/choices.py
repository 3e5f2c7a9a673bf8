"""The fixed choices of the stage configs, each written once as a Literal: the configs' fields are
typed with them, and the CLI's options too (typer lists their values in --help and refuses any
other). `typing.get_args(X)` is the tuple of X's values.
"""

from __future__ import annotations

from typing import Literal

# Wire protocol of a Triton server (client, model control, load generator).
Protocol = Literal["http", "grpc"]

# Export: the model's format, precision, where it runs and on what.
ExportFormat = Literal["onnx", "tensorrt"]
Precision = Literal["fp32", "fp16", "int8"]
Target = Literal["local", "triton"]
Kind = Literal["cpu", "gpu"]
VersionPolicy = Literal["latest", "all", "specific"]

# Training and evaluation.
Device = Literal["auto", "cpu", "cuda"]
Resize = Literal["squash", "crop", "pad"]
Optimizer = Literal["adam", "adamw", "sgd"]
Scheduler = Literal["cosine", "step", "none"]
Sampling = Literal["balanced", "concat"]
SelectOn = Literal["mean_source_acc", "min_source_acc", "pooled_acc"]
EvalSplit = Literal["all", "test", "val"]
# A run's split (split.json).
RunSplit = Literal["train", "val", "test"]
# The data audit: one photo under two labels in two sources.
Conflicts = Literal["keep_first", "drop_all"]

# Promotion: what must improve.
GateMetric = Literal["mean_source_accuracy", "accuracy", "selective_accuracy"]

# The load generator's driver.
Driver = Literal["async", "threads"]
