"""The Triton model repository on disk: layout, atomic versions, listing and validation.

    REPO/plantdx/config.pbtxt, labels.txt, 1/           ensemble (IMAGE → PROBABILITIES)
    REPO/preprocess/config.pbtxt, N/model.py, N/preprocessing.json
    REPO/classifier/config.pbtxt, N/model.onnx [N/model.py], N/provenance.json
    REPO/postprocess/config.pbtxt, labels.txt, 1/model.py

`preprocess` and `classifier` are published together under the same version number, so the
preprocessing that version N was exported with always travels with version N.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from plantdx.exceptions import RepositoryError
from plantdx.labels import LABELS_FILENAME, read_labels, write_labels
from plantdx.preprocessing import META_FILENAME, PreprocessMeta

from .config import (
    CLASSIFIER,
    ENSEMBLE,
    POSTPROCESS,
    PREPROCESS,
    ServingOptions,
    Target,
    classifier_config,
    ensemble_config,
    parse_pbtxt,
    postprocess_config,
    preprocess_config,
    to_pbtxt,
)

PROVENANCE_FILENAME = "provenance.json"
REPOSITORY_FILENAME = "plantdx-repository.json"


def backend_source(name: str) -> str:
    """Source of a Python-backend model shipped in this package (preprocess, postprocess...)."""
    return (
        resources.files("plantdx.model_repository").joinpath("backends", f"{name}.py").read_text()
    )


def versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


@dataclass
class RepositoryInfo:
    """What a repository serves; stored at its root so every export can check it fits."""

    class_names: list[str]
    image_size: int
    target: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, repo: Path) -> RepositoryInfo | None:
        p = repo / REPOSITORY_FILENAME
        if not p.is_file():
            return None
        d = json.loads(p.read_text())
        return cls(
            d["class_names"], int(d["image_size"]), d["target"], d["kind"], d.get("options", {})
        )

    def save(self, repo: Path) -> None:
        doc = {
            "class_names": self.class_names,
            "image_size": self.image_size,
            "target": self.target,
            "kind": self.kind,
            "options": self.options,
        }
        (repo / REPOSITORY_FILENAME).write_text(json.dumps(doc, indent=2) + "\n")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _options_dict(opts: ServingOptions) -> dict[str, Any]:
    from plantdx.config import to_dict

    return to_dict(opts)


def publish_version(
    repo: str | Path,
    *,
    class_names: list[str],
    meta: PreprocessMeta,
    write_classifier_files: Callable[[Path], None],
    provenance: dict[str, Any],
    options: ServingOptions | None = None,
    target: Target = "local",
    platform: str = "onnx",
) -> int:
    """Add the next version of preprocess + classifier; returns its number.

    Everything is built in a staging directory on the same filesystem and moved into place
    by rename; on any error the repository is left exactly as it was.
    """
    repo = Path(repo)
    opts = options or ServingOptions()
    repo.mkdir(parents=True, exist_ok=True)
    info = RepositoryInfo.load(repo)
    if info is not None:
        if info.class_names != list(class_names):
            raise RepositoryError(
                f"{repo} serves {len(info.class_names)} other classes; a model with different "
                "classes needs its own repository"
            )
        if info.image_size != meta.image_size:
            raise RepositoryError(
                f"{repo} serves {info.image_size} px inputs but this model takes "
                f"{meta.image_size} px; export it to a new repository"
            )
        if info.target != target:
            raise RepositoryError(
                f"{repo} is a --target {info.target} repository; this export asked for {target}"
            )
    existing = set(versions(repo / CLASSIFIER)) | set(versions(repo / PREPROCESS))
    number = max(existing, default=0) + 1
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=repo))
    moved: list[Path] = []
    try:
        pre_dir = staging / PREPROCESS
        pre_dir.mkdir()
        _write(pre_dir / "model.py", backend_source("preprocess"))
        meta.save(pre_dir / META_FILENAME)

        clf_dir = staging / CLASSIFIER
        clf_dir.mkdir()
        write_classifier_files(clf_dir)
        if target == "local":
            _write(clf_dir / "model.py", backend_source("classifier_onnx"))
        meta.save(clf_dir / META_FILENAME)
        provenance = {**provenance, "version": number, "target": target, "platform": platform}
        _write(clf_dir / PROVENANCE_FILENAME, json.dumps(provenance, indent=2, default=str) + "\n")

        # Configs and the shared models are (re)written only when the version dirs are complete.
        configs = {
            ENSEMBLE: ensemble_config(len(class_names), opts, target=target),
            PREPROCESS: preprocess_config(meta.image_size, opts),
            CLASSIFIER: classifier_config(
                meta.image_size,
                len(class_names),
                opts,
                target=target,
                platform="tensorrt" if platform == "tensorrt" else "onnx",
            ),
            POSTPROCESS: postprocess_config(len(class_names), opts),
        }
        for name, cfg in configs.items():
            _write(staging / "configs" / name / "config.pbtxt", to_pbtxt(cfg))
        write_labels(class_names, staging / LABELS_FILENAME)

        for name in (PREPROCESS, CLASSIFIER):
            dest = repo / name / str(number)
            dest.parent.mkdir(exist_ok=True)
            os.rename(staging / name, dest)
            moved.append(dest)
        for name in (ENSEMBLE, POSTPROCESS):
            (repo / name / "1").mkdir(parents=True, exist_ok=True)
        if not (repo / POSTPROCESS / "1" / "model.py").is_file():
            _write(repo / POSTPROCESS / "1" / "model.py", backend_source("postprocess"))
        for name in (ENSEMBLE, POSTPROCESS):
            shutil.copyfile(staging / LABELS_FILENAME, repo / name / LABELS_FILENAME)
        for name in configs:
            os.replace(staging / "configs" / name / "config.pbtxt", repo / name / "config.pbtxt")
        RepositoryInfo(
            list(class_names), meta.image_size, target, opts.kind, _options_dict(opts)
        ).save(repo)
    except BaseException:
        for dest in moved:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return number


@dataclass
class VersionInfo:
    model: str
    version: int
    files: list[str]
    provenance: dict[str, Any]


def list_repository(repo: str | Path) -> list[VersionInfo]:
    repo = Path(repo)
    if not repo.is_dir():
        raise RepositoryError(f"model repository {repo} does not exist")
    out = []
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for v in versions(model_dir):
            vdir = model_dir / str(v)
            prov_path = vdir / PROVENANCE_FILENAME
            prov = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
            out.append(VersionInfo(model_dir.name, v, sorted(p.name for p in vdir.iterdir()), prov))
    return out


def validate_repository(repo: str | Path) -> list[str]:
    """Every problem that would stop the ensemble from loading; an empty list means ready."""
    repo = Path(repo)
    problems: list[str] = []
    if not repo.is_dir():
        return [f"{repo} does not exist"]
    configs = {}
    for name in (ENSEMBLE, PREPROCESS, CLASSIFIER, POSTPROCESS):
        path = repo / name / "config.pbtxt"
        if not path.is_file():
            problems.append(f"{name}: config.pbtxt is missing")
            continue
        try:
            configs[name] = parse_pbtxt(path.read_text())
        except RepositoryError as exc:
            problems.append(f"{name}: {exc}")
            continue
        if configs[name].name and configs[name].name != name:
            problems.append(f"{name}: config names the model {configs[name].name!r}")
        if not versions(repo / name):
            problems.append(f"{name}: no numbered version directory")
    if problems:
        return problems
    ens, clf = configs[ENSEMBLE], configs[CLASSIFIER]
    labels_file = ens.output[0].label_filename
    try:
        labels = read_labels(repo / ENSEMBLE / labels_file)
    except RepositoryError as exc:
        problems.append(f"{ENSEMBLE}: {exc}")
        labels = []
    n_out = int(clf.output[0].dims[-1])
    if labels and len(labels) != n_out:
        problems.append(f"{len(labels)} labels but the classifier outputs {n_out} classes")
    if int(ens.output[0].dims[-1]) != n_out:
        problems.append("ensemble output size differs from the classifier's")
    for step in ens.ensemble_scheduling.step:
        target = configs.get(step.model_name)
        if target is None:
            problems.append(f"ensemble step names unknown model {step.model_name!r}")
            continue
        inputs = {t.name for t in target.input}
        outputs = {t.name for t in target.output}
        problems += [
            f"ensemble maps {k!r} into {step.model_name}, which has inputs {sorted(inputs)}"
            for k in step.input_map
            if k not in inputs
        ]
        problems += [
            f"ensemble maps {k!r} out of {step.model_name}, which has outputs {sorted(outputs)}"
            for k in step.output_map
            if k not in outputs
        ]
    for v in versions(repo / CLASSIFIER):
        vdir = repo / CLASSIFIER / str(v)
        if clf.backend == "python":
            needed = ["model.py", "model.onnx"]
        elif clf.platform == "tensorrt_plan":
            needed = [] if any(vdir.glob("*.plan")) else ["model.plan"]
        else:
            needed = ["model.onnx"]
        problems += [f"classifier/{v}: {f} is missing" for f in needed if not (vdir / f).is_file()]
        if not (repo / PREPROCESS / str(v) / META_FILENAME).is_file():
            problems.append(f"preprocess/{v}: {META_FILENAME} is missing (versions must pair)")
    return problems
