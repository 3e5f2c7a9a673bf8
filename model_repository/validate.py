"""`plantdx repo validate`: everything that would stop the ensemble from loading or serving.

Each check returns readable problems instead of raising, so one run reports all of them:
configs parse as Triton's ModelConfig, files are present (and unchanged since export), labels
match the classifier, the ensemble's tensors connect with the same types and shapes, batch
limits fit, preprocess and classifier versions pair, plan files match `cc_model_filenames`,
and the ONNX file's inputs and outputs match the config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from plantdx.checkpoint import file_sha256
from plantdx.exceptions import RepositoryError
from plantdx.labels import LABELS_FILENAME, read_labels
from plantdx.preprocessing import META_FILENAME

from .config import WARMUP_DIR, parse_pbtxt
from .names import CLASSIFIER, ENSEMBLE, POSTPROCESS, PREPROCESS
from .repository import (
    ENGINES_FILENAME,
    PROVENANCE_FILENAME,
    RepositoryInfo,
    read_json,
    served_versions,
    versions,
)

Configs = dict[str, mc.ModelConfig]
TensorSpec = tuple[int, tuple[int, ...]]  # data type, dims without the batch dimension

_ONNX_FLOAT = 1  # onnx.TensorProto.FLOAT


def validate(repo: Path) -> list[str]:
    if not repo.is_dir():
        return [f"{repo} does not exist"]
    problems: list[str] = []
    configs = _load_configs(repo, problems)
    if problems:
        return problems
    try:
        RepositoryInfo.load(repo)
    except RepositoryError as exc:
        problems.append(str(exc))
    for check in (
        _check_labels,
        _check_wiring,
        _check_batching,
        _check_pairing,
        _check_classifier_versions,
        _check_warmup,
    ):
        problems += check(repo, configs)
    return problems


def _load_configs(repo: Path, problems: list[str]) -> Configs:
    configs: Configs = {}
    for name in (ENSEMBLE, PREPROCESS, CLASSIFIER, POSTPROCESS):
        path = repo / name / "config.pbtxt"
        if not path.is_file():
            problems.append(f"{name}: config.pbtxt is missing")
            continue
        try:
            cfg = parse_pbtxt(path.read_text())
        except RepositoryError as exc:
            problems.append(f"{name}: {exc}")
            continue
        configs[name] = cfg
        if cfg.name and cfg.name != name:
            problems.append(f"{name}: config names the model {cfg.name!r}")
        if not versions(repo / name):
            problems.append(f"{name}: no numbered version directory")
        policy = cfg.version_policy
        if policy.WhichOneof("policy_choice") == "specific":
            absent = sorted(set(policy.specific.versions) - set(versions(repo / name)))
            if absent:
                problems.append(f"{name}: version_policy names versions {absent} that are absent")
    return configs


def _served(repo: Path, cfg: mc.ModelConfig) -> list[int]:
    policy = cfg.version_policy if cfg.HasField("version_policy") else None
    return served_versions(policy, versions(repo / cfg.name))


def _spec(t: Any) -> TensorSpec:
    return int(t.data_type), tuple(int(d) for d in t.dims)


def _type_name(data_type: int) -> str:
    return str(mc.DataType.Name(data_type))


# ---------------------------------------------------------------------------------------------


def _check_labels(repo: Path, configs: Configs) -> list[str]:
    problems: list[str] = []
    ens, clf = configs[ENSEMBLE], configs[CLASSIFIER]
    if not ens.output or not clf.output:
        return ["ensemble or classifier declares no output"]
    n_out = int(clf.output[0].dims[-1])
    try:
        labels = read_labels(repo / ENSEMBLE / (ens.output[0].label_filename or LABELS_FILENAME))
    except RepositoryError as exc:
        return [f"{ENSEMBLE}: {exc}"]
    if len(labels) != n_out:
        problems.append(f"{len(labels)} labels but the classifier outputs {n_out} classes")
    if int(ens.output[0].dims[-1]) != n_out:
        problems.append("ensemble output size differs from the classifier's")
    post_labels = repo / POSTPROCESS / LABELS_FILENAME
    if not post_labels.is_file():
        problems.append(f"{POSTPROCESS}: {LABELS_FILENAME} is missing")
    elif read_labels(post_labels) != labels:
        problems.append(f"{POSTPROCESS}/{LABELS_FILENAME} differs from the ensemble's labels")
    for v in versions(repo / CLASSIFIER):
        own = repo / CLASSIFIER / str(v) / LABELS_FILENAME
        if own.is_file() and read_labels(own) != labels:
            problems.append(f"classifier/{v} was exported with other class names than the labels")
    try:
        info = RepositoryInfo.load(repo)
    except RepositoryError:
        info = None  # reported once by validate()
    if info is not None and info.class_names != labels:
        problems.append("plantdx-repository.json lists other classes than the labels")
    return problems


def _check_wiring(repo: Path, configs: Configs) -> list[str]:
    """Follow the ensemble's tensors from its input through every step to its output."""
    problems: list[str] = []
    ens = configs[ENSEMBLE]
    if not ens.ensemble_scheduling.step:
        return ["the ensemble has no steps"]
    produced: dict[str, TensorSpec] = {t.name: _spec(t) for t in ens.input}
    for step in ens.ensemble_scheduling.step:
        model = configs.get(step.model_name)
        if model is None:
            problems.append(f"ensemble step names unknown model {step.model_name!r}")
            continue
        if step.model_version != -1 and step.model_version not in _served(repo, model):
            problems.append(
                f"ensemble pins {step.model_name} version {step.model_version}, which is not served"
            )
        inputs = {t.name: _spec(t) for t in model.input}
        outputs = {t.name: _spec(t) for t in model.output}
        for name, tensor in step.input_map.items():
            if name not in inputs:
                problems.append(
                    f"ensemble maps {name!r} into {step.model_name}, which has inputs "
                    f"{sorted(inputs)}"
                )
            elif tensor not in produced:
                problems.append(f"ensemble tensor {tensor!r} is used before any step makes it")
            elif produced[tensor] != inputs[name]:
                problems.append(_mismatch(tensor, produced[tensor], step.model_name, inputs[name]))
        missing = sorted(set(inputs) - set(step.input_map))
        if missing:
            problems.append(f"ensemble feeds nothing into {step.model_name} inputs {missing}")
        for name, tensor in step.output_map.items():
            if name not in outputs:
                problems.append(
                    f"ensemble maps {name!r} out of {step.model_name}, which has outputs "
                    f"{sorted(outputs)}"
                )
            else:
                produced[tensor] = outputs[name]
    for out in ens.output:
        if out.name not in produced:
            problems.append(f"no ensemble step produces the output {out.name!r}")
        elif produced[out.name] != _spec(out):
            problems.append(_mismatch(out.name, produced[out.name], ENSEMBLE, _spec(out)))
    return problems


