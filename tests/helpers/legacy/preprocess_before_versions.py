"""Triton Python backend: encoded image bytes → normalised pixels, and the version's decision rule.

Runs `plantdx.preprocessing` — the same code training evaluation uses — with the metadata
that export wrote beside this file. All images of a dynamic batch are decoded into one buffer
and normalised in one vectorised pass; a bad image fails its own request only, with its reason.

Every item also carries CALIBRATION, [temperature, threshold] of the decision rule exported
beside this version (`decision.json`; the identity rule when absent), which the postprocess
applies: the rule travels with the version through the ensemble.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from plantdx.decision import DECISION_FILENAME, DecisionRule
from plantdx.exceptions import PreprocessError
from plantdx.preprocessing import (
    META_FILENAME,
    REJECTION_REASONS,
    PreprocessMeta,
    Preprocessor,
    to_chw,
)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.preprocessor = Preprocessor(PreprocessMeta.load(version_dir / META_FILENAME))
        rule = DecisionRule.load(version_dir / DECISION_FILENAME)
        self.calibration = np.array([rule.temperature, rule.threshold], dtype=np.float32)
        config = json.loads(args["model_config"])
        outputs = [o["name"] for o in config["output"]]
        self.output_name = outputs[0]
        # A config written before decision rules has no CALIBRATION output. The one config of
        # the repository decides the pixels: float32 in repositories of that time, uint8 (what
        # the classifier normalises itself) when this file sits in a repository made since.
        self.float_pixels = config["output"][0].get("data_type") == "TYPE_FP32"
        self.calibration_name = "CALIBRATION" if "CALIBRATION" in outputs else None
        # Keep the family alive as long as its metrics: the stub frees both together.
        self.rejection_family = family = pb_utils.MetricFamily(
            name="plantdx_preprocess_rejections_total",
            description="Images rejected by preprocessing, by reason",
            kind=pb_utils.MetricFamily.COUNTER,
        )
        self.rejections = {
            reason: family.Metric(labels={"model": args["model_name"], "reason": reason})
            for reason in REJECTION_REASONS
        }

    def execute(self, requests: list) -> list:
        try:
            batches = [
                pb_utils.get_input_tensor_by_name(r, "IMAGE").as_numpy().reshape(-1)
                for r in requests
            ]
            images = [bytes(data) for batch in batches for data in batch]
            pixels, errors = self.preprocessor.decode_batch(images)
            normalized = (
                self.preprocessor.normalize.batch(pixels) if self.float_pixels else to_chw(pixels)
            )
        except Exception as exc:  # nothing decodable: every request gets the reason, none hangs
            error = pb_utils.TritonError(f"preprocessing failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        start = 0
        for batch in batches:
            end = start + len(batch)
            responses.append(self._response(normalized[start:end], errors[start:end]))
            start = end
        return responses

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
