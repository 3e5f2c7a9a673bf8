"""Triton Python backend: class-activation maps → the heatmap of one class.

Inputs per item: LOGITS [C], CAMS [C, h, w] and, optionally, CLASS (INT32 [1]: the class to
explain; -1 or absent: the top class). Output: HEATMAP FP32 [h, w] in 0..1, the map ReLU'd and
divided by its maximum (`plantdx.heatmap`, the function the export's parity check and the
client's overlays use). A bad CLASS fails its own request only.
"""

from __future__ import annotations

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from plantdx.heatmap import class_heatmaps
from plantdx.model_repository.names import CAMS, CLASS_INDEX, LOGITS


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.output_name = config["output"][0]["name"]

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            try:
                logits = pb_utils.get_input_tensor_by_name(request, LOGITS).as_numpy()
                cams = pb_utils.get_input_tensor_by_name(request, CAMS).as_numpy()
                wanted = pb_utils.get_input_tensor_by_name(request, CLASS_INDEX)
                classes = wanted.as_numpy() if wanted is not None else None
                heat = class_heatmaps(cams, logits, classes)
            except Exception as exc:
                error = pb_utils.TritonError(f"heatmap failed: {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            tensor = pb_utils.Tensor(self.output_name, np.ascontiguousarray(heat, np.float32))
            responses.append(pb_utils.InferenceResponse([tensor]))
        return responses
