"""Triton Python backend: image bytes → the classifier's pixels, and the version's decision rule.

Runs `plantdx.preprocessing` — the same code training evaluation uses — with the metadata
that export wrote beside this file. All images of a dynamic batch are decoded into one buffer
and sent on as uint8 [3, size, size] (the classifier normalises them inside its graph, with the
same two float32 operations as `Normalizer`: a quarter of the bytes of float pixels through the
stubs' shared memory); a config whose PIXELS are FP32 (a repository made before that) gets them
normalised here, in one vectorised pass. A bad image fails its own request only, with its reason.

Every item also carries CALIBRATION, [temperature, threshold, version]: the decision rule
exported beside this version (`decision.json`; the identity rule when absent), which the
postprocess applies, and this version's number, which labels the postprocess's metrics: the
rule and the version travel with the item through the ensemble. (Versions exported before the
version was sent emit [temperature, threshold]; the postprocess accepts both.)

A random share of the decoded photos (config parameter `drift_sample_rate`) has its image
statistics (`plantdx.imagestats`, on the pixels sent on) observed in one histogram each, `plantdx_image_<statistic>{model, version}`: the live side of
drift monitoring, compared with the reference exported beside the classifier version, which
this model publishes as gauges while it is loaded (`plantdx.reference_series`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from plantdx.decision import DECISION_FILENAME, DecisionRule
from plantdx.exceptions import PreprocessError
from plantdx.imagestats import EDGES, METRIC_PREFIX, image_stats
from plantdx.model_repository.names import CALIBRATION, DRIFT_SAMPLE_RATE, ENSEMBLE_INPUT
from plantdx.preprocessing import (
    META_FILENAME,
    REJECTION_REASONS,
    PreprocessMeta,
    Preprocessor,
    to_chw,
)
from plantdx.reference_series import publish_reference

# What CALIBRATION holds per item; the postprocess reads the marker to tell this model.py from
# one exported before the version was sent.
CALIBRATION_FIELDS = ("temperature", "threshold", "version")


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.preprocessor = Preprocessor(PreprocessMeta.load(version_dir / META_FILENAME))
        rule = DecisionRule.load(version_dir / DECISION_FILENAME)
        version = str(args["model_version"])
        config = json.loads(args["model_config"])
        outputs = {o["name"]: o for o in config["output"]}
        self.output_name = config["output"][0]["name"]
        # uint8 pixels for the classifier to normalise, or (configs from before) float32 ones.
        self.float_pixels = config["output"][0].get("data_type") == "TYPE_FP32"
        # A config written before decision rules has no CALIBRATION output; one written before
        # the version was sent declares exactly [2] values.
        self.calibration_name = CALIBRATION if CALIBRATION in outputs else None
        dims = [int(d) for d in (outputs.get(CALIBRATION) or {}).get("dims", [])]
        values = [rule.temperature, rule.threshold, float(version)]
        self.calibration = np.array(values[:2] if dims == [2] else values, dtype=np.float32)
        # Keep the family alive as long as its metrics: the stub frees both together.
        self.rejection_family = family = pb_utils.MetricFamily(
            name="plantdx_preprocess_rejections_total",
            description="Images rejected by preprocessing, by reason",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.rejections = {
            reason: family.Metric(
                labels={"model": args["model_name"], "version": version, "reason": reason}
            )
            for reason in REJECTION_REASONS
        }
        # Drift inputs: one histogram per image statistic, made at this version's first image.
        self.stat_labels = {"model": args["model_name"], "version": version}
        self.stat_families = {
            name: pb_utils.MetricFamily(
                name=f"{METRIC_PREFIX}{name}",
                description=f"Image statistic '{name}' of every decoded served photo",
                kind=pb_utils.MetricFamily.HISTOGRAM,
            )
            for name in EDGES
        }
        self.stat_metrics: dict[str, Any] = {}
        # Observe a random share of the photos (config parameter; every photo in configs
        # written before the parameter existed).
        rate = (config.get("parameters", {}).get(DRIFT_SAMPLE_RATE) or {}).get("string_value")
        self.sample_rate = min(1.0, max(0.0, float(rate))) if rate else 1.0
        self.rng = np.random.default_rng()
        # The other side of drift monitoring: this version's reference as gauges
        # (plantdx.reference_series), published while the version is loaded.
        try:
            self.reference_metrics = publish_reference(pb_utils, version_dir, self.stat_labels)
        except Exception as exc:  # serving goes on; the drift rules have no reference for it
            self.reference_metrics = []
            pb_utils.Logger.log_warn(f"version {version}: drift reference not published: {exc}")

    def execute(self, requests: list) -> list:
        try:
            batches = [
                pb_utils.get_input_tensor_by_name(r, ENSEMBLE_INPUT).as_numpy().reshape(-1)
                for r in requests
            ]
            images = [bytes(data) for batch in batches for data in batch]
            sizes: list[tuple[int, int]] = []
            pixels, errors = self.preprocessor.decode_batch(images, sizes)
            sent = (
                self.preprocessor.normalize.batch(pixels) if self.float_pixels else to_chw(pixels)
            )
        except Exception as exc:  # nothing decodable: every request gets the reason, none hangs
            error = pb_utils.TritonError(f"preprocessing failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        start = 0
        for batch in batches:
            end = start + len(batch)
            responses.append(self._response(sent[start:end], errors[start:end]))
            start = end
        self._observe_stats(pixels, errors, sizes)
        return responses

    def _observe_stats(self, pixels: np.ndarray, errors: list, sizes: list) -> None:
        """The image statistics of every decoded photo; a photo whose statistics fail is left
        out of the histograms, and its request is answered as usual."""
        if not self.stat_metrics:
            try:
                self.stat_metrics = {
                    name: family.Metric(labels=self.stat_labels, buckets=list(EDGES[name]))
                    for name, family in self.stat_families.items()
                }
            except Exception:
                return
        for i, error in enumerate(errors):
            if error is not None or self.rng.random() >= self.sample_rate:
                continue
            try:
                stats = image_stats(pixels[i], sizes[i]).to_dict()
            except Exception:
                continue
            for name, metric in self.stat_metrics.items():
                metric.observe(stats[name])

    def _response(self, pixels: np.ndarray, errors: list[PreprocessError | None]) -> object:
        bad = [(i, e) for i, e in enumerate(errors) if e is not None]
        if not bad:
            outputs = [pb_utils.Tensor(self.output_name, pixels)]
            if self.calibration_name:
                calibration = np.tile(self.calibration, (len(errors), 1))
                outputs.append(pb_utils.Tensor(self.calibration_name, calibration))
            return pb_utils.InferenceResponse(outputs)
        for _, exc in bad:
            self.rejections.get(exc.reason, self.rejections["not_an_image"]).increment(1)
        index, exc = bad[0]
        where = f"image {index + 1} of {len(errors)}: " if len(errors) > 1 else ""
        error = pb_utils.TritonError(f"invalid image ({exc.reason}): {where}{exc}")
        return pb_utils.InferenceResponse(output_tensors=[], error=error)
