"""A run's photos: the class folders and split (scanned, nothing decoded), the run files that
record them, then the decoded datasets, the sampler and the loaders."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from plantdx.config import save_yaml
from plantdx.data import (
    SPLIT_FILENAME,
    ImageFolder,
    Sample,
    save_split,
    scan_sources,
    scan_unknown,
    split_samples,
    unknown_group,
)
from plantdx.data import stratified_split as split_dataset
from plantdx.exceptions import DatasetError
from plantdx.labels import write_labels
from plantdx.models import get_spec
from plantdx.preprocessing import PreprocessMeta

from .audit import AuditApplied, apply_audit, domains_beside
from .config import TrainConfig, as_list
from .crossfit_data import field_sources, move_to_cv
from .distributed import Distributed
from .loading import PreparedData, eval_loader, prepare_datasets, train_loader
from .progress import Reporter
from .sampling import BalancedSampler, sample_weights


@dataclass
class ScannedData:
    """The class folders and the split: file names only, nothing decoded yet."""

    folder: ImageFolder
    split: dict[str, list[Sample]]
    unknown_split: dict[str, list[Sample]]  # photos of no class; empty without --unknown-data
    not_images: list[tuple[Path, str]]  # files that are not images by name
    meta: PreprocessMeta  # the model's: every evaluation's, the checkpoint's, the served one
    # What --exclude and --domains changed (None without them).
    audit: AuditApplied | None = None
    # The fold of every cross-fitted photo (split["cv"]); empty when the run does not cross-fit.
    cv_folds: dict[Path, int] = dataclasses.field(default_factory=dict)
    cv_note: str = ""
    # The training photos' (None: `meta`); the evaluation size differs (`image_sizes`).
    train_meta: PreprocessMeta | None = None

    @property
    def class_names(self) -> list[str]:
        return self.folder.class_names

    @property
    def source_names(self) -> list[str]:
        return [src.name for src in self.folder.sources]


@dataclass
class LoadedData:
    """The decoded datasets and their loaders."""

    prepared: PreparedData
    skipped: list[tuple[str, str]]  # files that are not images by name or would not decode
    sampler: Sampler[int] | None
    loaders: dict[str, DataLoader[Any]]


def with_audit_files(cfg: TrainConfig) -> TrainConfig:
    """The domains.tsv beside --exclude's file made explicit, so the run's config records it."""
    beside = domains_beside(cfg.exclude) if not cfg.domains else None
    return dataclasses.replace(cfg, domains=str(beside)) if beside else cfg


def scan_data(cfg: TrainConfig) -> ScannedData:
    folder = scan_sources(as_list(cfg.data))
    audit = None
    if cfg.exclude or cfg.domains:
        folder, audit = apply_audit(folder, exclude=cfg.exclude, domains=cfg.domains)
    split = split_dataset(
        folder, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed
    )
    cv_folds: dict[Path, int] = {}
    cv_note = ""
    if cfg.crossfit.folds >= 2:
        picked, how = field_sources(folder, cfg.crossfit, cfg.domains)
        if picked:
            split, cv_folds = move_to_cv(split, picked, cfg.crossfit.folds, cfg.seed)
            names = ", ".join(folder.sources[k].name for k in picked)
            cv_note = f"cross-fitting {names} in {cfg.crossfit.folds} folds ({how})"
        else:
            cv_note = f"no field source to cross-fit: {how}"
    not_images = list(folder.skipped)
    unknown_roots = as_list(cfg.unknown_data)
    unknown_split: dict[str, list[Sample]] = {}
    if unknown_roots:
        unknown_split = split_samples(
            scan_unknown(unknown_roots, source=len(folder.sources)),
            val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction,
            seed=cfg.seed,
            group=unknown_group(unknown_roots),
        )
    train_meta, meta = run_metas(cfg)
    return ScannedData(
        folder, split, unknown_split, not_images, meta, audit, cv_folds, cv_note, train_meta
    )


def image_sizes(cfg: TrainConfig) -> tuple[int, int]:
    """The training size and the evaluation size: `eval_image_size`, else the training size
    times `eval_scale` where the architecture takes any input size."""
    spec = get_spec(cfg.model)
    size = cfg.image_size or spec.default_image_size
    if cfg.eval_image_size:
        return size, cfg.eval_image_size
    if not spec.any_input_size:
        return size, size
    return size, max(1, round(size * cfg.eval_scale))


def run_metas(cfg: TrainConfig) -> tuple[PreprocessMeta, PreprocessMeta]:
    """The preprocessing of the training photos, and that of every evaluation (the model's
    own: it travels in the checkpoint); they differ only in size (`image_sizes`)."""
    size, eval_size = image_sizes(cfg)
    meta = dataclasses.replace(get_spec(cfg.model).preprocessing(size), resize=cfg.resize)
    if eval_size == size:
        return meta, meta
    return meta, dataclasses.replace(meta, image_size=eval_size)


def write_run_files(run_dir: Path, cfg: TrainConfig, scan: ScannedData) -> None:
    """split.json, labels.txt and config.yaml."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # A process killed mid-save leaves its temp file behind; the real files are intact.
    for stale in run_dir.glob(".*.pt.*.tmp"):
        stale.unlink(missing_ok=True)
    save_split(
        scan.split,
        scan.folder,
        run_dir / SPLIT_FILENAME,
        seed=cfg.seed,
        unknown=scan.unknown_split,
        unknown_roots=as_list(cfg.unknown_data),
    )
    write_labels(scan.folder.class_names, run_dir / "labels.txt")
    if scan.audit is not None and scan.audit.exclude_file:
        rows = [f"{p}\t{why}" for p, why in scan.audit.excluded]
        (run_dir / "excluded.tsv").write_text("".join(f"{r}\n" for r in ["path\treason", *rows]))
    if scan.cv_folds:
        folds = {str(p): k for p, k in sorted(scan.cv_folds.items())}
        (run_dir / "crossfit.json").write_text(json.dumps({"folds": folds}, indent=1) + "\n")
    save_yaml(cfg, run_dir / "config.yaml")


