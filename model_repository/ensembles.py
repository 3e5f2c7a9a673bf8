"""The two ensembles, `plantdx` and `plantdx_explain`, built from one list of steps.

    plantdx          IMAGE [+ CROP] → preprocess → classifier → postprocess
                     → PROBABILITIES, DECISION
    plantdx_explain  the same steps, the classifier asked for its class-activation maps too, then
                     heatmap → HEATMAP (explain.py says how the maps stay out of `plantdx`'s
                     response cache)

Both run the latest loaded version of every step (model_version -1), so an explanation always
comes from the version that answers `plantdx`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc

from plantdx.choices import Target

from .config import ServingOptions
from .names import (
    CALIBRATION,
    CAMS,
    CAMS_CLASSIFIER,
    CLASSIFIER,
    CROP,
    DECISION,
    ENSEMBLE,
    ENSEMBLE_INPUT,
    ENSEMBLE_OUTPUT,
    EXPLAIN_ENSEMBLE,
    EXPLAIN_PIXELS,
    HEATMAP,
    HEATMAP_MODEL,
    LOGITS,
    ONNX_CAMS,
    ONNX_INPUT,
    ONNX_OUTPUT,
    PIXELS,
    POSTPROCESS,
    PREPROCESS,
)
from .tensors import Sizes, model_input, model_output


@dataclass(frozen=True)
class Step:
    """One ensemble step: the model, its inputs fed from ensemble tensors and its outputs
    written to ensemble tensors (model tensor → ensemble tensor)."""

    model: str
    inputs: dict[str, str]
    outputs: dict[str, str]


def ensemble_steps(target: Target, explain: bool) -> list[Step]:
    """The steps of `plantdx` (explain False) and of `plantdx_explain` (True)."""
    if target == "local":  # onnxruntime in a Python backend: the contract's names
        # plantdx_explain feeds the classifier's second input name (names.EXPLAIN_PIXELS).
        classifier, pixels, logits, cams = CLASSIFIER, PIXELS, LOGITS, CAMS
        if explain:
            pixels = EXPLAIN_PIXELS
    else:  # Triton's native backends run the ONNX graph's names; the maps have a model of their own
        classifier = CAMS_CLASSIFIER if explain else CLASSIFIER
        pixels, logits, cams = ONNX_INPUT, ONNX_OUTPUT, ONNX_CAMS
    classified = {logits: "logits", cams: "cams"} if explain else {logits: "logits"}
    answer_inputs = {LOGITS: "logits", CALIBRATION: "calibration", CROP: CROP}
    if not explain:
        answer_inputs[ENSEMBLE_INPUT] = ENSEMBLE_INPUT  # the photo, for capture
    steps = [
        Step(
            PREPROCESS,
            {ENSEMBLE_INPUT: ENSEMBLE_INPUT},
            {PIXELS: "pixels", CALIBRATION: "calibration"},
        ),
        Step(classifier, {pixels: "pixels"}, classified),
        Step(
            POSTPROCESS,
            answer_inputs,
            {ENSEMBLE_OUTPUT: ENSEMBLE_OUTPUT, DECISION: DECISION},
        ),
    ]
    if explain:
        # The heatmap's class is the top of the answered probabilities, so that with a CROP it
        # is the top class of that crop (without one, the same class as the top logit).
        steps.append(
            Step(HEATMAP_MODEL, {LOGITS: ENSEMBLE_OUTPUT, CAMS: "cams"}, {HEATMAP: HEATMAP})
        )
    return steps


def ensemble_base(
    name: str, num_classes: int, opts: ServingOptions, labels_filename: str
) -> mc.ModelConfig:
    """What every plantdx ensemble starts with: one encoded image and the optional crop in; the
    calibrated probabilities (with labels) and the decision out; no step yet."""
    sizes = Sizes(classes=num_classes)
    cfg = mc.ModelConfig(name=name, platform="ensemble")
    # Triton refuses an ensemble whose batch limit exceeds any composing model's.
    cfg.max_batch_size = min(
        opts.max_images_per_request,
        opts.preprocess.max_batch_size,
        opts.classifier.max_batch_size,
        opts.postprocess.max_batch_size,
    )
    cfg.input.append(model_input(ENSEMBLE_INPUT, sizes))
    cfg.input.append(model_input(CROP, sizes))
    cfg.output.append(model_output(ENSEMBLE_OUTPUT, sizes, label_filename=labels_filename))
    cfg.output.append(model_output(DECISION, sizes))
    return cfg


def _add_steps(cfg: mc.ModelConfig, steps: list[Step]) -> mc.ModelConfig:
    for s in steps:
        step = cfg.ensemble_scheduling.step.add(model_name=s.model, model_version=-1)
        step.input_map.update(s.inputs)
        step.output_map.update(s.outputs)
    return cfg


def ensemble_config(
    num_classes: int,
    opts: ServingOptions,
    *,
    target: Target = "local",
    labels_filename: str = "labels.txt",
) -> mc.ModelConfig:
    cfg = ensemble_base(ENSEMBLE, num_classes, opts, labels_filename)
    return _add_steps(cfg, ensemble_steps(target, explain=False))


def explain_ensemble_config(
    num_classes: int,
    cams_dims: tuple[int, ...],
    opts: ServingOptions,
    *,
    labels_filename: str = "labels.txt",
    target: Target = "local",
) -> mc.ModelConfig:
    cfg = ensemble_base(EXPLAIN_ENSEMBLE, num_classes, opts, labels_filename)
    cfg.output.append(model_output(HEATMAP, Sizes(classes=num_classes, maps=tuple(cams_dims))))
    return _add_steps(cfg, ensemble_steps(target, explain=True))
