"""Triton model configurations built from typed objects and Triton's own `ModelConfig` protobuf.

Nothing here pastes strings: each config is a `model_config_pb2.ModelConfig` message, written
with protobuf's text format, so every generated `config.pbtxt` parses by construction and
tests parse it back with the same message type Triton uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from plantdx.exceptions import RepositoryError

ENSEMBLE = "plantdx"
PREPROCESS = "preprocess"
CLASSIFIER = "classifier"
POSTPROCESS = "postprocess"
COMPOSING = (PREPROCESS, CLASSIFIER, POSTPROCESS)

# Tensor names, shared by the ONNX export and every config.
ENSEMBLE_INPUT = "IMAGE"
ENSEMBLE_OUTPUT = "PROBABILITIES"
PIXELS = "PIXELS"
ONNX_INPUT = "input"
ONNX_OUTPUT = "logits"
LOGITS = "LOGITS"

Kind = Literal["cpu", "gpu"]
Target = Literal["local", "triton"]


@dataclass(frozen=True)
class Batching:
    """Dynamic batching and instances of one composing model."""

    max_batch_size: int = 32
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 2000
    instances: int = 1
    # Overload is refused quickly instead of letting latency grow without bound.
    max_queue_size: int = 256
    queue_timeout_us: int = 30_000_000


@dataclass(frozen=True)
class ServingOptions:
    kind: Kind = "cpu"
    preprocess: Batching = field(default_factory=lambda: Batching(max_batch_size=32, instances=2))
    classifier: Batching = field(default_factory=lambda: Batching(max_batch_size=32, instances=1))
    postprocess: Batching = field(default_factory=lambda: Batching(max_batch_size=64, instances=1))
    response_cache: bool = True
    # "latest" keeps the newest N versions loaded; "specific" pins them (rollback).
    version_policy: Literal["latest", "all", "specific"] = "latest"
    latest_n: int = 1
    specific_versions: tuple[int, ...] = ()
    warmup: bool = True


def _dims(shape: tuple[int, ...]) -> list[int]:
    return list(shape)


def _tensor(cls: type, name: str, dtype: int, dims: tuple[int, ...], **extra: object) -> object:
    t = cls(name=name, data_type=dtype, dims=_dims(dims))
    for k, v in extra.items():
        setattr(t, k, v)
    return t


def _apply_batching(cfg: mc.ModelConfig, b: Batching, kind: Kind, python: bool) -> None:
    cfg.max_batch_size = b.max_batch_size
    db = cfg.dynamic_batching
    db.preferred_batch_size.extend(b.preferred_batch_sizes)
    db.max_queue_delay_microseconds = b.max_queue_delay_us
    qp = db.default_queue_policy
    qp.max_queue_size = b.max_queue_size
    qp.default_timeout_microseconds = b.queue_timeout_us
    qp.allow_timeout_override = True
    qp.timeout_action = mc.ModelQueuePolicy.REJECT
    group = cfg.instance_group.add()
    group.count = b.instances
    # Python-backend models run on the CPU even on GPU nodes; the native classifier does not.
    group.kind = (
        mc.ModelInstanceGroup.KIND_GPU
        if kind == "gpu" and not python
        else mc.ModelInstanceGroup.KIND_CPU
    )


def _apply_version_policy(cfg: mc.ModelConfig, opts: ServingOptions) -> None:
    if opts.version_policy == "latest":
        cfg.version_policy.latest.num_versions = opts.latest_n
    elif opts.version_policy == "all":
        cfg.version_policy.all.SetInParent()
    else:
        if not opts.specific_versions:
            raise RepositoryError("version_policy 'specific' needs at least one version")
        cfg.version_policy.specific.versions.extend(opts.specific_versions)


def preprocess_config(image_size: int, opts: ServingOptions) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=PREPROCESS, backend="python")
    cfg.input.append(mc.ModelInput(name=ENSEMBLE_INPUT, data_type=mc.TYPE_STRING, dims=[1]))
    cfg.output.append(
        mc.ModelOutput(name=PIXELS, data_type=mc.TYPE_FP32, dims=[3, image_size, image_size])
    )
    _apply_batching(cfg, opts.preprocess, opts.kind, python=True)
    _apply_version_policy(cfg, opts)
    if opts.response_cache:
        cfg.response_cache.enable = True
    return cfg


def classifier_config(
    image_size: int,
    num_classes: int,
    opts: ServingOptions,
    *,
    target: Target = "local",
    platform: Literal["onnx", "tensorrt"] = "onnx",
    trt_accelerator: bool = False,
    trt_fp16: bool = False,
) -> mc.ModelConfig:
    """The classifier: onnxruntime inside a Python backend (local) or a native backend (triton)."""
    if target == "local":
        cfg = mc.ModelConfig(name=CLASSIFIER, backend="python")
        in_name, out_name = PIXELS, LOGITS
    elif platform == "onnx":
        cfg = mc.ModelConfig(name=CLASSIFIER, platform="onnxruntime_onnx")
        cfg.default_model_filename = "model.onnx"
        in_name, out_name = ONNX_INPUT, ONNX_OUTPUT
        if trt_accelerator and opts.kind == "gpu":
            acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add()
            acc.name = "tensorrt"
            acc.parameters["precision_mode"] = "FP16" if trt_fp16 else "FP32"
            acc.parameters["max_workspace_size_bytes"] = str(1 << 30)
            acc.parameters["trt_engine_cache_enable"] = "1"
            acc.parameters["trt_engine_cache_path"] = "/tmp/plantdx-trt-cache"
    else:
        cfg = mc.ModelConfig(name=CLASSIFIER, platform="tensorrt_plan")
        cfg.default_model_filename = "model.plan"
        in_name, out_name = ONNX_INPUT, ONNX_OUTPUT
    cfg.input.append(
        mc.ModelInput(name=in_name, data_type=mc.TYPE_FP32, dims=[3, image_size, image_size])
    )
    cfg.output.append(mc.ModelOutput(name=out_name, data_type=mc.TYPE_FP32, dims=[num_classes]))
    _apply_batching(cfg, opts.classifier, opts.kind, python=(target == "local"))
    _apply_version_policy(cfg, opts)
    if opts.warmup:
        w = cfg.model_warmup.add()
        w.name = "zeros"
        w.batch_size = 1
        w.inputs[in_name].data_type = mc.TYPE_FP32
        w.inputs[in_name].dims.extend([3, image_size, image_size])
        w.inputs[in_name].zero_data = True
    return cfg


def postprocess_config(num_classes: int, opts: ServingOptions) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=POSTPROCESS, backend="python")
    cfg.input.append(mc.ModelInput(name=LOGITS, data_type=mc.TYPE_FP32, dims=[num_classes]))
    cfg.output.append(
        mc.ModelOutput(name=ENSEMBLE_OUTPUT, data_type=mc.TYPE_FP32, dims=[num_classes])
    )
    _apply_batching(cfg, opts.postprocess, opts.kind, python=True)
    cfg.version_policy.latest.num_versions = 1
    return cfg


def ensemble_config(
    num_classes: int,
    opts: ServingOptions,
    *,
    target: Target = "local",
    labels_filename: str = "labels.txt",
) -> mc.ModelConfig:
    cfg = mc.ModelConfig(name=ENSEMBLE, platform="ensemble")
    cfg.max_batch_size = opts.preprocess.max_batch_size
    cfg.input.append(mc.ModelInput(name=ENSEMBLE_INPUT, data_type=mc.TYPE_STRING, dims=[1]))
    cfg.output.append(
        mc.ModelOutput(
            name=ENSEMBLE_OUTPUT,
            data_type=mc.TYPE_FP32,
            dims=[num_classes],
            label_filename=labels_filename,
        )
    )
    steps = cfg.ensemble_scheduling.step
    pre = steps.add(model_name=PREPROCESS, model_version=-1)
    pre.input_map[ENSEMBLE_INPUT] = ENSEMBLE_INPUT
    pre.output_map[PIXELS] = "pixels"
    clf = steps.add(model_name=CLASSIFIER, model_version=-1)
    in_name, out_name = (PIXELS, LOGITS) if target == "local" else (ONNX_INPUT, ONNX_OUTPUT)
    clf.input_map[in_name] = "pixels"
    clf.output_map[out_name] = "logits"
    post = steps.add(model_name=POSTPROCESS, model_version=-1)
    post.input_map[LOGITS] = "logits"
    post.output_map[ENSEMBLE_OUTPUT] = ENSEMBLE_OUTPUT
    return cfg


def to_pbtxt(cfg: mc.ModelConfig) -> str:
    return str(text_format.MessageToString(cfg))


def parse_pbtxt(text: str) -> mc.ModelConfig:
    """Parse with Triton's ModelConfig message; raises RepositoryError with the parser's words."""
    cfg = mc.ModelConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as exc:
        raise RepositoryError(
            f"config.pbtxt does not parse as Triton's ModelConfig: {exc}"
        ) from exc
    return cfg