def load_data(
    cfg: TrainConfig, scan: ScannedData, dist: Distributed, rep: Reporter, run_dir: Path
) -> LoadedData:
    """Decode the split (skipped files reported, and listed in skipped.json) into loaders."""
    split = scan.split
    # Photos of no class train with the others (label -1) and are judged on their own.
    u = scan.unknown_split
    if u:
        split = {
            **split,
            "train": split["train"] + u["train"],
            "unknown_val": u["val"],
            "unknown_test": u["test"],
        }
    train_meta = scan.train_meta or scan.meta
    # Photos trained on and evaluated (the cross-fitted ones) decode at both sizes.
    twice = len(split.get("cv", [])) if train_meta != scan.meta else 0
    total = sum(len(v) for v in split.values()) + twice
    with rep.task("decode images", total=total) as advance:
        data = prepare_datasets(
            split,
            scan.meta,
            cfg.augment,
            cache=cfg.cache_images,
            progress=advance,
            train_meta=train_meta,
        )
    # Files that are not images by name, then those that would not decode.
    skipped = [(str(p), why) for p, why in [*scan.not_images, *data.skipped]]
    if skipped:
        shown = ", ".join(p for p, _ in skipped[:20])
        more = f" and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        rep.warn(
            f"skipped {len(skipped)} unreadable or non-image file(s) "
            f"(listed in skipped.json): {shown}{more}"
        )
        if dist.is_main:
            (run_dir / "skipped.json").write_text(json.dumps(skipped, indent=2) + "\n")
    _check_readable(data, scan.class_names)
    sampler: Sampler[int] | None = None
    if cfg.sampling.mode == "balanced":
        sampler = _balanced_sampler(cfg, data, dist, scan.source_names)
    elif dist.enabled:
        sampler = DistributedSampler(
            data.datasets["train"],
            num_replicas=dist.world_size,
            rank=dist.rank,
            shuffle=True,
            seed=cfg.seed,
        )
    loaders: dict[str, DataLoader[Any]] = {
        "train": train_loader(
            data.datasets["train"],
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            seed=cfg.seed + dist.rank,
            sampler=sampler,
        ),
        "val": eval_loader(data.datasets["val"]),
        "test": eval_loader(data.datasets["test"]),
    }
    for name in ("unknown_val", "unknown_test"):
        if name in data.datasets:
            loaders[name] = eval_loader(data.datasets[name])
    return LoadedData(data, skipped, sampler, loaders)


def _balanced_sampler(
    cfg: TrainConfig, data: PreparedData, dist: Distributed, source_names: list[str]
) -> Sampler[int]:
    """Draws that give every source and class its share (sampling.py); an epoch is as many
    draws as there are labelled training photos."""
    s = cfg.sampling
    labels, sources = data.labels["train"], data.sources["train"]
    weights = sample_weights(
        labels,
        sources,
        source_balance=s.source_balance,
        class_balance=s.class_balance,
        unknown_share=s.unknown_share,
        source_multipliers=s.source_multipliers(source_names),
    )
    return BalancedSampler(
        weights,
        int((labels >= 0).sum()),
        seed=cfg.seed,
        rank=dist.rank,
        world_size=dist.world_size,
    )


def _check_readable(data: PreparedData, class_names: list[str]) -> None:
    if data.size("train") == 0 or data.size("val") == 0:
        raise DatasetError("no readable images left in the train or validation split")
    present = set(np.concatenate([data.labels[k] for k in data.labels]).tolist())
    present.discard(-1)
    lost = [n for i, n in enumerate(class_names) if i not in present]
    if lost:
        raise DatasetError(f"class folder(s) with no readable image: {', '.join(lost)}")
