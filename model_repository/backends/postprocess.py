"""Triton Python backend: logits → calibrated probabilities and the decision, with the prediction
metrics drift dashboards need.

Each item's CALIBRATION ([temperature, threshold], from the decision rule exported with the
preprocess version that handled it) is applied with `plantdx.decision`, the same functions
offline evaluation uses: PROBABILITIES = softmax(logits / temperature), and DECISION is the top
class's label when its probability reaches the threshold, otherwise "uncertain". The config
parameter `abstain_threshold` (empty: each version's own) replaces the threshold for this
deployment.

Publishes `plantdx_predictions_total{version, class}` (top-1 class of every image, answered or
not), the `plantdx_prediction_confidence{version}` histogram (its calibrated top-1 probability)
and `plantdx_abstentions_total{version}` (images answered "uncertain") through Triton's
custom-metrics API, so they appear on Triton's own metrics port. `version` is the classifier
version that produced the prediction: the third value of CALIBRATION, sent by the preprocess of
the same version, used as a label only when the repository has that version
(`model_repository/version_labels.py`: a forged CALIBRATION sent to the postprocess directly
makes no new series). A version exported before that sends [temperature, threshold] only; it is
recognised by its decision rule among such versions in the repository (`preprocess/N/`), and
labelled "unknown" when the rule does not single it out. Counters are incremented once per
(version, class) per execute(); the histogram observes each image.

The crop (optional input CROP, TYPE_STRING [1] per item, `plantdx.crops`): when a request
carries it, each item's probabilities are restricted to that crop's classes and renormalised
before the threshold applies (`DecisionRule.probabilities(logits, allowed)`), by the crops
exported with the item's version (`preprocess/N/crops.json`, read at the version's first crop;
from the labels when absent). A crop name that is empty, too long, unknown or ambiguous fails
its own request with "invalid crop: ..."; the metrics never carry the crop text.

Capture for relabelling (`plantdx.capture`, off unless the server's environment sets
PLANTDX_CAPTURE): the ensemble also feeds the photo's bytes (optional input IMAGE), and the
answers chosen for capture are queued for a background writer; `plantdx_captures_total`
counts their outcomes. The request path never waits on the writer.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from plantdx.capture.hook import METRIC_HELP, METRIC_NAME, CaptureHook
from plantdx.crops import CropError, VersionCrops
from plantdx.decision import DECISION_FILENAME, UNCERTAIN, DecisionRule, parse_threshold
from plantdx.model_repository.names import (
    ABSTAIN_THRESHOLD,
    CALIBRATION,
    CROP,
    DECISION,
    ENSEMBLE,
    ENSEMBLE_INPUT,
)
from plantdx.model_repository.version_labels import VersionLabels

CONFIDENCE_BUCKETS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
IDENTITY = (1.0, 0.0)
UNKNOWN_VERSION = "unknown"
MAX_RULES = 64  # decision rules cached (one per version normally)
SENDS_VERSION_MARKER = b"CALIBRATION_FIELDS"  # in preprocess model.py files that send it


def abstain_threshold(params: dict) -> float | None:
    """The `abstain_threshold` parameter: None when empty or absent, else a number in [0, 1]."""
    text = str((params.get(ABSTAIN_THRESHOLD) or {}).get("string_value", ""))
    try:
        return parse_threshold(text)
    except ValueError as exc:
        raise ValueError(f"parameter {ABSTAIN_THRESHOLD} {exc}") from exc


def invalid_argument(message: str) -> Any:
    """An error that is the request's fault: HTTP 400 / gRPC INVALID_ARGUMENT (not INTERNAL)
    where the stub has error codes (read at the call: the stub sets them up after import)."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