def _mismatch(tensor: str, have: TensorSpec, model: str, want: TensorSpec) -> str:
    return (
        f"ensemble tensor {tensor!r} is {_type_name(have[0])} {list(have[1])} but {model} "
        f"expects {_type_name(want[0])} {list(want[1])}"
    )


def _check_batching(repo: Path, configs: Configs) -> list[str]:
    problems: list[str] = []
    ens = configs[ENSEMBLE]
    for name in (PREPROCESS, CLASSIFIER, POSTPROCESS):
        cfg = configs[name]
        if ens.max_batch_size > cfg.max_batch_size:
            problems.append(
                f"the ensemble allows batches of {ens.max_batch_size} but {name} only "
                f"{cfg.max_batch_size} (Triton refuses to load it)"
            )
        too_big = [b for b in cfg.dynamic_batching.preferred_batch_size if b > cfg.max_batch_size]
        if too_big:
            problems.append(
                f"{name}: preferred batch sizes {too_big} exceed max_batch_size {cfg.max_batch_size}"
            )
    return problems


def _check_pairing(repo: Path, configs: Configs) -> list[str]:
    problems: list[str] = []
    pre_v, clf_v = set(versions(repo / PREPROCESS)), set(versions(repo / CLASSIFIER))
    for v in sorted(clf_v - pre_v):
        problems.append(f"classifier/{v} has no preprocess/{v} (versions must pair)")
    for v in sorted(pre_v - clf_v):
        problems.append(f"preprocess/{v} has no classifier/{v} (versions must pair)")
    pre_served = _served(repo, configs[PREPROCESS])
    clf_served = _served(repo, configs[CLASSIFIER])
    if pre_served != clf_served:
        problems.append(
            f"preprocess serves versions {pre_served} but classifier serves {clf_served}"
        )
    size = int(configs[CLASSIFIER].input[0].dims[-1]) if configs[CLASSIFIER].input else None
    for v in sorted(pre_v & clf_v):
        meta_path = repo / PREPROCESS / str(v) / META_FILENAME
        if not meta_path.is_file():
            problems.append(f"preprocess/{v}: {META_FILENAME} is missing (versions must pair)")
            continue
        meta = read_json(meta_path)
        own = repo / CLASSIFIER / str(v) / META_FILENAME
        if own.is_file() and read_json(own) != meta:
            problems.append(
                f"preprocess/{v} and classifier/{v} were exported with different preprocessing"
            )
        if size is not None and meta.get("image_size") != size:
            problems.append(
                f"preprocess/{v} makes {meta.get('image_size')} px inputs but the classifier "
                f"config takes {size} px"
            )
        if not (repo / PREPROCESS / str(v) / "model.py").is_file():
            problems.append(f"preprocess/{v}: model.py is missing")
    return problems


