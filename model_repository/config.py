"""Triton model configurations built from typed objects and Triton's own `ModelConfig` protobuf.

Nothing here pastes strings: each config is a `model_config_pb2.ModelConfig` message, written
with protobuf's text format, so every generated `config.pbtxt` parses by construction and
tests parse it back with the same message type Triton uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from plantdx.choices import ExportFormat, Kind, Target, VersionPolicy
from plantdx.cores import usable_cores
from plantdx.decision import parse_threshold
from plantdx.exceptions import RepositoryError

from .instances import AUTO, GPU_INSTANCES, INSTANCES_PARAMETER, InstancePlan, plan_for
from .names import (
    ABSTAIN_THRESHOLD,
    CALIBRATION,
    CAMS,
    CLASSIFIER,
    CROP,
    DECISION,
    DRIFT_SAMPLE_RATE,
    ENSEMBLE_INPUT,
    ENSEMBLE_OUTPUT,
    EXPLAIN_PIXELS,
    LOGITS,
    ONNX_INPUT,
    ONNX_OUTPUT,
    PIXELS,
    POSTPROCESS,
    PREPROCESS,
)
from .names import COMPOSING as COMPOSING
from .tensors import Sizes, model_input, model_output, warmup_input

# Where the ONNX Runtime TensorRT execution accelerator keeps the engines it builds at load.
TRT_ENGINE_CACHE_PATH = "/tmp/plantdx-trt-cache"


@dataclass(frozen=True)
class Batching:
    """Dynamic batching and instances of one composing model."""

    max_batch_size: int = 32
    preferred_batch_sizes: tuple[int, ...] = ()
    # 0: a lone request goes straight to a free instance (three 500 µs waits cost a lone image
    # ~2 ms); under load requests queue behind busy instances and batch anyway (BENCHMARKS.md).
    max_queue_delay_us: int = 0
    # None: sized by the cores (instances.plan_for), and re-sized by the server that serves it;
    # a number: exactly that many, wherever it is served.
    instances: int | None = None
    # Overload is refused quickly instead of letting latency grow without bound.
    max_queue_size: int = 256
    queue_timeout_us: int = 30_000_000


@dataclass(frozen=True)
class ServingOptions:
    kind: Kind = "cpu"
    # Instances from the cores (model_repository/instances.py has the rule and why): each
    # classifier instance gets its share of them for onnxruntime (the backend divides them).
    preprocess: Batching = field(default_factory=lambda: Batching(max_batch_size=32))
    classifier: Batching = field(default_factory=lambda: Batching(max_batch_size=32))
    postprocess: Batching = field(default_factory=lambda: Batching(max_batch_size=64))
    # The cores the counts are sized for; None: this machine's (servers re-size them: instances).
    cores: int | None = None
    # Images one request may hold (the ensembles' max_batch_size, under the composing models'):
    # with the 16 MP / 20 MiB input caps the costliest image measured takes about 0.5 s of
    # preprocess CPU, so one request costs at most ~4 s (32 such images took 15-30 s). Clients
    # send one image per request; dynamic batching still groups requests up to the composing
    # models' own limits.
    max_images_per_request: int = 8
    response_cache: bool = True
    # "latest" keeps the newest N versions loaded; "specific" pins them (rollback).
    version_policy: VersionPolicy = "latest"
    latest_n: int = 1
    specific_versions: tuple[int, ...] = ()
    warmup: bool = True
    # This deployment's abstention threshold, replacing every version's own (decision.json);
    # None: each version's. Written into the postprocess config's `abstain_threshold`.
    abstain_threshold: float | None = None
    # Share of decoded photos whose image statistics the preprocess observes (drift histograms,
    # `plantdx_image_*`): each observed photo costs about 1.5 ms of preprocess CPU; a quarter
    # is plenty for shares over hours of traffic. 1.0: every photo, 0: none.
    drift_sample_rate: float = 0.25

    def plan(self) -> InstancePlan:
        return plan_for(self.cores if self.cores is not None else usable_cores())

    def __post_init__(self) -> None:
        if self.cores is not None and self.cores < 1:
            raise RepositoryError(f"cores must be at least 1, got {self.cores}")
        if self.max_images_per_request < 1:
            raise RepositoryError(
                f"max_images_per_request must be at least 1, got {self.max_images_per_request}"
            )


def _apply_batching(
    cfg: mc.ModelConfig, b: Batching, opts: ServingOptions, python: bool, model: str
) -> None:
    kind = opts.kind
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
    # Python-backend models run on the CPU even on GPU nodes; the native classifier does not.
    gpu = kind == "gpu" and not python
    group.kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    if b.instances is not None:
        group.count = b.instances
    elif gpu:
        group.count = GPU_INSTANCES
    else:
        group.count = opts.plan().count(model) or 1
        cfg.parameters[INSTANCES_PARAMETER].string_value = AUTO  # re-sized where it is served


def _apply_version_policy(cfg: mc.ModelConfig, opts: ServingOptions) -> None:
    if opts.version_policy == "latest":
        cfg.version_policy.latest.num_versions = opts.latest_n
    elif opts.version_policy == "all":
        cfg.version_policy.all.SetInParent()
    else:
        if not opts.specific_versions:
            raise RepositoryError("version_policy 'specific' needs at least one version")
        cfg.version_policy.specific.versions.extend(opts.specific_versions)


def preprocess_config(
    image_size: int, opts: ServingOptions, pixels: str = "uint8"
) -> mc.ModelConfig:
    """Encoded image → PIXELS, [3, size, size]: uint8 that the classifier's graph normalises
    (a quarter of the bytes of float32 through the stubs' shared memory), or normalised
    float32 in repositories made before that (RepositoryInfo.pixels)."""
    sizes = Sizes(image_size=image_size, pixels=pixels)
    cfg = mc.ModelConfig(name=PREPROCESS, backend="python")
    cfg.input.append(model_input(ENSEMBLE_INPUT, sizes))
    cfg.output.append(model_output(PIXELS, sizes))
    # Per item: the version's decision rule and number, [temperature, threshold, version].
    cfg.output.append(model_output(CALIBRATION, sizes))
    if not 0.0 <= opts.drift_sample_rate <= 1.0:
        raise RepositoryError(f"drift_sample_rate must be in [0, 1], got {opts.drift_sample_rate}")
    cfg.parameters[DRIFT_SAMPLE_RATE].string_value = repr(float(opts.drift_sample_rate))
    _apply_batching(cfg, opts.preprocess, opts, python=True, model=PREPROCESS)
    _apply_version_policy(cfg, opts)
    # No response cache here: Triton 2.51 caches a Python model's error response as an empty
    # success, so a bad image sent twice would get a confusing error the second time.
    if opts.warmup:
        # A real encoded photo runs through decode, resize and normalise before "ready".
        w = cfg.model_warmup.add()
        w.name = "sample_leaf_jpeg"
        w.batch_size = 1
        warmup_input(w, ENSEMBLE_INPUT, sizes).input_data_file = WARMUP_SAMPLE
    return cfg


WARMUP_DIR = "warmup"  # Triton reads input_data_file from <model>/warmup/
WARMUP_SAMPLE = "sample_leaf_jpeg"


def warmup_sample() -> bytes:
    """Triton's TYPE_STRING warm-up data: a 4-byte little-endian length, then one JPEG
    (a drawn leaf, the same bytes every time)."""
    import io
    import struct

    import numpy as np

    from plantdx.synth import draw_leaf

    buf = io.BytesIO()
    draw_leaf("healthy", np.random.default_rng(0), size=256).save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()
    return struct.pack("<I", len(jpeg)) + jpeg


def warmup_files(opts: ServingOptions) -> dict[str, bytes]:
    """Files the warm-up configs need, by path relative to the repository root."""
    if not opts.warmup:
        return {}
    return {f"{PREPROCESS}/{WARMUP_DIR}/{WARMUP_SAMPLE}": warmup_sample()}


def classifier_config(
    image_size: int,
    num_classes: int,
    opts: ServingOptions,
    *,
    target: Target = "local",
    platform: ExportFormat = "onnx",
    trt_accelerator: bool = False,
    trt_fp16: bool = False,
    cc_model_filenames: dict[str, str] | None = None,
    cams_dims: tuple[int, ...] | None = None,
    pixels: str = "uint8",
) -> mc.ModelConfig:
    """The classifier: onnxruntime inside a Python backend (local) or a native backend (triton).

    A TensorRT plan only loads on the GPU architecture it was built for, so `cc_model_filenames`
    maps each compute capability ("8.0", "9.0") to the plan built on it; Triton picks the file
    for the GPU it runs on and refuses to load on an architecture the map does not name.
    """
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
            acc.parameters["trt_engine_cache_path"] = TRT_ENGINE_CACHE_PATH
    else:
        cfg = mc.ModelConfig(name=CLASSIFIER, platform="tensorrt_plan")
        if cc_model_filenames:
            for cc, filename in sorted(cc_model_filenames.items()):
                cfg.cc_model_filenames[cc] = filename
        else:
            cfg.default_model_filename = "model.plan"
        in_name, out_name = ONNX_INPUT, ONNX_OUTPUT
    sizes = Sizes(num_classes, image_size, tuple(cams_dims or ()), pixels)
    explains = bool(cams_dims) and target == "local"
    # With class-activation maps, each request has one of the two names (names.EXPLAIN_PIXELS).
    cfg.input.append(model_input(in_name, sizes, optional=explains))
    cfg.output.append(model_output(out_name, sizes))
    if explains:  # class-activation maps [C, h, w], only when asked
        cfg.output.append(model_output(CAMS, sizes))
        cfg.input.append(model_input(EXPLAIN_PIXELS, sizes, optional=True))
    _apply_batching(cfg, opts.classifier, opts, python=(target == "local"), model=CLASSIFIER)
    _apply_version_policy(cfg, opts)
    if opts.response_cache:
        # Keyed on this model's name, version and pixels: a new version never meets an old
        # entry (an ensemble entry would: its version stays 1 across classifier updates).
        cfg.response_cache.enable = True
    if opts.warmup:
        w = cfg.model_warmup.add()
        w.name = "zeros"
        w.batch_size = 1
        warmup_input(w, in_name, sizes).zero_data = True
    return cfg


def check_abstain_threshold(text: str) -> float | None:
    """The postprocess `abstain_threshold` parameter: None when empty, else a number in [0, 1]."""
    try:
        return parse_threshold(text)
    except ValueError as exc:
        raise RepositoryError(f"postprocess parameter {ABSTAIN_THRESHOLD} {exc}") from exc


def postprocess_config(num_classes: int, opts: ServingOptions) -> mc.ModelConfig:
    """Calibrated probabilities and the decision, by the rule each item's CALIBRATION carries
    (restricted to the crop's classes when the optional CROP is given); the parameter
    `abstain_threshold` (empty: the version's) overrides its threshold."""
    sizes = Sizes(classes=num_classes)
    cfg = mc.ModelConfig(name=POSTPROCESS, backend="python")
    cfg.input.append(model_input(LOGITS, sizes))
    cfg.input.append(model_input(CALIBRATION, sizes))
    # The photo's bytes, read only when capture is on (plantdx.capture); optional, since
    # plantdx_explain does not send them.
    cfg.input.append(model_input(ENSEMBLE_INPUT, sizes, optional=True))
    cfg.input.append(model_input(CROP, sizes))  # optional (names.CROP)
    cfg.output.append(model_output(ENSEMBLE_OUTPUT, sizes))
    cfg.output.append(model_output(DECISION, sizes))
    threshold = "" if opts.abstain_threshold is None else repr(float(opts.abstain_threshold))
    check_abstain_threshold(threshold)
    cfg.parameters[ABSTAIN_THRESHOLD].string_value = threshold
    _apply_batching(cfg, opts.postprocess, opts, python=True, model=POSTPROCESS)
    cfg.version_policy.latest.num_versions = 1
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
