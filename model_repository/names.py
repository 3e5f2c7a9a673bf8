"""Model and tensor names shared by the ONNX export, every config and the validator.

Kept free of imports so the exporter can name its tensors without loading tritonclient.
"""

from __future__ import annotations

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