def _check_classifier_versions(repo: Path, configs: Configs) -> list[str]:
    clf = configs[CLASSIFIER]
    problems: list[str] = []
    kinds = {g.kind for g in clf.instance_group}
    if clf.platform == "tensorrt_plan" and mc.ModelInstanceGroup.KIND_CPU in kinds:
        problems.append(
            "classifier: TensorRT plans run on GPUs only, but an instance group is KIND_CPU"
        )
    served = set(_served(repo, clf))
    for v in versions(repo / CLASSIFIER):
        vdir = repo / CLASSIFIER / str(v)
        problems += [f"classifier/{v}: {p}" for p in _version_problems(vdir, clf, v in served)]
    return problems


def _version_problems(vdir: Path, clf: mc.ModelConfig, served: bool) -> list[str]:
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
    for kind, onnx_side, config_side in (
        ("input", inputs, list(clf.input)),
        ("output", outputs, list(clf.output)),
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
            if elem != _ONNX_FLOAT or t.data_type != mc.TYPE_FP32:
                problems.append(f"{path.name} {kind} {name!r} is not FP32 on both sides")
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


def _check_warmup(repo: Path, configs: Configs) -> list[str]:
    problems: list[str] = []
    for name, cfg in configs.items():
        inputs = {t.name: [int(d) for d in t.dims] for t in cfg.input}
        for w in cfg.model_warmup:
            if w.batch_size > max(cfg.max_batch_size, 1):
                problems.append(
                    f"{name}: warm-up {w.name!r} batch {w.batch_size} exceeds "
                    f"max_batch_size {cfg.max_batch_size}"
                )
            for tensor, spec in w.inputs.items():
                if tensor not in inputs:
                    problems.append(f"{name}: warm-up {w.name!r} feeds unknown input {tensor!r}")
                elif (
                    spec.input_data_file
                    and not (repo / name / WARMUP_DIR / spec.input_data_file).is_file()
                ):
                    problems.append(
                        f"{name}: warm-up {w.name!r} reads {WARMUP_DIR}/{spec.input_data_file}, "
                        "which is missing"
                    )
                elif list(spec.dims) != inputs[tensor]:
                    problems.append(
                        f"{name}: warm-up {w.name!r} input {tensor!r} has dims "
                        f"{list(spec.dims)}; the input has {inputs[tensor]}"
                    )
    return problems