def legacy_versions(preprocess_dir: Path) -> dict[tuple[float, float], str]:
    """(temperature, threshold) → version, for the preprocess versions whose model.py sends no
    version, where the rule names exactly one of them (as float32, as CALIBRATION carries it)."""
    found: dict[tuple[float, float], list[str]] = {}
    if not preprocess_dir.is_dir():
        return {}
    for vdir in sorted(preprocess_dir.iterdir()):
        model = vdir / "model.py"
        if not (vdir.name.isdigit() and model.is_file()):
            continue
        try:
            if SENDS_VERSION_MARKER in model.read_bytes():
                continue
            rule = DecisionRule.load(vdir / DECISION_FILENAME)
        except (OSError, ValueError, TypeError, AttributeError):
            continue
        values = np.array([rule.temperature, rule.threshold], dtype=np.float32)
        found.setdefault((float(values[0]), float(values[1])), []).append(vdir.name)
    return {key: names[0] for key, names in found.items() if len(names) == 1}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        inputs = [t["name"] for t in config["input"]]
        outputs = [t["name"] for t in config["output"]]
        self.input_name = inputs[0]
        self.output_name = outputs[0]
        # Configs written before decision rules have neither: T=1, everything answered.
        self.calibration_name = CALIBRATION if CALIBRATION in inputs else None
        self.decision_name = DECISION if DECISION in outputs else None
        self.override = abstain_threshold(config.get("parameters", {}))
        labels_path = Path(args["model_repository"]) / "labels.txt"
        labels = labels_path.read_text().splitlines() if labels_path.is_file() else []
        n = int(config["output"][0]["dims"][0])
        self.labels = [s for s in labels if s.strip()] or [str(i) for i in range(n)]
        self.rules: dict[tuple[float, float], DecisionRule] = {}
        # A repository's versions that send no version of their own, by their rule.
        self.legacy = legacy_versions(Path(args["model_repository"]).parent / "preprocess")
        self.versions = VersionLabels(Path(args["model_repository"]).parent / "preprocess")
        # Optional inputs that configs written before crops and capture lack: the crop named by
        # the request, and the photo's bytes for capture.
        self.crop_name = CROP if CROP in inputs else None
        self.crops = VersionCrops(Path(args["model_repository"]).parent / "preprocess", self.labels)
        # Families must outlive their metrics, so they stay on the instance; the metrics are
        # made on first use, per (version, class) and per version.
        self.prediction_family = pb_utils.MetricFamily(
            name="plantdx_predictions_total",
            description="Predicted top-1 class of every served image (answered or uncertain)",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.confidence_family = pb_utils.MetricFamily(
            name="plantdx_prediction_confidence",
            description="Calibrated top-1 probability of every served image",
            kind=pb_utils.MetricFamily.HISTOGRAM,
        )
        self.abstention_family = pb_utils.MetricFamily(
            name="plantdx_abstentions_total",
            description="Served images answered 'uncertain' (top-1 probability under the threshold)",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.per_class: dict[tuple[str, int], Any] = {}
        self.confidence: dict[str, Any] = {}
        self.abstentions: dict[str, Any] = {}
        self.image_name = ENSEMBLE_INPUT if ENSEMBLE_INPUT in inputs else None
        self.capture: CaptureHook | None = None
        if self.image_name:
            self.capture_family = pb_utils.MetricFamily(
                name=METRIC_NAME, description=METRIC_HELP, kind=pb_utils.MetricFamily.COUNTER
            )
            self.capture = CaptureHook.from_env(
                lambda labels: self.capture_family.Metric(labels=labels)
            )

    def finalize(self) -> None:
        if self.capture is not None:
            self.capture.close()

    def _labels(self, version: str, **extra: str) -> dict[str, str]:
        return {"model": ENSEMBLE, "version": version, **extra}

    def _count_class(self, version: str, top: int, n: int) -> None:
        metric = self.per_class.get((version, top))
        if metric is None:
            labels = self._labels(version, **{"class": self.labels[top]})
            metric = self.per_class[version, top] = self.prediction_family.Metric(labels=labels)
        metric.increment(n)

    def _observe(self, version: str, values: list[float]) -> None:
        metric = self.confidence.get(version)
        if metric is None:
            metric = self.confidence[version] = self.confidence_family.Metric(
                labels=self._labels(version), buckets=CONFIDENCE_BUCKETS
            )
        for value in values:  # the custom-metrics API has no batched observe
            metric.observe(value)

    def _count_abstentions(self, version: str, n: int) -> None:
        metric = self.abstentions.get(version)
        if metric is None:
            labels = self._labels(version)
            metric = self.abstentions[version] = self.abstention_family.Metric(labels=labels)
        if n:  # made at a version's first image, so its share reads 0 rather than no data
            metric.increment(n)

    def _rule(self, key: tuple[float, float]) -> DecisionRule:
        rule = self.rules.get(key)
        if rule is None:
            if len(self.rules) >= MAX_RULES:  # forged CALIBRATION values: keep memory bounded
                self.rules.clear()
            rule = self.rules[key] = DecisionRule(temperature=key[0], threshold=key[1])
        return rule

    def _version(self, key: tuple[float, ...]) -> str:
        if len(key) > 2:
            return self.versions.label(key[2])
        return self.legacy.get((key[0], key[1]), UNKNOWN_VERSION)

    def _decide(
        self, logits: np.ndarray, calibration: np.ndarray | None, crops: np.ndarray | None = None
    ) -> tuple[np.ndarray, list[str], list[str]]:
        """Probabilities, decisions and versions of one request's items, each by its own rule
        (and restricted to its crop's classes when `crops` names one per item)."""
        n = len(logits)
        if crops is not None and len(crops) != n:
            raise CropError(f"{len(crops)} crop names for {n} images")
        if calibration is None:
            calibration = np.tile(np.array(IDENTITY, dtype=np.float32), (n, 1))
        calibration = calibration.reshape(n, -1)
        if calibration.shape[1] not in (2, 3):
            raise ValueError(f"CALIBRATION has {calibration.shape[1]} values per item, not 2 or 3")
        probs = np.empty(logits.shape, dtype=np.float32)
        decisions = [UNCERTAIN] * n
        versions = [UNKNOWN_VERSION] * n
        rows = [tuple(float(x) for x in row) for row in calibration]
        for key in dict.fromkeys(rows):  # nearly always one rule and version per request
            where = [i for i, k in enumerate(rows) if k == key]
            rule = self._rule((key[0], key[1]))
            version = self._version(key)
            allowed = None if crops is None else self.crops.get(version).masks(crops[where])
            p = rule.probabilities(logits[where], allowed)
            probs[where] = p
            for i, d in zip(where, rule.decisions(p, self.labels, self.override), strict=True):
                decisions[i] = d
                versions[i] = version
        return probs, decisions, versions

    def _publish(self, seen: list[tuple[str, int, float, bool]]) -> None:
        """The metrics of one execute(): one increment per (version, class) and per version."""
        classes = Counter((version, top) for version, top, _, _ in seen)
        for (version, top), n in classes.items():
            if top < len(self.labels):
                self._count_class(version, top, n)
        by_version: dict[str, list[float]] = {}
        abstained: Counter[str] = Counter()
        for version, _, confidence, uncertain in seen:
            by_version.setdefault(version, []).append(confidence)
            abstained[version] += uncertain
        for version, values in by_version.items():
            self._observe(version, values)
        for version, n in abstained.items():
            self._count_abstentions(version, n)

    def _capture(
        self,
        request: Any,
        tops: np.ndarray,
        confidences: list[float],
        decisions: list[str],
        versions: list[str],
    ) -> None:
        """Offer this request's answers for capture; never fails the request."""

        def images() -> list[bytes] | None:
            tensor = pb_utils.get_input_tensor_by_name(request, self.image_name)
            return None if tensor is None else [bytes(x) for x in tensor.as_numpy().reshape(-1)]

        assert self.capture is not None
        try:
            labels = [self.labels[t] if t < len(self.labels) else str(t) for t in tops]
            self.capture.after(images, labels, confidences, decisions, versions)
        except Exception as exc:  # capture is best-effort
            pb_utils.Logger.log_warn(f"capture skipped: {exc}")

    def execute(self, requests: list) -> list:
        responses = []
        seen: list[tuple[str, int, float, bool]] = []  # version, top class, confidence, abstained
        if self.capture is not None:
            self.capture.publish()
        for request in requests:
            try:
                logits = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
                calibration = None
                if self.calibration_name:
                    tensor = pb_utils.get_input_tensor_by_name(request, self.calibration_name)
                    calibration = tensor.as_numpy() if tensor is not None else None
                crops = None
                if self.crop_name:
                    tensor = pb_utils.get_input_tensor_by_name(request, self.crop_name)
                    crops = tensor.as_numpy().reshape(-1) if tensor is not None else None
                probs, decisions, versions = self._decide(
                    logits.astype(np.float32), calibration, crops
                )
            except CropError as exc:  # a bad crop name fails its own request, not the batch
                error = invalid_argument(f"invalid crop: {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            except Exception as exc:  # a bad rule fails its own request, not the batch
                error = pb_utils.TritonError(f"postprocessing failed: {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            tops = probs.argmax(axis=1)
            confidences = probs[np.arange(len(probs)), tops].tolist()
            seen.extend(
                (v, int(t), c, d == UNCERTAIN)
                for v, t, c, d in zip(versions, tops, confidences, decisions, strict=True)
            )
            if self.capture is not None:
                self._capture(request, tops, confidences, decisions, versions)
            outputs = [pb_utils.Tensor(self.output_name, probs)]
            if self.decision_name:
                answer = np.array([[d.encode()] for d in decisions], dtype=np.object_)
                outputs.append(pb_utils.Tensor(self.decision_name, answer))
            responses.append(pb_utils.InferenceResponse(outputs))
        self._publish(seen)
        return responses
