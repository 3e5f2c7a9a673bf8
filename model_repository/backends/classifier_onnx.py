"""Triton Python backend: the classifier's ONNX file run with onnxruntime.

The pip-installed Triton has no native ONNX Runtime backend, so this model stands in for it
(`--target local`). All requests of a dynamic batch run as one onnxruntime call, which computes
only the outputs some request asked for: LOGITS alone (what the `plantdx` ensemble asks), or
LOGITS and the class-activation maps CAMS when a request of the batch wants them (the
`plantdx_explain` ensemble); each response carries only what its request asked for. A version
exported without maps answers an explanation request (EXPLAIN_PIXELS) with an error of its own;
a plain request (PIXELS) that asks for every output, as Triton's warm-up does, gets LOGITS.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from plantdx.cores import usable_cores
from plantdx.model_repository.names import CAMS, EXPLAIN_PIXELS, ONNX_CAMS


def _default_threads(config: dict) -> int:
    """The cores this process may use (a cgroup's CPU quota and PLANTDX_CORES included:
    plantdx.cores), shared out between the model's instances. Each instance is a process of its
    own: instances with more threads than their share of the cores fight over them
    (BENCHMARKS.md: 2 single-thread instances beat 1 two-thread instance by ~12% on 2 cores)."""
    instances = sum(int(g.get("count", 1) or 1) for g in config.get("instance_group", [])) or 1
    return max(1, usable_cores() // instances)


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
        self.cams_name = CAMS
        onnx_outputs = [o.name for o in self.session.get_outputs()]
        self.onnx_logits = onnx_outputs[0]
        self.onnx_cams = ONNX_CAMS if ONNX_CAMS in onnx_outputs else None
        self.version = args["model_version"]

    def _pixels(self, request: object) -> tuple[np.ndarray, bool]:
        """PIXELS, or EXPLAIN_PIXELS from the `plantdx_explain` ensemble (names.py says why);
        and whether it was the latter."""
        tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
        if tensor is not None:
            return tensor.as_numpy(), False
        return pb_utils.get_input_tensor_by_name(request, EXPLAIN_PIXELS).as_numpy(), True

    def execute(self, requests: list) -> list:
        pixels = [self._pixels(r) for r in requests]
        arrays = [a for a, _ in pixels]
        sizes = [a.shape[0] for a in arrays]
        wants = [set(r.requested_output_names()) for r in requests]
        want_cams = [self.cams_name in w for w in wants]
        fetch = [self.onnx_logits]
        if self.onnx_cams and any(want_cams):
            fetch.append(self.onnx_cams)
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        try:
            results = self.session.run(fetch, {self.onnx_input: batch})
        except Exception as exc:
            error = pb_utils.TritonError(f"classifier failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        logits = results[0]
        cams = results[1] if len(results) > 1 else None
        responses = []
        start = 0
        explaining = [e for _, e in pixels]
        for n, want, cam, explain in zip(sizes, wants, want_cams, explaining, strict=True):
            end = start + n
            outputs = []
            if self.output_name in want or not want:
                out = np.ascontiguousarray(logits[start:end], dtype=np.float32)
                outputs.append(pb_utils.Tensor(self.output_name, out))
            if cam and explain and cams is None:
                error = pb_utils.TritonError(
                    f"classifier version {self.version} was exported without class-activation "
                    "maps (CAMS); explanations need a version exported with them"
                )
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
            else:
                if cam and cams is not None:
                    maps = np.ascontiguousarray(cams[start:end], dtype=np.float32)
                    outputs.append(pb_utils.Tensor(self.cams_name, maps))
                responses.append(pb_utils.InferenceResponse(outputs))
            start = end
        return responses
