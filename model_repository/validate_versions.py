"""`plantdx repo validate`, one classifier version: its files against the model-level config
(model files present, TensorRT plans against `cc_model_filenames` and the batch profile, the
ONNX file's inputs and outputs) and against its own provenance (files unchanged since export).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from plantdx.files import file_sha256

from .layout import ENGINES_FILENAME, PROVENANCE_FILENAME, read_json
from .names import CAMS, EXPLAIN_PIXELS

_ONNX_FLOAT = 1  # onnx.TensorProto.FLOAT
# onnx.TensorProto element types and the Triton types that carry them: the outputs are FP32,
# the input uint8 pixels (or float32 in repositories made before the graph normalised them).
_ONNX_TYPES = {1: (mc.TYPE_FP32, "FP32"), 2: (mc.TYPE_UINT8, "UINT8")}


def version_problems(vdir: Path, clf: mc.ModelConfig, served: bool) -> list[str]:
    problems: list[str] = []
    if clf.backend == "python":
        params = {k: p.string_value for k, p in clf.parameters.items()}
        needed = ["model.py", params.get("onnx_filename", "model.onnx")]
    elif clf.platform == "tensorrt_plan":
        needed = []
        problems += _plan_problems(vdir, clf, served)
    else:
        needed = [clf.default_model_filename or "model.onnx"]
    problems += [f"{f} is missing" for f in needed if not (vdir / f).is_file()]
    onnx_path = vdir / (needed[-1] if needed and needed[-1].endswith(".onnx") else "model.onnx")
    if onnx_path.is_file():
        problems += _onnx_problems(onnx_path, clf)
    problems += _provenance_problems(vdir)
    return problems


def _plan_problems(vdir: Path, clf: mc.ModelConfig, served: bool) -> list[str]:
    """Plans against the model-level config; only served versions must fit the current one."""
    if not served:
        return []
    problems: list[str] = []
    listed = dict(clf.cc_model_filenames)
    if not listed:
        default = clf.default_model_filename or "model.plan"
        if not (vdir / default).is_file():
            problems.append(f"{default} is missing")
        return problems
    plans = {p.name for p in vdir.glob("*.plan")}
    for name in sorted(plans - set(listed.values())):
        problems.append(f"plan {name} is not named in cc_model_filenames, so Triton never loads it")
    for cc, name in sorted(listed.items()):
        if name not in plans:
            problems.append(
                f"cc_model_filenames maps compute capability {cc} to {name}, which this "
                "served version does not hold"
            )
    engines = read_json(vdir / ENGINES_FILENAME).get("plans", {})
    input_dims = tuple(int(d) for d in clf.input[0].dims) if clf.input else ()
    for cc, entry in sorted(engines.items()):
        name = entry.get("file")
        if name in listed.values() and listed.get(cc) != name:
            problems.append(
                f"{name} was built for compute capability {cc} but the config maps it to another"
            )
        profile = entry.get("profile", {})
        if profile.get("max") and int(profile["max"][0]) < clf.max_batch_size:
            problems.append(
                f"{name} accepts batches up to {profile['max'][0]} but the config allows "
                f"{clf.max_batch_size}"
            )
        if profile.get("min") and int(profile["min"][0]) > 1:
            problems.append(f"{name} cannot run a batch of 1 (profile min {profile['min'][0]})")
        if profile.get("max") and tuple(profile["max"][1:]) != input_dims:
            problems.append(
                f"{name} was built for inputs {profile['max'][1:]} but the config says "
                f"{list(input_dims)}"
            )
    return problems


def _onnx_io(
    path: Path,
) -> tuple[list[tuple[str, int, list[int]]], list[tuple[str, int, list[int]]]]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}

    def spec(v: Any) -> tuple[str, int, list[int]]:
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        return v.name, int(tt.elem_type), dims

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def _onnx_problems(path: Path, clf: mc.ModelConfig) -> list[str]:
    try:
        inputs, outputs = _onnx_io(path)
    except Exception as exc:
        return [f"{path.name} is not a readable ONNX model: {exc}"]
    # The Python-backend flavour feeds the ONNX file's own first input; native backends bind
    # tensors by name, so there the names must match too.
    by_name = clf.backend != "python"
    problems: list[str] = []
    config_outputs = list(clf.output)
    if not by_name and len(outputs) == len(config_outputs) - 1:
        # A version exported without class-activation maps under a config that declares
        # CAMS: the Python backend serves its logits and refuses CAMS requests on their own.
        config_outputs = [t for t in config_outputs if t.name != CAMS]
    # EXPLAIN_PIXELS is the Python backend's second name for the ONNX input.
    config_inputs = [t for t in clf.input if by_name or t.name != EXPLAIN_PIXELS]
    for kind, onnx_side, config_side in (
        ("input", inputs, config_inputs),
        ("output", outputs, config_outputs),
    ):
        if len(onnx_side) != len(config_side):
            problems.append(
                f"{path.name} has {len(onnx_side)} {kind}(s) but the config declares "
                f"{len(config_side)}"
            )
            continue
        for (name, elem, dims), t in zip(onnx_side, config_side, strict=True):
            if by_name and name != t.name:
                problems.append(f"{path.name} {kind} is named {name!r}; the config says {t.name!r}")
            allowed = _ONNX_TYPES if kind == "input" else {_ONNX_FLOAT: _ONNX_TYPES[_ONNX_FLOAT]}
            triton_type, type_name = allowed.get(elem, (None, f"ONNX type {elem}"))
            if triton_type is None or t.data_type != triton_type:
                problems.append(
                    f"{path.name} {kind} {name!r} is {type_name} in the graph but "
                    f"{mc.DataType.Name(t.data_type)[5:]} in the config"
                )
            want = [int(d) for d in t.dims]
            if clf.max_batch_size > 0:
                if not dims or dims[0] != -1:
                    problems.append(
                        f"{path.name} {kind} {name!r} has no dynamic batch dimension "
                        f"(shape {dims}) but the config batches up to {clf.max_batch_size}"
                    )
                dims = dims[1:]
            if dims != want:
                problems.append(
                    f"{path.name} {kind} {name!r} has shape {dims} (without batch); the config "
                    f"says {want}"
                )
    return problems


def _provenance_problems(vdir: Path) -> list[str]:
    prov_path = vdir / PROVENANCE_FILENAME
    if not prov_path.is_file():
        return [f"{PROVENANCE_FILENAME} is missing"]
    try:
        prov = json.loads(prov_path.read_text())
    except ValueError as exc:
        return [f"{PROVENANCE_FILENAME} is not valid JSON: {exc}"]
    problems = []
    for name, digest in sorted((prov.get("files") or {}).items()):
        path = vdir / name
        if not path.is_file():
            problems.append(f"{name} is missing (provenance lists it)")
        elif file_sha256(path) != digest:
            problems.append(f"{name} changed since it was exported (sha256 differs)")
    return problems
