"""Triton Python backend: encoded image bytes → normalised pixels.

Runs `plantdx.preprocessing` — the same code training evaluation uses — with the metadata
that export wrote beside this file. A bad image fails its own request only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from plantdx.exceptions import PreprocessError
from plantdx.preprocessing import META_FILENAME, REJECTION_REASONS, PreprocessMeta, Preprocessor


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.preprocessor = Preprocessor(PreprocessMeta.load(version_dir / META_FILENAME))
        config = json.loads(args["model_config"])
        self.output_name = config["output"][0]["name"]
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
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
            try:
                pixels = np.stack([self.preprocessor(bytes(data)) for data in images])
            except PreprocessError as exc:
                self.rejections[exc.reason].increment(1)
                error = pb_utils.TritonError(f"invalid image ({exc.reason}): {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            except Exception as exc:  # never let one request take the batch down
                error = pb_utils.TritonError(f"preprocessing failed: {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            responses.append(
                pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, pixels)])
            )
        return responses
