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
# Postprocess config parameter: a per-deployment threshold replacing the version's ("" = none).
ABSTAIN_THRESHOLD = "abstain_threshold"
