"""`plantdx train`: fine-tune a registered model on an ImageFolder and write a checkpoint.

A run directory holds config.yaml (the resolved config), labels.txt, split.json, best.pt (best
validation accuracy), last.pt (everything `--resume` needs), metrics.json, history.json, the
test report and its plots. The same code runs on a CPU, one GPU, or one process per GPU under
`torchrun` (see `distributed.py`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from plantdx.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from plantdx.config import resolve, save_yaml, to_dict
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
from plantdx.exceptions import ConfigError, DatasetError
from plantdx.labels import write_labels
from plantdx.models import (
    check_weights,
    create_model,
    get_spec,
    head_module,
    model_kwargs_for_checkpoint,
)
from plantdx.preprocessing import PreprocessMeta

from .config import TrainConfig, as_list
from .distributed import Distributed, pick_device, setup
from .engine import EpochStats, EvalResult, evaluate, train_one_epoch
from .evaluate import classification_report, plot_confusion_matrix, plot_training_curves
from .loading import PreparedData, eval_loader, prepare_datasets, train_loader
from .progress import Reporter
from .sampling import BalancedSampler, OutlierExposureLoss, sample_weights
from .sources import decide_and_report, epoch_row_extras, per_source, selection_score
from .tracking import RunTracker

log = logging.getLogger(__name__)

__all__ = ["TrainResult", "pick_device", "resume_config", "train"]

# Seconds a time-budgeted run keeps for the end (test pass, plots, checkpoint, MLflow upload).
FINISH_RESERVE_S = 45.0

# Settings a resumed run must share with the run it continues.
RESUME_MUST_MATCH = (
    "model",
    "model_kwargs",
    "image_size",
    "batch_size",
    "seed",
    "val_fraction",
    "test_fraction",
    "resize",
)


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    metrics: dict[str, Any]
    rank: int = 0


@dataclass
class LoopState:
    """Where a run stands at an epoch boundary; saved in last.pt, restored by --resume."""

    epoch: int = 0
    epochs: int = 0
    best_acc: float = -1.0
    best_epoch: int = 0
    best_val_loss: float = math.inf
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Building blocks


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on biases and norm layers: it only fights the normalisation.
    # Frozen parameters stay in the groups: without gradients the optimizer skips them, and
    # unfreezing later needs no new optimizer (nor breaks a resume).
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step LR factor: linear warm-up, then cosine to zero or steps of `gamma`."""
    total = max(1, steps_per_epoch * epochs)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if cfg.scheduler == "step":
            return float(cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def reschedule(
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    steps_per_epoch: int,
    epochs: int,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule for a new number of epochs, at the step `scheduler` had reached."""
    done = scheduler.last_epoch
    fresh = build_scheduler(optimizer, cfg, steps_per_epoch, epochs)
    fresh.last_epoch = done - 1
    fresh.step()
    return fresh


def replan_epochs(cfg: TrainConfig, done: int, epoch_s: list[float], spent_s: float) -> int:
    """Epochs in all once `done` have run and `spent_s` seconds (reserve for the end included)
    are gone: as many more as fit at the recent pace (the median of the last three epochs, or
    the last one if it was slower), never more than cfg.epochs; `done` means stop now."""
    pace = max(float(np.median(epoch_s[-3:])), epoch_s[-1], 1e-6)
    left = float(cfg.time_budget_min or 0) * 60 - spent_s
    return int(min(cfg.epochs, done + max(0, math.floor(left / pace))))


def plan_epochs(cfg: TrainConfig, seconds_per_epoch: float, overhead_s: float) -> int:
    """Epochs that fit the time budget (at least one), never more than cfg.epochs."""
    if not cfg.time_budget_min or cfg.time_budget_min <= 0:
        return cfg.epochs
    left = cfg.time_budget_min * 60 - overhead_s
    return int(max(1, min(cfg.epochs, math.floor(left / max(seconds_per_epoch, 1e-6)))))


def backbone_frozen(cfg: TrainConfig, epoch: int) -> bool:
    """Head-only training under --freeze-backbone, until epoch `unfreeze_after` is done."""
    if not (cfg.freeze_backbone or cfg.unfreeze_after is not None):
        return False
    return cfg.unfreeze_after is None or epoch <= cfg.unfreeze_after


def set_backbone_frozen(model: nn.Module, name: str, frozen: bool) -> list[nn.Module]:
    """Freeze (or free) all but the head; returns the norm layers that must stay in eval mode."""
    head = head_module(model, name)
    head_params = {id(p) for p in head.parameters()}
    for p in model.parameters():
        p.requires_grad_(not frozen or id(p) in head_params)
    if not frozen:
        return []
    in_head = {id(m) for m in head.modules()}
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in in_head
    ]


def freeze_stem(model: nn.Module, blocks: int | None) -> list[nn.Module]:
    """Freeze the stem and the first `blocks` blocks of an EfficientNet-style model (`_conv_stem`,
    `_bn0`, `_blocks`); returns their norm layers, which must stay in eval mode. Other models,
    or `blocks` None or negative, are left alone."""
    layers = getattr(model, "_blocks", None)
    if blocks is None or blocks < 0 or layers is None or not hasattr(model, "_conv_stem"):
        return []
    stem = cast(nn.Module, model._conv_stem)
    parts: list[nn.Module] = [stem, getattr(model, "_bn0", nn.Identity())]
    parts += list(layers[:blocks])
    norms: list[nn.Module] = []
    for part in parts:
        for p in part.parameters():
            p.requires_grad_(False)
        norms += [m for m in part.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return norms


def frozen_for_epoch(model: nn.Module, cfg: TrainConfig, epoch: int) -> list[nn.Module]:
    """Freeze what `cfg` keeps frozen in `epoch` (the backbone under --freeze-backbone until
    --unfreeze-after, and an EfficientNet's stem and first `freeze_blocks` blocks); returns the
    norm layers that must stay in eval mode."""
    norms = set_backbone_frozen(model, cfg.model, backbone_frozen(cfg, epoch))
    return norms + freeze_stem(model, cfg.freeze_blocks)


def place_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """The model on `device`, in the memory format training feeds it."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def resume_config(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config a run was started with (its config.yaml), with `overrides` on top."""
    run = Path(run_dir)
    if not (run / "last.pt").is_file():
        raise ConfigError(f"cannot resume {run}: it has no last.pt (no epoch was completed)")
    merged = {**(overrides or {}), "resume": str(run), "out": str(run)}
    return resolve(TrainConfig, run / "config.yaml", merged)


# --------------------------------------------------------------------------------------------
# The run


def train(cfg: TrainConfig, *, reporter: Reporter | None = None) -> TrainResult:
    if not as_list(cfg.data):
        raise ConfigError("no dataset: pass --data DIR (an ImageFolder: one folder per class)")
    resume = _load_resume(cfg)
    if resume is not None:
        cfg = dataclasses.replace(cfg, out=str(cfg.resume))
    dist = setup(cfg.device)
    try:
        return _Run(cfg, reporter, dist, resume).run()
    finally:
        dist.close()


def _load_resume(cfg: TrainConfig) -> Checkpoint | None:
    if not cfg.resume:
        return None
    last = Path(cfg.resume) / "last.pt"
    if not last.is_file():
        raise ConfigError(f"cannot resume {cfg.resume}: it has no last.pt")
    ckpt = load_checkpoint(last)
    if not ckpt.train_state:
        raise ConfigError(f"{last} holds no training state to resume from")
    mine, defaults = to_dict(cfg), to_dict(TrainConfig())
    changed = [k for k in RESUME_MUST_MATCH if ckpt.config.get(k, defaults[k]) != mine[k]]
    if changed:
        raise ConfigError(
            f"cannot resume {cfg.resume} with other {', '.join(changed)} "
            f"(run: {[ckpt.config.get(k) for k in changed]}, now: {[mine.get(k) for k in changed]})"
        )
    return ckpt


class _Run:
    """One training run, split into the steps train() takes in order."""

    def __init__(
        self,
        cfg: TrainConfig,
        reporter: Reporter | None,
        dist: Distributed,
        resume: Checkpoint | None,
    ) -> None:
        self.cfg = cfg
        self.dist = dist
        self.device = dist.device
        self.resume = resume
        self.rep = (reporter or Reporter()) if dist.is_main else Reporter(quiet=True)
        self.run_dir = Path(cfg.out)
        self.started = time.perf_counter()
        self.tracker: RunTracker | None = None
        self.state = LoopState()
        self.epoch_times: list[float] = []  # measured, for re-planning under a time budget

    def run(self) -> TrainResult:
        cfg = self.cfg
        seed_everything(cfg.seed + self.dist.rank)
        if self.resume is None:
            check_weights(cfg.model, cfg.weights)  # a bad --weights fails before any decoding
        folder, split = self._scan()
        self._model(folder)  # loads --weights: before the (slow) decoding, so errors come at once
        if self.dist.is_main:
            self._write_run_files(folder, split)
        data = self._data(split)
        self._loop_setup()
        if cfg.mlflow and self.dist.is_main:
            self.tracker = RunTracker(
                cfg,
                folder,
                resume_run_id=self.resume.mlflow_run_id if self.resume else None,
                extra_params={"world_size": self.dist.world_size},
            )
            self.tracker.log_skipped(len(self.skipped))
        try:
            self._fit()
            metrics = self._finish(data) if self.dist.is_main else {"rank": self.dist.rank}
        except BaseException:
            if self.tracker:
                self.tracker.fail()
            raise
        self.rep.summary(metrics)
        return TrainResult(self.run_dir, self.run_dir / "best.pt", metrics, self.dist.rank)

    # -- data ---------------------------------------------------------------------------------

    def _scan(self) -> tuple[ImageFolder, dict[str, list[Sample]]]:
        """The class folders and the split: file names only, nothing decoded yet."""
        cfg = self.cfg
        folder = scan_sources(as_list(cfg.data))
        split = split_dataset(
            folder, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed
        )
        self.class_names = folder.class_names
        self.source_names = [src.name for src in folder.sources]
        self.not_images = list(folder.skipped)
        unknown_roots = as_list(cfg.unknown_data)
        self.unknown_split: dict[str, list[Sample]] = {}
        if unknown_roots:
            self.unknown_split = split_samples(
                scan_unknown(unknown_roots, source=len(folder.sources)),
                val_fraction=cfg.val_fraction,
                test_fraction=cfg.test_fraction,
                seed=cfg.seed,
                group=unknown_group(unknown_roots),
            )
        meta = get_spec(cfg.model).preprocessing(cfg.image_size)
        self.meta: PreprocessMeta = dataclasses.replace(meta, resize=cfg.resize)
        return folder, split

    def _data(self, split: dict[str, list[Sample]]) -> PreparedData:
        cfg = self.cfg
        # Photos of no class train with the others (label -1) and are judged on their own.
        u = self.unknown_split
        if u:
            split = {
                **split,
                "train": split["train"] + u["train"],
                "unknown_val": u["val"],
                "unknown_test": u["test"],
            }
        total = sum(len(v) for v in split.values())
        with self.rep.task("decode images", total=total) as advance:
            data = prepare_datasets(
                split, self.meta, cfg.augment, cache=cfg.cache_images, progress=advance
            )
        # Files that are not images by name, then those that would not decode.
        self.skipped = [(str(p), why) for p, why in [*self.not_images, *data.skipped]]
        if self.skipped:
            shown = ", ".join(p for p, _ in self.skipped[:20])
            more = f" and {len(self.skipped) - 20} more" if len(self.skipped) > 20 else ""
            self.rep.warn(
                f"skipped {len(self.skipped)} unreadable or non-image file(s) "
                f"(listed in skipped.json): {shown}{more}"
            )
            if self.dist.is_main:
                (self.run_dir / "skipped.json").write_text(
                    json.dumps(self.skipped, indent=2) + "\n"
                )
        self._check_readable(data)
        self.data = data
        sampler: Sampler[int] | None = None
        if cfg.sampling.mode == "balanced":
            sampler = self._balanced_sampler(data)
        elif self.dist.enabled:
            sampler = DistributedSampler(
                data.datasets["train"],
                num_replicas=self.dist.world_size,
                rank=self.dist.rank,
                shuffle=True,
                seed=cfg.seed,
            )
        self.sampler = sampler
        self.loaders: dict[str, DataLoader[Any]] = {
            "train": train_loader(
                data.datasets["train"],
                batch_size=cfg.batch_size,
                num_workers=cfg.num_workers,
                seed=cfg.seed + self.dist.rank,
                sampler=sampler,
            ),
            "val": eval_loader(data.datasets["val"]),
            "test": eval_loader(data.datasets["test"]),
        }
        for name in ("unknown_val", "unknown_test"):
            if name in data.datasets:
                self.loaders[name] = eval_loader(data.datasets[name])
        return data

    def _balanced_sampler(self, data: PreparedData) -> Sampler[int]:
        """Draws that give every source and class its share (sampling.py); an epoch is as many
        draws as there are labelled training photos."""
        s = self.cfg.sampling
        labels, sources = data.labels["train"], data.sources["train"]
        weights = sample_weights(
            labels,
            sources,
            source_balance=s.source_balance,
            class_balance=s.class_balance,
            unknown_share=s.unknown_share,
        )
        return BalancedSampler(
            weights,
            int((labels >= 0).sum()),
            seed=self.cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )

    def _write_run_files(self, folder: ImageFolder, split: dict[str, Any]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # A process killed mid-save leaves its temp file behind; the real files are intact.
        for stale in self.run_dir.glob(".*.pt.*.tmp"):
            stale.unlink(missing_ok=True)
        save_split(
            split,
            folder,
            self.run_dir / SPLIT_FILENAME,
            seed=self.cfg.seed,
            unknown=self.unknown_split,
            unknown_roots=as_list(self.cfg.unknown_data),
        )
        write_labels(folder.class_names, self.run_dir / "labels.txt")
        save_yaml(self.cfg, self.run_dir / "config.yaml")

    def _check_readable(self, data: PreparedData) -> None:
        if data.size("train") == 0 or data.size("val") == 0:
            raise DatasetError("no readable images left in the train or validation split")
        present = set(np.concatenate([data.labels[k] for k in data.labels]).tolist())
        present.discard(-1)
        lost = [n for i, n in enumerate(self.class_names) if i not in present]
        if lost:
            raise DatasetError(f"class folder(s) with no readable image: {', '.join(lost)}")

    # -- model and optimisation ----------------------------------------------------------------

    def _model(self, folder: ImageFolder) -> None:
        cfg = self.cfg
        kwargs = dict(cfg.model_kwargs)
        if self.resume is not None:
            kwargs = dict(self.resume.model_kwargs)
        net = create_model(
            cfg.model,
            num_classes=len(folder.class_names),
            pretrained=cfg.pretrained and self.resume is None,
            image_size=self.meta.image_size,
            weights=cfg.weights if self.resume is None else None,
            **kwargs,
        )
        if self.resume is not None:
            net.load_state_dict(self.resume.state_dict)
        self.channels_last = cfg.channels_last
        net = place_model(net, self.device, self.channels_last)
        self.net = net
        self.frozen_norms: list[nn.Module] = freeze_stem(net, cfg.freeze_blocks)
        self.frozen: bool | None = None
        self.model = net
        self.criterion = OutlierExposureLoss(
            label_smoothing=cfg.label_smoothing, unknown_weight=cfg.sampling.unknown_weight
        )
        self.optimizer = build_optimizer(net, cfg)
        self.amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None

    def _loop_setup(self) -> None:
        cfg = self.cfg
        steps = len(self.loaders["train"])
        if cfg.max_train_batches:
            steps = min(steps, cfg.max_train_batches)
        self.steps = steps
        if self.resume is not None:
            saved = self.resume.train_state
            changed_epochs = cfg.epochs != self.resume.config.get("epochs")
            epochs = cfg.epochs if changed_epochs else int(saved["loop"]["epochs"])
        else:
            epochs = self._planned_epochs()
        self.scheduler = build_scheduler(self.optimizer, cfg, steps, epochs)
        if self.resume is not None:
            self._restore(self.resume.train_state, epochs, changed_epochs)
        else:
            self.state.epochs = epochs

    @property
    def budgeted(self) -> bool:
        """The time budget applies on a CPU only: elsewhere the epochs are what was asked."""
        return bool(self.cfg.time_budget_min) and self.device.type == "cpu"

    def _finish_reserve(self) -> float:
        """Seconds kept for what follows the last epoch: the test pass, reports, MLflow."""
        return FINISH_RESERVE_S + self.eval_s_per_img * self.data.size("test")

    def _planned_epochs(self) -> int:
        cfg = self.cfg
        self.eval_s_per_img = 0.0
        if not self.budgeted:
            return cfg.epochs
        sec_per_img = _measure_step_time(
            self.net,
            self.loaders["train"],
            self.criterion,
            self.device,
            self.channels_last,
            optimizer=self.optimizer,
            frozen=self.frozen_norms,
        )
        self.eval_s_per_img = sec_per_img * 0.35
        per_epoch = sec_per_img * self.steps * cfg.batch_size * 1.05 + self.eval_s_per_img * (
            self.data.size("val")
        )
        elapsed = time.perf_counter() - self.started
        epochs = plan_epochs(cfg, per_epoch, elapsed + self._finish_reserve())
        epochs = int(self.dist.broadcast(epochs))  # every rank must run the same epochs
        self.rep.info(
            f"time budget {cfg.time_budget_min:g} min → {epochs} epoch(s) of ~{per_epoch:.0f} s"
        )
        return epochs

    # -- the epoch loop ------------------------------------------------------------------------

    def _fit(self) -> None:
        cfg, st = self.cfg, self.state
        epoch = st.epoch
        # An epoch's time runs from one re-planning to the next, so it counts the validation
        # and the checkpoints written between them too.
        mark = time.perf_counter()
        while epoch < st.epochs:
            epoch += 1
            self._apply_freezing(epoch)
            if isinstance(self.sampler, DistributedSampler | BalancedSampler):
                self.sampler.set_epoch(epoch)
            with self.rep.task(
                f"epoch {epoch}/{st.epochs}", total=self.steps * cfg.batch_size, unit="img"
            ) as adv:
                stats = train_one_epoch(
                    self.model,
                    self.loaders["train"],
                    self.criterion,
                    self.optimizer,
                    self.scheduler,
                    self.device,
                    channels_last=self.channels_last,
                    scaler=self.scaler,
                    max_batches=cfg.max_train_batches,
                    frozen=self.frozen_norms,
                    on_batch=lambda n, _loss: adv(n),
                )
            stats = self._reduce(stats)
            ckpt = self._end_epoch(epoch, stats) if self.dist.is_main else None
            stop = bool(self.dist.broadcast(st.stopped_early))  # rank 0's decision
            if not stop and self.budgeted and self.resume is None:
                now = time.perf_counter()
                self._keep_to_budget(epoch, now - mark)
                mark = now
            # last.pt is written after re-planning: it holds the plan (epochs, LR schedule) that
            # the run goes on with, so --resume continues exactly as the unbroken run does.
            if ckpt is not None:
                self._save_last(ckpt)
            if stop:
                break

    def _keep_to_budget(self, epoch: int, epoch_s: float) -> None:
        """After every epoch, re-plan the rest of the run from the measured epoch times
        (augmentation, validation and checkpoints included, which the step-time estimate leaves
        out): more epochs when the machine is faster than estimated, fewer (down to stopping
        now) when it is slower. The cosine schedule is stretched or squeezed to the new plan."""
        cfg, st = self.cfg, self.state
        self.epoch_times.append(epoch_s)
        if epoch >= st.epochs:  # the schedule has run out: the run ends as planned
            return
        elapsed = time.perf_counter() - self.started
        epochs = replan_epochs(cfg, epoch, self.epoch_times, elapsed + self._finish_reserve())
        epochs = int(self.dist.broadcast(epochs))
        if epochs == st.epochs:
            return
        if epochs <= epoch:
            self.rep.warn(f"time budget: stopping after epoch {epoch}/{st.epochs}")
            st.epochs = epoch
            return
        self.rep.info(f"time budget: {epochs} epoch(s) at the measured {epoch_s:.0f} s/epoch")
        st.epochs = epochs
        self.scheduler = reschedule(self.scheduler, self.optimizer, cfg, self.steps, epochs)

    def _apply_freezing(self, epoch: int) -> None:
        frozen = backbone_frozen(self.cfg, epoch)
        if frozen == self.frozen:
            return
        if self.frozen is not None:
            self.rep.info(f"epoch {epoch}: unfreezing the backbone")
        self.frozen = frozen
        self.frozen_norms = frozen_for_epoch(self.net, self.cfg, epoch)
        self.model = self.dist.wrap(self.net)  # DDP reduces only what is trainable at wrap time

    def _reduce(self, stats: EpochStats) -> EpochStats:
        loss_sum, correct, seen = self.dist.sum(
            [stats.loss * stats.images, stats.acc * stats.images, float(stats.images)]
        )
        n = max(seen, 1.0)
        return EpochStats(loss_sum / n, correct / n, int(seen), stats.seconds)

    def _end_epoch(self, epoch: int, stats: EpochStats) -> Checkpoint:
        """Rank 0: validate, log, write best.pt; returns the epoch's checkpoint for last.pt
        (`_save_last`). Whether early stopping ends the run is in `state.stopped_early`."""
        cfg, st = self.cfg, self.state
        val = evaluate(
            self.net,
            self.loaders["val"],
            self.criterion,
            self.device,
            channels_last=self.channels_last,
        )
        by_source = per_source(val, self.data.sources["val"], self.source_names, self.class_names)
        score = selection_score(cfg.select_on, val.acc, by_source)
        row = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "train_acc": stats.acc,
            "val_loss": val.loss,
            "val_acc": val.acc,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_images": stats.images,
            "train_img_per_s": stats.img_per_s,
        }
        if len(self.source_names) > 1:
            row.update(epoch_row_extras(by_source, score))
        st.history.append(row)
        st.epoch = epoch
        improved_acc = score > st.best_acc  # best_acc holds the selection score (select_on)
        if improved_acc:
            st.best_acc, st.best_epoch = score, epoch
        if val.loss < st.best_val_loss - cfg.early_stopping_min_delta:
            st.best_val_loss, st.bad_epochs = val.loss, 0
        else:
            st.bad_epochs += 1
        patience = cfg.early_stopping_patience
        st.stopped_early = (
            bool(patience) and st.bad_epochs >= int(patience or 0) and epoch < st.epochs
        )
        if self.tracker:
            self.tracker.log_epoch(row)
        ckpt = self._checkpoint(row)
        if improved_acc:
            save_checkpoint(ckpt, self.run_dir / "best.pt")
        return ckpt

    def _save_last(self, ckpt: Checkpoint) -> None:
        """Rank 0: last.pt, everything --resume needs, as the run stands after the epoch."""
        st = self.state
        ckpt.train_state = self._train_state()
        save_checkpoint(ckpt, self.run_dir / "last.pt")
        self.rep.epoch(ckpt.metrics)
        if st.stopped_early:
            self.rep.info(
                f"early stopping: val_loss has not improved for {st.bad_epochs} epoch(s) "
                f"(best {st.best_val_loss:.4f})"
            )

    def _checkpoint(self, row: dict[str, Any]) -> Checkpoint:
        state = {
            k: v.detach().to("cpu", memory_format=torch.contiguous_format).clone()
            if v.is_floating_point()
            else v.detach().cpu().clone()
            for k, v in self.net.state_dict().items()
        }
        return Checkpoint(
            model_name=self.cfg.model,
            class_names=list(self.class_names),
            preprocessing=self.meta,
            state_dict=state,
            model_kwargs=model_kwargs_for_checkpoint(self.net),
            config=to_dict(self.cfg),
            metrics=dict(row),
            mlflow_run_id=self.tracker.run_id if self.tracker else None,
        )

    # -- resume --------------------------------------------------------------------------------

    def _train_state(self) -> dict[str, Any]:
        """Everything besides the weights that the next epoch depends on (weights_only-safe)."""
        py = random.getstate()
        np_state: Any = np.random.get_state()
        rng: dict[str, Any] = {
            "python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "torch": torch.get_rng_state(),
            "loader": self.loaders["train"].generator.get_state(),  # type: ignore[union-attr]
        }
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "loop": dataclasses.asdict(self.state),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "rng": rng,
            "world_size": self.dist.world_size,
        }

    def _restore(self, saved: dict[str, Any], epochs: int, more_epochs: bool) -> None:
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.scaler and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        st = self.state = LoopState(**saved["loop"])
        st.epochs = epochs
        if st.epoch >= epochs or (st.stopped_early and not more_epochs):
            how = "stopped early after" if st.stopped_early else "already finished"
            raise ConfigError(
                f"{self.cfg.resume} {how} {st.epoch} epoch(s); pass a larger --epochs to go on"
            )
        if st.stopped_early:  # asked for more epochs: patience starts over
            st.stopped_early, st.bad_epochs = False, 0
        if saved.get("world_size", 1) != self.dist.world_size or self.dist.rank != 0:
            # The saved RNG streams are rank 0's: other ranks (or layouts) reseed per epoch.
            seed_everything(self.cfg.seed + self.dist.rank + 1000 * self.state.epoch)
            return
        rng = saved["rng"]
        py = rng["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        np_state = rng["numpy"]
        np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.loaders["train"].generator.set_state(rng["loader"])  # type: ignore[union-attr]
        self.rep.info(f"resuming {self.run_dir} after epoch {self.state.epoch}/{epochs}")

    # -- the end -------------------------------------------------------------------------------

    def _finish(self, data: PreparedData) -> dict[str, Any]:
        cfg, st, run_dir = self.cfg, self.state, self.run_dir
        best = load_checkpoint(run_dir / "best.pt")
        self.net.load_state_dict(best.state_dict)
        passes = {name: self._eval(name) for name in self.loaders if name != "train"}
        test = passes["test"]
        best_row = next((r for r in st.history if r["epoch"] == st.best_epoch), {})
        metrics: dict[str, Any] = {
            "val_acc": best_row.get("val_acc", st.best_acc),
            "best_epoch": st.best_epoch,
            "select_on": cfg.select_on,
            "test_acc": test.acc,
            "test_loss": test.loss,
            "n_train": data.size("train"),
            "n_val": data.size("val"),
            "n_test": data.size("test"),
            "epochs": st.epoch,
            "planned_epochs": st.epochs,
            "stopped_early": st.stopped_early,
            "skipped_files": len(self.skipped),
            "seconds": 0.0,
            "model": cfg.model,
            "image_size": self.meta.image_size,
            "resize": self.meta.resize,
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "amp": self.amp,
        }
        # The decision rule (temperature, abstention threshold) fitted on val, and the
        # per-source val/test figures under it.
        rule, decided = decide_and_report(
            val=passes["val"],
            val_sources=data.sources["val"],
            test=test,
            test_sources=data.sources["test"],
            names=self.source_names,
            class_names=self.class_names,
            unknown_val=passes.get("unknown_val"),
            unknown_test=passes.get("unknown_test"),
            cfg=cfg.abstain,
        )
        metrics.update(decided)
        best.decision = rule.to_dict()
        if len(test.targets):
            report = classification_report(test.targets, test.predictions, self.class_names)
            metrics["test_macro_f1"] = report["macro_f1"]
            report["misclassified"] = [
                {
                    "file": str(data.paths["test"][i]),
                    "true": self.class_names[int(test.targets[i])],
                    "predicted": self.class_names[int(test.predictions[i])],
                }
                for i in np.flatnonzero(test.predictions != test.targets)
            ]
            (run_dir / "test_report.json").write_text(json.dumps(report, indent=2) + "\n")
            plot_confusion_matrix(
                report["confusion_matrix"], self.class_names, run_dir / "confusion_matrix.png"
            )
        plot_training_curves(st.history, run_dir / "training_curves.png")
        metrics["seconds"] = time.perf_counter() - self.started
        best.metrics = {**best.metrics, **metrics}
        save_checkpoint(best, run_dir / "best.pt")
        (run_dir / "history.json").write_text(json.dumps(st.history, indent=2) + "\n")
        if self.tracker:
            metrics["mlflow_run_id"] = self.tracker.run_id
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if self.tracker:
            self.tracker.finish(metrics, run_dir)
            if self.tracker.registered:
                metrics["registered_model"] = self.tracker.registered
                (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        return metrics

    def _eval(self, split: str) -> EvalResult:
        """One pass of the best model over a held-out split (unknown photos: no loss)."""
        known = not split.startswith("unknown")
        return evaluate(
            self.net,
            self.loaders[split],
            self.criterion if known else _no_loss,
            self.device,
            channels_last=self.channels_last,
        )


def _no_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return logits.new_zeros(())


def _measure_step_time(
    model: nn.Module,
    loader: DataLoader[Any],
    criterion: nn.Module,
    device: torch.device,
    channels_last: bool,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    frozen: list[nn.Module] | None = None,
) -> float:
    """Seconds per training image, from a few real forward/backward passes (no update).

    Runs like a training step (`frozen` norm layers in eval mode), then puts back everything
    it touched: weights and buffers (BatchNorm statistics), gradients, train/eval modes, the
    optimizer's state and the RNG streams (the loader's too), so a run with a time budget
    trains exactly as one without.
    """
    snapshot = _TrainingSnapshot(model, optimizer, loader, device)
    try:
        model.train()
        for module in frozen or []:
            module.eval()
        times = []
        for i, (images, targets) in enumerate(loader):
            if i >= 3:
                break
            images = images.to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            t0 = time.perf_counter()
            criterion(model(images), targets.to(device)).backward()
            times.append((time.perf_counter() - t0) / images.size(0))
    finally:
        snapshot.restore()
    return float(np.median(times[1:] if len(times) > 1 else times))


class _TrainingSnapshot:
    """A copy of what a few trial steps change: model state, gradients, modes, optimizer, RNG."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        loader: DataLoader[Any],
        device: torch.device,
    ) -> None:
        self.model, self.optimizer, self.loader, self.device = model, optimizer, loader, device
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.grads = [
            None if p.grad is None else p.grad.detach().clone() for p in model.parameters()
        ]
        self.modes = [(m, m.training) for m in model.modules()]
        self.optim = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
        self.py_rng = random.getstate()
        self.np_rng = np.random.get_state()
        self.torch_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        gen = loader.generator
        self.loader_rng = gen.get_state() if gen is not None else None

    def restore(self) -> None:
        self.model.load_state_dict(self.state)
        for p, grad in zip(self.model.parameters(), self.grads, strict=True):
            p.grad = grad
        for module, training in self.modes:
            module.training = training
        if self.optimizer is not None and self.optim is not None:
            self.optimizer.load_state_dict(self.optim)
        random.setstate(self.py_rng)
        np.random.set_state(self.np_rng)
        torch.set_rng_state(self.torch_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.device)
        if self.loader_rng is not None and self.loader.generator is not None:
            self.loader.generator.set_state(self.loader_rng)
