"""Configs of the explanation path, built like the others from Triton's `ModelConfig`:

    heatmap          Python backend: CAMS [C, h, w] + LOGITS [C] (+ optional CLASS) → HEATMAP [h, w]
    plantdx_explain  ensemble: IMAGE [+ CROP] → preprocess → classifier (LOGITS and CAMS)
                                     → postprocess (PROBABILITIES, DECISION, as in `plantdx`)
                                     → heatmap (HEATMAP of the top class of PROBABILITIES,
                                       fed into its LOGITS: the crop's top class with a CROP)

Both ensembles run the latest loaded preprocess and classifier (model_version -1), so an
explanation always comes from the version that answers `plantdx`. Explanations are served by
`--target local` repositories (onnxruntime in the Python backend): the ensemble feeds the
classifier's EXPLAIN_PIXELS so that Triton's response cache, which ignores the requested
outputs, never answers an explanation with a plain request's cached logits.
"""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as mc

from .config import ServingOptions, _apply_batching, ensemble_base
from .names import (
    CALIBRATION,
    CAMS,
    CLASS_INDEX,
    CLASSIFIER,
    CROP,
    DECISION,
    ENSEMBLE_INPUT,
    ENSEMBLE_OUTPUT,
    EXPLAIN_ENSEMBLE,
    EXPLAIN_PIXELS,
    HEATMAP,
    HEATMAP_MODEL,
    LOGITS,
    PIXELS,
    POSTPROCESS,
    PREPROCESS,
)


def heatmap_config(
    num_classes: int, cams_dims: tuple[int, ...], opts: ServingOptions
) -> mc.ModelConfig:
    """The normalised map of the top class (or of CLASS when given and ≥ 0)."""
    cfg = mc.ModelConfig(name=HEATMAP_MODEL, backend="python")
    cfg.input.append(mc.ModelInput(name=LOGITS, data_type=mc.TYPE_FP32, dims=[num_classes]))
    cfg.input.append(mc.ModelInput(name=CAMS, data_type=mc.TYPE_FP32, dims=list(cams_dims)))
    cfg.input.append(
        mc.ModelInput(name=CLASS_INDEX, data_type=mc.TYPE_INT32, dims=[1], optional=True)
    )
    cfg.output.append(
        mc.ModelOutput(name=HEATMAP, data_type=mc.TYPE_FP32, dims=list(cams_dims[-2:]))
    )
    _apply_batching(cfg, opts.postprocess, opts.kind, python=True)
    cfg.version_policy.latest.num_versions = 1
    return cfg


def explain_ensemble_config(
    num_classes: int,
    cams_dims: tuple[int, ...],
    opts: ServingOptions,
    *,
    labels_filename: str = "labels.txt",
) -> mc.ModelConfig:
    cfg = ensemble_base(EXPLAIN_ENSEMBLE, num_classes, opts, labels_filename)
    cfg.output.append(
        mc.ModelOutput(name=HEATMAP, data_type=mc.TYPE_FP32, dims=list(cams_dims[-2:]))
    )
    steps = cfg.ensemble_scheduling.step
    pre = steps.add(model_name=PREPROCESS, model_version=-1)
    pre.input_map[ENSEMBLE_INPUT] = ENSEMBLE_INPUT
    pre.output_map[PIXELS] = "pixels"
    pre.output_map[CALIBRATION] = "calibration"
    clf = steps.add(model_name=CLASSIFIER, model_version=-1)
    clf.input_map[EXPLAIN_PIXELS] = "pixels"
    clf.output_map[LOGITS] = "logits"
    clf.output_map[CAMS] = "cams"
    post = steps.add(model_name=POSTPROCESS, model_version=-1)
    post.input_map[LOGITS] = "logits"
    post.input_map[CALIBRATION] = "calibration"
    post.input_map[CROP] = CROP
    post.output_map[ENSEMBLE_OUTPUT] = ENSEMBLE_OUTPUT
    post.output_map[DECISION] = DECISION
    heat = steps.add(model_name=HEATMAP_MODEL, model_version=-1)
    # The heatmap's class is the top of the answered probabilities, so that with a CROP it is
    # the top class of that crop (without one, the same class as the top logit).
    heat.input_map[LOGITS] = ENSEMBLE_OUTPUT
    heat.input_map[CAMS] = "cams"
    heat.output_map[HEATMAP] = HEATMAP
    return cfg


def explain_configs(
    num_classes: int, cams_dims: tuple[int, ...], opts: ServingOptions
) -> dict[str, mc.ModelConfig]:
    """The configs `publish_version` writes beside the others when the classifier has maps."""
    return {
        HEATMAP_MODEL: heatmap_config(num_classes, cams_dims, opts),
        EXPLAIN_ENSEMBLE: explain_ensemble_config(num_classes, cams_dims, opts),
    }
