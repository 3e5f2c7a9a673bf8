"""Publishing a version into the Triton model repository (layout: `layout.py`), atomically.

`preprocess` and `classifier` are published together under the same version number, so the
preprocessing and the decision rule (temperature, abstention threshold) that version N was
exported with always travel with version N.

A version is written in a hidden staging directory inside its model directory (Triton ignores
non-numeric version directories, but treats every directory at the repository root as a model)
and renamed into place; configs and shared files are replaced by rename. Every change is
recorded in the on-disk journal before it is made and fsynced after (`journal.py`): any
failure undoes all of them, so a failed export leaves the repository as it was, and an export
that was killed is rolled back (or completed) by the next export or `plantdx repo validate
--repair`. SIGTERM and SIGINT wait for the step in progress, then roll back.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plantdx.crops import CROPS_FILENAME, CropMap
from plantdx.decision import DECISION_FILENAME, DecisionRule
from plantdx.exceptions import RepositoryError
from plantdx.files import file_sha256
from plantdx.labels import LABELS_FILENAME, write_labels
from plantdx.preprocessing import META_FILENAME, PreprocessMeta
from plantdx.reference import REFERENCE_FILENAME

from .config import (
    ServingOptions,
    Target,
    classifier_config,
    postprocess_config,
    preprocess_config,
    to_pbtxt,
    warmup_files,
)
from .ensembles import ensemble_config
from .explain import explain_configs
from .journal import Journal, locked, recover
from .layout import (
    ENGINES_FILENAME,
    GATE_FILENAME,
    PARITY_FILENAME,
    PLATFORMS,
    PROVENANCE_FILENAME,
    REPOSITORY_FILENAME,
    RepositoryInfo,
    VersionInfo,
    backend_source,
    describe_repository,
    list_repository,
    plan_filenames,
    read_json,
    served_versions,
    versions,
    write_json,
)
from .names import (
    CAMS_CLASSIFIER,
    CLASSIFIER,
    ENSEMBLE,
    EXPLAIN_ENSEMBLE,
    HEATMAP_MODEL,
    POSTPROCESS,
    PREPROCESS,
)
from .validate import validate_repository

log = logging.getLogger(__name__)


def _options_dict(opts: ServingOptions) -> dict[str, Any]:
    from plantdx.config import to_dict

    return to_dict(opts)


# ---------------------------------------------------------------------------------------------
# Publishing a version.


@dataclass(frozen=True)
class StagedVersion:
    """Where the classifier files of version `version` are written before it is published."""

    dir: Path
    version: int
    previous_dir: Path | None


def _check_fits(
    info: RepositoryInfo | None,
    repo: Path,
    class_names: list[str],
    meta: PreprocessMeta,
    target: str,
    platform: str,
    pixels: str,
) -> None:
    if info is None:
        return
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
    if info.platform != platform:
        # One config.pbtxt serves every version of a model, so all versions share a platform.
        raise RepositoryError(
            f"{repo} serves {info.platform} classifiers; a {platform} export needs its own "
            "repository"
        )
    if info.pixels != pixels:
        # One config serves every version: they all take the same pixels.
        raise RepositoryError(
            f"{repo} serves classifiers that take {info.pixels} pixels; this version takes "
            f"{pixels} (export follows the repository's own: plantdx export does this itself)"
        )


def _version_files(version_dir: Path) -> dict[str, str]:
    return {
        p.name: file_sha256(p)
        for p in sorted(version_dir.iterdir())
        if p.is_file() and p.name != PROVENANCE_FILENAME
    }


def publish_version(
    repo: str | Path,
    *,
    class_names: list[str],
    meta: PreprocessMeta,
    write_classifier_files: Callable[[StagedVersion], None],
    provenance: dict[str, Any],
    options: ServingOptions | None = None,
    target: Target = "local",
    platform: str = "onnx",
    trt_accelerator: bool = False,
    trt_fp16: bool = False,
    decision: DecisionRule | None = None,
    cams_dims: tuple[int, ...] | None = None,
    crops: CropMap | None = None,
    pixels: str = "uint8",
    cams_onnx: Path | None = None,
) -> int:
    """Add the next version of preprocess + classifier; returns its number.

    `decision` is the version's rule (`preprocess/N/decision.json`); None writes the identity
    rule (temperature 1, everything answered). `crops` is the crop of each class
    (`preprocess/N/crops.json`, what the served `CROP` input chooses among); None: read from
    the class names. `pixels` is what the classifier takes (`RepositoryInfo.pixels`: uint8 that
    its graph normalises, or float32 in repositories made before that); it must be the
    repository's own. `cams_dims` ([C, h, w]): the classifier has
    class-activation maps, so its config declares CAMS and the `heatmap` model and the
    `plantdx_explain` ensemble are written too; with --target triton the maps come from
    `cams_onnx`, the class-activation graph, published as version N of `classifier_cams`.

    `write_classifier_files` fills the staged classifier version (model.onnx, plans and their
    engines.json, reports). On any error the repository is left exactly as it was, including
    a repository directory this call created.
    """
    if platform not in PLATFORMS:
        raise RepositoryError(f"unknown classifier platform {platform!r}")
    repo = Path(repo)
    opts = options or ServingOptions()
    created = []
    p = repo
    while not p.exists():
        created.append(p)
        p = p.parent
    repo.mkdir(parents=True, exist_ok=True)
    try:
        with locked(repo):
            return _publish_locked(
                repo,
                class_names=list(class_names),
                meta=meta,
                write_classifier_files=write_classifier_files,
                provenance=provenance,
                opts=opts,
                target=target,
                platform=platform,
                trt_accelerator=trt_accelerator,
                trt_fp16=trt_fp16,
                decision=decision or DecisionRule(),
                cams_dims=cams_dims,
                crops=crops or CropMap.derive(class_names),
                pixels=pixels,
                cams_onnx=cams_onnx,
            )
    except BaseException:
        for d in created:  # innermost first; only if the rollback left them empty
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def _publish_locked(
    repo: Path,
    *,
    class_names: list[str],
    meta: PreprocessMeta,
    write_classifier_files: Callable[[StagedVersion], None],
    provenance: dict[str, Any],
    opts: ServingOptions,
    target: Target,
    platform: str,
    trt_accelerator: bool,
    trt_fp16: bool,
    decision: DecisionRule,
    cams_dims: tuple[int, ...] | None = None,
    crops: CropMap,
    pixels: str = "uint8",
    cams_onnx: Path | None = None,
) -> int:
    if list(crops.classes) != class_names:
        raise RepositoryError("the crops mapping was made for other classes")
    separate = cams_dims is not None and target != "local"  # classifier_cams (explain.py)
    if separate and cams_onnx is None:
        raise RepositoryError(f"--target {target} explanations need the graph of {CAMS_CLASSIFIER}")
    recover(repo)  # an export or pin that was killed: rolled back or completed first
    _check_fits(RepositoryInfo.load(repo), repo, class_names, meta, target, platform, pixels)
    existing = set(versions(repo / CLASSIFIER)) | set(versions(repo / PREPROCESS))
    number = max(existing, default=0) + 1
    if opts.version_policy == "specific":
        unknown = sorted(set(opts.specific_versions) - existing - {number})
        if unknown:
            raise RepositoryError(
                f"version_policy 'specific' names versions {unknown} that {repo} does not hold "
                f"(it will hold {sorted(existing | {number})})"
            )
    previous = max(versions(repo / CLASSIFIER), default=None)
    # The configs are shared by every served version: what this export writes must still fit
    # the older versions it leaves served (a plan's batch profile, its architectures).
    known_problems = set(validate_repository(repo)) if previous is not None else set()
    with Journal(repo, f"export of version {number}") as journal:
        staged: dict[str, Path] = {}
        for name in (PREPROCESS, CLASSIFIER, *((CAMS_CLASSIFIER,) if separate else ())):
            journal.mkdir(repo / name)
            staged[name] = journal.stage(repo / name)
        if separate and cams_onnx is not None:
            shutil.copyfile(cams_onnx, staged[CAMS_CLASSIFIER] / "model.onnx")
        (staged[PREPROCESS] / "model.py").write_text(backend_source("preprocess"))
        meta.save(staged[PREPROCESS] / META_FILENAME)
        decision.save(staged[PREPROCESS] / DECISION_FILENAME)
        crops.save(staged[PREPROCESS] / CROPS_FILENAME)

        clf_dir = staged[CLASSIFIER]
        write_classifier_files(
            StagedVersion(clf_dir, number, repo / CLASSIFIER / str(previous) if previous else None)
        )
        if (clf_dir / REFERENCE_FILENAME).is_file():  # the preprocess publishes it (drift)
            shutil.copyfile(clf_dir / REFERENCE_FILENAME, staged[PREPROCESS] / REFERENCE_FILENAME)
        if target == "local":
            (clf_dir / "model.py").write_text(backend_source("classifier_onnx"))
        meta.save(clf_dir / META_FILENAME)
        write_labels(class_names, clf_dir / LABELS_FILENAME)
        cc_files = _staged_plans(clf_dir, platform)
        engines = read_json(clf_dir / ENGINES_FILENAME)
        provenance = {
            "decision": decision.to_dict(),
            **provenance,
            "version": number,
            "target": target,
            "platform": platform,
            "files": _version_files(clf_dir),
        }
        if engines:
            provenance["engines"] = engines
        write_json(clf_dir / PROVENANCE_FILENAME, provenance)

        configs = {
            ENSEMBLE: ensemble_config(len(class_names), opts, target=target),
            PREPROCESS: preprocess_config(meta.image_size, opts, pixels),
            CLASSIFIER: classifier_config(
                meta.image_size,
                len(class_names),
                opts,
                target=target,
                platform="tensorrt" if platform == "tensorrt" else "onnx",
                trt_accelerator=trt_accelerator,
                trt_fp16=trt_fp16,
                cc_model_filenames=cc_files or None,
                cams_dims=cams_dims,
                pixels=pixels,
            ),
            POSTPROCESS: postprocess_config(len(class_names), opts),
        }
        explain = (HEATMAP_MODEL, EXPLAIN_ENSEMBLE) if cams_dims else ()
        if cams_dims:
            configs.update(
                explain_configs(
                    len(class_names), cams_dims, opts, target=target, classifier=configs[CLASSIFIER]
                )
            )
        labels = (clf_dir / LABELS_FILENAME).read_bytes()
        info = RepositoryInfo(
            class_names, meta.image_size, target, opts.kind, _options_dict(opts), platform, pixels
        )

        # Commit: versions first, then what points at them.
        for name in staged:
            journal.move_dir(staged[name], repo / name / str(number))
        for name in (ENSEMBLE, POSTPROCESS, *explain):
            journal.mkdir(repo / name / "1")
        # The postprocess must match the config written below (a repository exported before
        # decision rules gets the one that reads CALIBRATION); unchanged, it is left alone.
        post_source = backend_source("postprocess").encode()
        post_model = repo / POSTPROCESS / "1" / "model.py"
        if not post_model.is_file() or post_model.read_bytes() != post_source:
            journal.put_file(post_model, post_source)
        if cams_dims:
            heat_source = backend_source(HEATMAP_MODEL).encode()
            journal.put_file(repo / HEATMAP_MODEL / "1" / "model.py", heat_source)
        for name in (ENSEMBLE, POSTPROCESS, *explain[1:]):
            journal.put_file(repo / name / LABELS_FILENAME, labels)
        for rel, data in warmup_files(opts).items():
            journal.mkdir((repo / rel).parent)
            journal.put_file(repo / rel, data)
        for name, cfg in configs.items():
            journal.put_file(repo / name / "config.pbtxt", to_pbtxt(cfg).encode())
        journal.put_file(repo / REPOSITORY_FILENAME, info.to_json().encode())
        problems = [p for p in validate_repository(repo) if p not in known_problems]
        if problems:
            raise RepositoryError(
                f"version {number} was not published: with it, {repo} would not load:\n  - "
                + "\n  - ".join(problems)
                + "\n(versions still served share the new config: serve fewer with "
                "--latest-n, or export with settings that fit them)"
            )
        journal.commit()
    return number


def _staged_plans(clf_dir: Path, platform: str) -> dict[str, str]:
    """The staged version's plans, checked against its engines.json."""
    if platform != "tensorrt":
        return {}
    cc_files = plan_filenames(clf_dir)
    if not cc_files:
        raise RepositoryError("a TensorRT version needs at least one plan listed in engines.json")
    missing = [f for f in cc_files.values() if not (clf_dir / f).is_file()]
    if missing:
        raise RepositoryError(f"engines.json names plans that were not written: {missing}")
    return cc_files


# ---------------------------------------------------------------------------------------------
# Listing.


__all__ = [  # the layout's names, for the modules that import them from here
    "ENGINES_FILENAME",
    "GATE_FILENAME",
    "PARITY_FILENAME",
    "PROVENANCE_FILENAME",
    "REPOSITORY_FILENAME",
    "RepositoryInfo",
    "StagedVersion",
    "VersionInfo",
    "describe_repository",
    "list_repository",
    "publish_version",
    "read_json",
    "served_versions",
    "validate_repository",
    "versions",
    "write_json",
]
