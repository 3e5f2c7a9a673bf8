"""Configs of the explanation path, built like the others from Triton's `ModelConfig` (the
`plantdx_explain` ensemble itself from the steps of ensembles.py):

    heatmap          Python backend: CAMS [C, h, w] + LOGITS [C] (+ optional CLASS) → HEATMAP [h, w]
    plantdx_explain  ensemble: IMAGE [+ CROP] → preprocess → classifier (LOGITS and CAMS)
                                     → postprocess (PROBABILITIES, DECISION, as in `plantdx`)
                                     → heatmap (HEATMAP of the top class of PROBABILITIES,
                                       fed into its LOGITS: the crop's top class with a CROP)

Both ensembles run the latest loaded preprocess and classifier (model_version -1), so an
explanation always comes from the version that answers `plantdx`. Triton's response cache keys
a request on its model, version and inputs but not on the outputs it asks for, so explanations
must never reach a plain request's cached entry:

- `--target local` (onnxruntime in a Python backend): the ensemble feeds the classifier's
  second, optional input name, EXPLAIN_PIXELS, and the classifier computes the maps only then;
- `--target triton` (Triton's native onnxruntime and TensorRT backends, which have no optional
  second input name): `classifier_cams`, a model of its own published beside the classifier as
  version N, runs the class-activation graph (ONNX `input` → `logits`, `cams`) with Triton's
  onnxruntime backend, also when the classifier is a TensorRT plan (its explanations then come
  from the FP32 graph, which the precision gate compared with the plan). Its own name keeps its
  cache entries apart, and `plantdx` never runs it.
"""

from __future__ import annotations

from tritonclient.grpc import model_config_pb2 as mc

from plantdx.exceptions import RepositoryError

from .config import ServingOptions, Target, _apply_batching
from .ensembles import explain_ensemble_config
from .names import (
    CAMS,
    CAMS_CLASSIFIER,
    CLASS_INDEX,
    EXPLAIN_ENSEMBLE,
    HEATMAP,
    HEATMAP_MODEL,
    LOGITS,
    ONNX_CAMS,
    ONNX_OUTPUT,
)
from .tensors import Sizes, model_input, model_output


def heatmap_config(
    num_classes: int, cams_dims: tuple[int, ...], opts: ServingOptions
) -> mc.ModelConfig:
    """The normalised map of the top class (or of CLASS when given and ≥ 0)."""
    sizes = Sizes(classes=num_classes, maps=tuple(cams_dims))
    cfg = mc.ModelConfig(name=HEATMAP_MODEL, backend="python")
    cfg.input.append(model_input(LOGITS, sizes))
    cfg.input.append(model_input(CAMS, sizes))
    cfg.input.append(model_input(CLASS_INDEX, sizes))  # optional: -1 or absent, the top class
    cfg.output.append(model_output(HEATMAP, sizes))
    _apply_batching(cfg, opts.postprocess, opts, python=True, model=HEATMAP_MODEL)
    cfg.version_policy.latest.num_versions = 1
    return cfg


def cams_classifier_config(
    classifier: mc.ModelConfig, cams_dims: tuple[int, ...]
) -> mc.ModelConfig:
    """`classifier_cams` (--target triton): the classifier's config (its input, batching,
    instances, version policy, warm-up and response cache) under its own name, run by Triton's
    onnxruntime backend on the class-activation graph (`model.onnx`: `logits` and `cams`)."""
    cfg = mc.ModelConfig()
    cfg.CopyFrom(classifier)
    cfg.name = CAMS_CLASSIFIER
    cfg.ClearField("backend")
    cfg.platform = "onnxruntime_onnx"
    cfg.ClearField("cc_model_filenames")
    cfg.default_model_filename = "model.onnx"
    cfg.ClearField("optimization")  # FP32 onnxruntime, not a plan's or the accelerator's FP16
    if [o.name for o in cfg.output] != [ONNX_OUTPUT]:
        raise RepositoryError(
            f"{CAMS_CLASSIFIER} is made from a --target triton classifier config (one output, "
            f"{ONNX_OUTPUT!r}); this one has {[o.name for o in cfg.output]}"
        )
    cfg.output.append(model_output(ONNX_CAMS, Sizes(maps=tuple(cams_dims))))
    return cfg


def explain_configs(
    num_classes: int,
    cams_dims: tuple[int, ...],
    opts: ServingOptions,
    *,
    target: Target = "local",
    classifier: mc.ModelConfig | None = None,
) -> dict[str, mc.ModelConfig]:
    """The configs `publish_version` writes beside the others when the version has maps (with
    --target triton, `classifier_cams`'s too, made from the `classifier` config)."""
    configs = {
        HEATMAP_MODEL: heatmap_config(num_classes, cams_dims, opts),
        EXPLAIN_ENSEMBLE: explain_ensemble_config(num_classes, cams_dims, opts, target=target),
    }
    if target != "local":
        if classifier is None:
            raise RepositoryError(f"{CAMS_CLASSIFIER} is made from the classifier's config")
        configs[CAMS_CLASSIFIER] = cams_classifier_config(classifier, cams_dims)
    return configs
