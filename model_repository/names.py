"""The wire contract of the served models: every model and tensor name, and each tensor's data
type and shape (TENSORS), shared by the ONNX export, every config, the Python backends (inside
Triton's stub), the validator and the client.

Kept free of imports but the standard library, so the exporter, the client and the backends
name tensors without loading tritonclient; model_repository/tensors.py turns a tensor of
TENSORS into Triton's ModelInput / ModelOutput.
"""

from __future__ import annotations

from dataclasses import dataclass

ENSEMBLE = "plantdx"
PREPROCESS = "preprocess"
CLASSIFIER = "classifier"
POSTPROCESS = "postprocess"
COMPOSING = (PREPROCESS, CLASSIFIER, POSTPROCESS)

ENSEMBLE_INPUT = "IMAGE"
ENSEMBLE_OUTPUT = "PROBABILITIES"
PIXELS = "PIXELS"
ONNX_INPUT = "input"
ONNX_OUTPUT = "logits"
LOGITS = "LOGITS"
# Per item from preprocess to postprocess: FP32 [temperature, threshold, version] — the
# version's decision rule (preprocess/N/decision.json) and its number, so the rule and the
# metrics' version label travel with the item ([temperature, threshold] from older versions).
CALIBRATION = "CALIBRATION"
# Ensemble output beside PROBABILITIES: TYPE_STRING [1], the class label or "uncertain".
DECISION = "DECISION"
# Optional ensemble input, routed to the postprocess: TYPE_STRING [1], the crop the photo shows
# (plantdx.crops matches the name); the answer is restricted to that crop's classes, by the
# crops exported with the version (preprocess/N/crops.json). Absent: every class.
# Triton 2.51 ensembles accept an optional input and route it to a step; a request without it
# reaches the postprocess without the tensor.
CROP = "CROP"
# Postprocess config parameter: a per-deployment threshold replacing the version's ("" = none).
ABSTAIN_THRESHOLD = "abstain_threshold"

# Explanations (class-activation maps), published when the classifier's architecture has them.
# The classifier's second output: FP32 [C, h, w], every class's map at the last feature map's
# resolution (ONNX tensor `cams`); computed only for requests that ask for it.
CAMS = "CAMS"
# The classifier's second (optional) name for PIXELS, fed by `plantdx_explain` only: Triton's
# response cache keys a request on its model, version and inputs (names included) but not on the
# outputs it asks for, so explanation requests must not share the plain requests' entries.
EXPLAIN_PIXELS = "EXPLAIN_PIXELS"
ONNX_CAMS = "cams"
# The `heatmap` model: CAMS + LOGITS (+ optional CLASS, INT32 [1], -1: the top class) →
# HEATMAP FP32 [h, w] in 0..1 (plantdx.heatmap.normalize_heatmap).
HEATMAP_MODEL = "heatmap"
HEATMAP = "HEATMAP"
CLASS_INDEX = "CLASS"
# The second ensemble: IMAGE → preprocess → classifier → {postprocess, heatmap}.
EXPLAIN_ENSEMBLE = "plantdx_explain"
# --target triton: the classifier with its class-activation maps (input → LOGITS and CAMS), a
# model of its own published beside preprocess and classifier as version N, which only
# `plantdx_explain` runs: Triton's native backends have no optional second input name
# (EXPLAIN_PIXELS), and a model of its own keeps the response cache apart by its name.
CAMS_CLASSIFIER = "classifier_cams"
# Preprocess config parameter: the share of photos whose image statistics are observed.
DRIFT_SAMPLE_RATE = "drift_sample_rate"

# The restricted-API header: with an admin key, Triton's model-control API answers only the
# requests that carry the key under this name (the key itself is never logged or printed).
ADMIN_HEADER = "plantdx-key"

# --- data types and shapes ----------------------------------------------------------------------
# A dimension is a number or one of these sizes, known when a version is exported (Sizes).
CLASSES = "classes"  # the classifier's classes
SIZE = "size"  # the classifier's input image side
MAPS = "maps"  # the class-activation maps' dims, [C, h, w]
MAP = "map"  # one map's dims, [h, w]
# The classifier's pixels are UINT8, or FP32 in repositories made before (RepositoryInfo.pixels).
PIXEL_TYPE = "pixels"


@dataclass(frozen=True)
class Tensor:
    """One tensor's data type (Triton's config name: TYPE_FP32, TYPE_STRING, ... or PIXEL_TYPE)
    and dims without the batch dimension (numbers and the sizes above); `optional` where every
    model that takes it may go without it."""

    data_type: str
    dims: tuple[int | str, ...]
    optional: bool = False

    @property
    def datatype(self) -> str:
        """The inference protocol's name of a fixed data type (FP32, BYTES, ...)."""
        if self.data_type == PIXEL_TYPE:
            raise ValueError("the pixels' data type is the repository's (UINT8 or FP32)")
        name = self.data_type.removeprefix("TYPE_")
        return "BYTES" if name == "STRING" else name


_PIXELS = Tensor(PIXEL_TYPE, (3, SIZE, SIZE))
_LOGITS = Tensor("TYPE_FP32", (CLASSES,))
_MAPS = Tensor("TYPE_FP32", (MAPS,))
TENSORS: dict[str, Tensor] = {
    ENSEMBLE_INPUT: Tensor("TYPE_STRING", (1,)),  # one encoded image per item
    CROP: Tensor("TYPE_STRING", (1,), optional=True),
    PIXELS: _PIXELS,
    EXPLAIN_PIXELS: _PIXELS,
    ONNX_INPUT: _PIXELS,
    # [-1]: versions exported before the version number was sent emit [temperature, threshold].
    CALIBRATION: Tensor("TYPE_FP32", (-1,)),
    LOGITS: _LOGITS,
    ONNX_OUTPUT: _LOGITS,
    CAMS: _MAPS,
    ONNX_CAMS: _MAPS,
    ENSEMBLE_OUTPUT: _LOGITS,
    DECISION: Tensor("TYPE_STRING", (1,)),
    CLASS_INDEX: Tensor("TYPE_INT32", (1,), optional=True),
    HEATMAP: Tensor("TYPE_FP32", (MAP,)),
}
