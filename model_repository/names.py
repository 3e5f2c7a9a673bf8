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
# Per item from preprocess to postprocess: FP32 [temperature, threshold] of the version's
# decision rule (preprocess/N/decision.json), so the rule travels with the version.
CALIBRATION = "CALIBRATION"
# Ensemble output beside PROBABILITIES: TYPE_STRING [1], the class label or "uncertain".
DECISION = "DECISION"
# Postprocess config parameter: a per-deployment threshold replacing the version's ("" = none).
ABSTAIN_THRESHOLD = "abstain_threshold"
