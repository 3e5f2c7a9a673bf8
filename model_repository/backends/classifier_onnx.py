"""Triton Python backend: the classifier's ONNX file run with onnxruntime.

The pip-installed Triton has no native ONNX Runtime backend, so this model stands in for it
(`--target local`). All requests of a dynamic batch run as one onnxruntime call.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        options = ort.SessionOptions()
        threads = int(params.get("intra_op_threads", "0") or 0) or (os.cpu_count() or 1)
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(version_dir / params.get("onnx_filename", "model.onnx")),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        self.onnx_input = self.session.get_inputs()[0].name
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests: list) -> list:
        arrays = [
            pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests
        ]
        sizes = [a.shape[0] for a in arrays]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        try:
            (logits,) = self.session.run(None, {self.onnx_input: batch})
        except Exception as exc:
            error = pb_utils.TritonError(f"classifier failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        start = 0
        for n in sizes:
            out = np.ascontiguousarray(logits[start : start + n], dtype=np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, out)]))
            start += n
        return responses
