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


def _default_threads(config: dict) -> int:
    """The cores this process may use, shared out between the model's instances. Each instance
    is a process of its own: instances with more threads than their share of the cores fight
    over them (BENCHMARKS.md: 2 single-thread instances beat 1 two-thread instance by ~12% on
    2 cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    instances = sum(int(g.get("count", 1) or 1) for g in config.get("instance_group", [])) or 1
    return max(1, (cores or 1) // instances)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0") or 0) or (
            _default_threads(config)
        )
        options.inter_op_num_threads = 1
        if params.get("allow_spinning", "") == "0":
            # Idle onnxruntime threads spin for a while before sleeping; with more threads
            # than cores in all (several instances) the spinning ones steal the busy ones' time.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
