"""`plantdx repo validate`, the explanation path: the `heatmap` model and the `plantdx_explain`
ensemble, when a repository has them (one without them is valid and serves as before).

Checks: both are present or neither, their configs parse as Triton's ModelConfig, the ensemble's
tensors connect (the classifier must declare CAMS; with --target triton, `classifier_cams`),
batch limits fit, the ensemble's labels are the `plantdx` ensemble's, and the heatmap's
model.py is there. `classifier_cams`'s versions each hold its model.onnx and are versions of
the classifier (published together); a served version without one has no explanations.
"""

from __future__ import annotations

from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from plantdx.exceptions import RepositoryError
from plantdx.labels import LABELS_FILENAME, read_labels

from .layout import versions
from .names import (
    CAMS,
    CAMS_CLASSIFIER,
    CLASSIFIER,
    ENSEMBLE,
    EXPLAIN_ENSEMBLE,
    HEATMAP_MODEL,
    ONNX_CAMS,
)
from .wiring import check_wiring, load_configs

Configs = dict[str, mc.ModelConfig]
EXPLAIN_MODELS = (HEATMAP_MODEL, EXPLAIN_ENSEMBLE)


def explain_problems(repo: Path, configs: Configs) -> list[str]:
    present = [n for n in EXPLAIN_MODELS if (repo / n).exists()]
    if not present:
        return []
    if len(present) == 1:
        other = next(n for n in EXPLAIN_MODELS if n not in present)
        return [f"{present[0]} is present without {other}: they are published together"]
    problems: list[str] = []
    extra = load_configs(repo, EXPLAIN_MODELS, problems)
    if problems:
        return problems
    steps = {step.model_name for step in extra[EXPLAIN_ENSEMBLE].ensemble_scheduling.step}
    maps = CAMS_CLASSIFIER if CAMS_CLASSIFIER in steps else CLASSIFIER
    if maps == CAMS_CLASSIFIER:
        extra.update(load_configs(repo, (CAMS_CLASSIFIER,), problems))
        if problems:
            return problems
        problems += _cams_versions(repo)
    clf = {**configs, **extra}.get(maps)
    if clf is not None and not {CAMS, ONNX_CAMS} & {t.name for t in clf.output}:
        problems.append(
            f"{EXPLAIN_ENSEMBLE} needs the classifier's class-activation maps, but the "
            f"{maps} config has no CAMS output (a model without them was exported into a "
            f"repository that serves explanations): export it to its own repository, or "
            f"remove {EXPLAIN_ENSEMBLE}/ and {HEATMAP_MODEL}/"
        )
        return problems

    problems += check_wiring(repo, {**configs, **extra}, EXPLAIN_ENSEMBLE)
    ens = extra[EXPLAIN_ENSEMBLE]
    for step in ens.ensemble_scheduling.step:
        cfg = {**configs, **extra}.get(step.model_name)
        if cfg is not None and ens.max_batch_size > cfg.max_batch_size:
            problems.append(
                f"{EXPLAIN_ENSEMBLE} allows batches of {ens.max_batch_size} but "
                f"{step.model_name} only {cfg.max_batch_size} (Triton refuses to load it)"
            )
    problems += _labels_problems(repo, configs, ens)
    for v in versions(repo / HEATMAP_MODEL):
        if not (repo / HEATMAP_MODEL / str(v) / "model.py").is_file():
            problems.append(f"{HEATMAP_MODEL}/{v}: model.py is missing")
    return problems


def _cams_versions(repo: Path) -> list[str]:
    problems = []
    pair = set(versions(repo / CLASSIFIER))
    for v in versions(repo / CAMS_CLASSIFIER):
        if not (repo / CAMS_CLASSIFIER / str(v) / "model.onnx").is_file():
            problems.append(f"{CAMS_CLASSIFIER}/{v}: model.onnx is missing")
        if v not in pair:
            problems.append(
                f"{CAMS_CLASSIFIER}/{v} has no classifier version {v}: they are published together"
            )
    return problems


def _labels_problems(repo: Path, configs: Configs, ens: mc.ModelConfig) -> list[str]:
    base = configs.get(ENSEMBLE)
    if base is None or not base.output or not ens.output:
        return []
    try:
        want = read_labels(repo / ENSEMBLE / (base.output[0].label_filename or LABELS_FILENAME))
        have = read_labels(
            repo / EXPLAIN_ENSEMBLE / (ens.output[0].label_filename or LABELS_FILENAME)
        )
    except RepositoryError as exc:
        return [f"{EXPLAIN_ENSEMBLE}: {exc}"]
    if have != want:
        return [f"{EXPLAIN_ENSEMBLE} labels differ from the {ENSEMBLE} ensemble's"]
    return []
