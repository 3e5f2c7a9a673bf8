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
