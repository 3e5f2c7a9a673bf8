"""Triton Python backend: logits → probabilities, and the prediction metrics drift dashboards need.

Publishes `plantdx_predictions_total{class}` and the `plantdx_prediction_confidence` histogram
through Triton's custom-metrics API, so they appear on Triton's own metrics port.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

CONFIDENCE_BUCKETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        labels_path = Path(args["model_repository"]) / "labels.txt"
        labels = labels_path.read_text().splitlines() if labels_path.is_file() else []
        n = int(config["output"][0]["dims"][0])
        labels = [s for s in labels if s.strip()] or [str(i) for i in range(n)]
        # Families must outlive their metrics, so they stay on the instance.
        self.prediction_family = predictions = pb_utils.MetricFamily(
            name="plantdx_predictions_total",
            description="Predicted top-1 class of every served image",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.per_class = [
            predictions.Metric(labels={"model": "plantdx", "class": label}) for label in labels
        ]
        self.confidence_family = confidence = pb_utils.MetricFamily(
            name="plantdx_prediction_confidence",
            description="Top-1 probability of every served image",
            kind=pb_utils.MetricFamily.HISTOGRAM,
        )
        self.confidence = confidence.Metric(labels={"model": "plantdx"}, buckets=CONFIDENCE_BUCKETS)

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            probs = softmax(logits.astype(np.float32))
            for row in probs:
                top = int(row.argmax())
                if top < len(self.per_class):
                    self.per_class[top].increment(1)
                self.confidence.observe(float(row[top]))
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, probs)]))
        return responses
