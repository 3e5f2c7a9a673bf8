"""Triton Python backend: logits → calibrated probabilities and the decision, with the prediction
metrics drift dashboards need.

Each item's CALIBRATION ([temperature, threshold], from the decision rule exported with the
preprocess version that handled it) is applied with `plantdx.decision`, the same functions
offline evaluation uses: PROBABILITIES = softmax(logits / temperature), and DECISION is the top
class's label when its probability reaches the threshold, otherwise "uncertain". The config
parameter `abstain_threshold` (empty: each version's own) replaces the threshold for this
deployment.

Publishes `plantdx_predictions_total{class}` (top-1 class of every image, answered or not),
the `plantdx_prediction_confidence` histogram (its calibrated top-1 probability) and
`plantdx_abstentions_total` (images answered "uncertain") through Triton's custom-metrics API,
so they appear on Triton's own metrics port.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from plantdx.decision import UNCERTAIN, DecisionRule, parse_threshold

CONFIDENCE_BUCKETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
IDENTITY = (1.0, 0.0)


def abstain_threshold(params: dict) -> float | None:
    """The `abstain_threshold` parameter: None when empty or absent, else a number in [0, 1]."""
    text = str((params.get("abstain_threshold") or {}).get("string_value", ""))
    try:
        return parse_threshold(text)
    except ValueError as exc:
        raise ValueError(f"parameter abstain_threshold {exc}") from exc


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        inputs = [t["name"] for t in config["input"]]
        outputs = [t["name"] for t in config["output"]]
        self.input_name = inputs[0]
        self.output_name = outputs[0]
        # Configs written before decision rules have neither: T=1, everything answered.
        self.calibration_name = "CALIBRATION" if "CALIBRATION" in inputs else None
        self.decision_name = "DECISION" if "DECISION" in outputs else None
        self.override = abstain_threshold(config.get("parameters", {}))
        labels_path = Path(args["model_repository"]) / "labels.txt"
        labels = labels_path.read_text().splitlines() if labels_path.is_file() else []
        n = int(config["output"][0]["dims"][0])
        self.labels = [s for s in labels if s.strip()] or [str(i) for i in range(n)]
        self.rules: dict[tuple[float, float], DecisionRule] = {}
        # Families must outlive their metrics, so they stay on the instance.
        self.prediction_family = predictions = pb_utils.MetricFamily(
            name="plantdx_predictions_total",
            description="Predicted top-1 class of every served image (answered or uncertain)",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.per_class = [
            predictions.Metric(labels={"model": "plantdx", "class": label}) for label in self.labels
        ]
        self.confidence_family = confidence = pb_utils.MetricFamily(
            name="plantdx_prediction_confidence",
            description="Calibrated top-1 probability of every served image",
            kind=pb_utils.MetricFamily.HISTOGRAM,
        )
        self.confidence = confidence.Metric(labels={"model": "plantdx"}, buckets=CONFIDENCE_BUCKETS)
        self.abstention_family = abstentions = pb_utils.MetricFamily(
            name="plantdx_abstentions_total",
            description="Served images answered 'uncertain' (top-1 probability under the threshold)",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.abstentions = abstentions.Metric(labels={"model": "plantdx"})

    def _rule(self, key: tuple[float, float]) -> DecisionRule:
        rule = self.rules.get(key)
        if rule is None:
            rule = self.rules[key] = DecisionRule(temperature=key[0], threshold=key[1])
        return rule

    def _decide(
        self, logits: np.ndarray, calibration: np.ndarray | None
    ) -> tuple[np.ndarray, list[str]]:
        """Probabilities and decisions of one request's items, each by its own rule."""
        if calibration is None:
            calibration = np.tile(np.array(IDENTITY, dtype=np.float32), (len(logits), 1))
        probs = np.empty(logits.shape, dtype=np.float32)
        decisions = [UNCERTAIN] * len(logits)
        keys = [(float(t), float(h)) for t, h in calibration.reshape(len(logits), 2)]
        for key in dict.fromkeys(keys):  # nearly always one rule per request
            rows = [i for i, k in enumerate(keys) if k == key]
            rule = self._rule(key)
            p = rule.probabilities(logits[rows])
            probs[rows] = p
            for i, d in zip(rows, rule.decisions(p, self.labels, self.override), strict=True):
                decisions[i] = d
        return probs, decisions

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                logits = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
                calibration = None
                if self.calibration_name:
                    tensor = pb_utils.get_input_tensor_by_name(request, self.calibration_name)
                    calibration = tensor.as_numpy() if tensor is not None else None
                probs, decisions = self._decide(logits.astype(np.float32), calibration)
            except Exception as exc:  # a bad rule fails its own request, not the batch
                error = pb_utils.TritonError(f"postprocessing failed: {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            for row, decision in zip(probs, decisions, strict=True):
                top = int(row.argmax())
                if top < len(self.per_class):
                    self.per_class[top].increment(1)
                self.confidence.observe(float(row[top]))
                if decision == UNCERTAIN:
                    self.abstentions.increment(1)
            outputs = [pb_utils.Tensor(self.output_name, probs)]
            if self.decision_name:
                answer = np.array([[d.encode()] for d in decisions], dtype=np.object_)
                outputs.append(pb_utils.Tensor(self.decision_name, answer))
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
