"""`plantdx repo validate`: everything that would stop the ensemble from loading or serving.

Each check returns readable problems instead of raising, so one run reports all of them:
configs parse as Triton's ModelConfig, files are present (and unchanged since export), labels
match the classifier, the ensemble's tensors connect with the same types and shapes, batch
limits fit, preprocess and classifier versions pair, plan files match `cc_model_filenames`,
the ONNX file's inputs and outputs match the config, and every served preprocess version has
the decision rule (`decision.json`) its config makes it send to the postprocess.

A repository exported before decision rules (no CALIBRATION in its configs, no decision.json)
is still valid: it serves as it always did.
"""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from plantdx.decision import DECISION_FILENAME, DecisionRule
from plantdx.exceptions import RepositoryError
from plantdx.labels import LABELS_FILENAME, read_labels
from plantdx.preprocessing import META_FILENAME

from .config import WARMUP_DIR, check_abstain_threshold
from .layout import (
    RepositoryInfo,
    read_json,
    versions,
)
from .names import (
    ABSTAIN_THRESHOLD,
    CALIBRATION,
    CLASSIFIER,
    ENSEMBLE,
    POSTPROCESS,
    PREPROCESS,
)
from .validate_explain import explain_problems
from .validate_versions import version_problems
from .wiring import Configs, check_wiring, load_configs
from .wiring import served as served_of


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
        check_wiring,
        _check_batching,
        _check_pairing,
        _check_classifier_versions,
        _check_warmup,
        _check_decision,
    ):
        problems += check(repo, configs)
    problems += explain_problems(repo, configs)
    return problems


def _load_configs(repo: Path, problems: list[str]) -> Configs:
    configs = load_configs(repo, (ENSEMBLE, PREPROCESS, CLASSIFIER, POSTPROCESS), problems)
    for name, cfg in configs.items():
        policy = cfg.version_policy
        if policy.WhichOneof("policy_choice") == "specific":
            absent = sorted(set(policy.specific.versions) - set(versions(repo / name)))
            if absent:
                problems.append(f"{name}: version_policy names versions {absent} that are absent")
    return configs


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
    pre_served = served_of(repo, configs[PREPROCESS])
    clf_served = served_of(repo, configs[CLASSIFIER])
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
    served = set(served_of(repo, clf))
    for v in versions(repo / CLASSIFIER):
        vdir = repo / CLASSIFIER / str(v)
        problems += [f"classifier/{v}: {p}" for p in version_problems(vdir, clf, v in served)]
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


def _check_decision(repo: Path, configs: Configs) -> list[str]:
    """Decision rules that load, on every served version whose config sends them on."""
    problems: list[str] = []
    sends = CALIBRATION in {t.name for t in configs[PREPROCESS].output}
    served = set(served_of(repo, configs[PREPROCESS]))
    for v in versions(repo / PREPROCESS):
        path = repo / PREPROCESS / str(v) / DECISION_FILENAME
        if not path.is_file():
            if sends and v in served:
                problems.append(
                    f"preprocess/{v} was exported before decision rules (no {DECISION_FILENAME}) "
                    f"and cannot send {CALIBRATION}: serve only newer versions or re-export it"
                )
            continue
        try:
            DecisionRule.load(path)
        except (ValueError, TypeError, AttributeError) as exc:
            problems.append(f"preprocess/{v}: {DECISION_FILENAME} is not a usable rule: {exc}")
    param = configs[POSTPROCESS].parameters.get(ABSTAIN_THRESHOLD)
    if param is not None:
        try:
            check_abstain_threshold(param.string_value)
        except RepositoryError as exc:
            problems.append(f"{POSTPROCESS}: {exc}")
    return problems


def validate_repository(repo: str | Path) -> list[str]:
    """Every problem that would stop the ensemble from loading; an empty list means ready."""
    return validate(Path(repo))
