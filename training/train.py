"""`plantdx train`: fine-tune a registered model on an ImageFolder and write a checkpoint.

A run directory holds config.yaml (the resolved config), labels.txt, split.json, best.pt (best
validation accuracy), last.pt (everything `--resume` needs), metrics.json, history.json, the
test report and its plots. The same code runs on a CPU, one GPU, or one process per GPU under
`torchrun` (see `distributed.py`).

This module is the run in order (`_Run.run`) and its epoch loop (`_Run.fit`); the pieces are
`run_data` (photos, split, loaders), `build` (model, loss, optimizer, schedule), `freezing`,
`budget` (the CPU time budget), `resume` (last.pt's training state), `checkpointing` and
`report` (the test pass and the run's reports).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DistributedSampler

from plantdx.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from plantdx.exceptions import ConfigError
from plantdx.models import check_weights

from .budget import TimeBudget
from .build import build_scheduler, build_trainee, reschedule, seed_everything
from .checkpointing import epoch_checkpoint
from .config import TrainConfig, as_list
from .crossfit import CrossfitResult, continuation_steps, run_crossfit
from .distributed import Distributed, setup
from .engine import EpochStats, evaluate, train_one_epoch
from .loop_state import LoopState
from .progress import Reporter
from .report import finish_run
from .resume import load_resume, restore_train_state, resume_config, train_state
from .run_data import load_data, scan_data, with_audit_files, write_run_files
from .sampling import BalancedSampler
from .sources import epoch_row_extras, per_source, selection_score
from .tracking import RunTracker

__all__ = ["TrainResult", "resume_config", "train"]


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    metrics: dict[str, Any]
    rank: int = 0


def train(cfg: TrainConfig, *, reporter: Reporter | None = None) -> TrainResult:
    if not as_list(cfg.data):
        raise ConfigError("no dataset: pass --data DIR (an ImageFolder: one folder per class)")
    resume = load_resume(cfg)
    if resume is not None:
        cfg = dataclasses.replace(cfg, out=str(cfg.resume))
    cfg = with_audit_files(cfg)
    dist = setup(cfg.device)
    try:
        return _Run(cfg, reporter, dist, resume).run()
    finally:
        dist.close()


class _Run:
    """One training run: the steps train() takes in order, then the epoch loop."""

    def __init__(
        self,
        cfg: TrainConfig,
        reporter: Reporter | None,
        dist: Distributed,
        resume: Checkpoint | None,
    ) -> None:
        self.cfg = cfg
        self.dist = dist
        self.resume = resume
        self.rep = (reporter or Reporter()) if dist.is_main else Reporter(quiet=True)
        self.run_dir = Path(cfg.out)
        self.budget = TimeBudget(cfg, dist, self.rep)  # starts the run's clock
        self.tracker: RunTracker | None = None
        self.state = LoopState()

    def run(self) -> TrainResult:
        cfg, dist = self.cfg, self.dist
        seed_everything(cfg.seed + dist.rank)
        if self.resume is None:
            check_weights(cfg.model, cfg.weights)  # a bad --weights fails before any decoding
        self.scan = scan_data(cfg)  # file names only
        if self.scan.cv_note:
            self.rep.info(self.scan.cv_note)
        if self.scan.cv_folds:
            if dist.world_size > 1:
                raise ConfigError(
                    "cross-fitting runs in one process: set crossfit.folds to 0 under torchrun"
                )
            self.budget.keep_share(cfg.crossfit.budget_share)
        for line in self.scan.audit.summary() if self.scan.audit else []:
            self.rep.info(line)
        ignored = cfg.sampling.not_sources(self.scan.source_names)
        if ignored:
            self.rep.info(
                f"sampling.source_weights: {', '.join(ignored)} not a source of this run "
                f"(sources: {', '.join(self.scan.source_names)}): ignored"
            )
        # Loads --weights: before the (slow) decoding, so errors come at once.
        self.trainee = build_trainee(
            cfg,
            self.scan.class_names,
            self.scan.meta,
            dist.device,
            self.resume,
            train_image_size=(self.scan.train_meta or self.scan.meta).image_size,
        )
        if dist.is_main:
            write_run_files(self.run_dir, cfg, self.scan)
        self.data = load_data(cfg, self.scan, dist, self.rep, self.run_dir)
        self._plan()
        if cfg.mlflow and dist.is_main:
            self.tracker = RunTracker(
                cfg,
                self.scan.folder,
                resume_run_id=self.resume.mlflow_run_id if self.resume else None,
                extra_params={"world_size": dist.world_size},
            )
            self.tracker.log_skipped(len(self.data.skipped))
        try:
            self.fit()
            crossfit = self._crossfit() if self.scan.cv_folds else None
            metrics = self._finish(crossfit) if dist.is_main else {"rank": dist.rank}
        except BaseException:
            if self.tracker:
                self.tracker.fail()
            raise
        self.rep.summary(metrics)
        return TrainResult(self.run_dir, self.run_dir / "best.pt", metrics, dist.rank)

    def fit(self) -> None:
        """The epoch loop: train, validate, checkpoint and log, keep to the time budget."""
        cfg, st, t = self.cfg, self.state, self.trainee
        if st.stopped_early:  # a resumed run that had stopped early: only its end is left
            return
        epoch = st.epoch
        # An epoch's time runs from one re-planning to the next, so it counts the validation
        # and the checkpoints written between them too.
        mark = time.perf_counter()
        while epoch < st.epochs:
            epoch += 1
            t.freeze_for(epoch, cfg, self.dist, self.rep)
            if isinstance(self.data.sampler, DistributedSampler | BalancedSampler):
                self.data.sampler.set_epoch(epoch)
            with self.rep.task(
                f"epoch {epoch}/{st.epochs}", total=self.steps * cfg.batch_size, unit="img"
            ) as adv:
                stats = train_one_epoch(
                    t.model,
                    self.data.loaders["train"],
                    t.criterion,
                    t.optimizer,
                    self.scheduler,
                    t.device,
                    channels_last=t.channels_last,
                    scaler=t.scaler,
                    max_batches=cfg.max_train_batches,
                    frozen=t.frozen_norms,
                    on_batch=lambda n, _loss: adv(n),
                )
            stats = self._reduce(stats)
            ckpt = self._end_epoch(epoch, stats) if self.dist.is_main else None
            stop = bool(self.dist.broadcast(st.stopped_early))  # rank 0's decision
            if not stop and self.budget.applies and self.resume is None:
                now = time.perf_counter()
                self._keep_to_budget(epoch, now - mark)
                mark = now
            # last.pt is written after re-planning: it holds the plan (epochs, LR schedule) that
            # the run goes on with, so --resume continues exactly as the unbroken run does.
            if ckpt is not None:
                self._save_last(ckpt)
            if stop:
                break

    # -- before the loop -----------------------------------------------------------------------

    def _plan(self) -> None:
        """Steps per epoch, the epochs (asked, resumed, or fitted to the time budget), the LR
        schedule; a resumed run's training state."""
        cfg, t, loader = self.cfg, self.trainee, self.data.loaders["train"]
        steps = len(loader)
        if cfg.max_train_batches:
            steps = min(steps, cfg.max_train_batches)
        self.steps = steps
        if self.resume is not None:
            saved = self.resume.train_state
            changed_epochs = cfg.epochs != self.resume.config.get("epochs")
            epochs = cfg.epochs if changed_epochs else int(saved["loop"]["epochs"])
        else:
            data = self.data.prepared
            epochs = self.budget.planned_epochs(
                t, loader, steps, data.size("val"), data.size("test")
            )
        self.scheduler = build_scheduler(t.optimizer, cfg, steps, epochs)
        if self.resume is not None:
            self.state = restore_train_state(
                saved,
                epochs,
                changed_epochs,
                cfg=cfg,
                trainee=t,
                scheduler=self.scheduler,
                loader=loader,
                dist=self.dist,
                rep=self.rep,
                run_dir=self.run_dir,
            )
        else:
            self.state.epochs = epochs

    # -- the epoch's steps ---------------------------------------------------------------------

    def _reduce(self, stats: EpochStats) -> EpochStats:
        loss_sum, correct, seen = self.dist.sum(
            [stats.loss * stats.images, stats.acc * stats.images, float(stats.images)]
        )
        n = max(seen, 1.0)
        return EpochStats(loss_sum / n, correct / n, int(seen), stats.seconds)

    def _end_epoch(self, epoch: int, stats: EpochStats) -> Checkpoint:
        """Rank 0: validate, log, write best.pt; returns the epoch's checkpoint for last.pt
        (`_save_last`). Whether early stopping ends the run is in `state.stopped_early`."""
        cfg, t, scan = self.cfg, self.trainee, self.scan
        val = evaluate(
            t.net, self.data.loaders["val"], t.criterion, t.device, channels_last=t.channels_last
        )
        val_sources = self.data.prepared.sources["val"]
        by_source = per_source(val, val_sources, scan.source_names, scan.class_names)
        score = selection_score(cfg.select_on, val.acc, by_source)
        row = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "train_acc": stats.acc,
            "val_loss": val.loss,
            "val_acc": val.acc,
            "lr": t.optimizer.param_groups[0]["lr"],
            "train_images": stats.images,
            "train_img_per_s": stats.img_per_s,
        }
        if len(scan.source_names) > 1:
            row.update(epoch_row_extras(by_source, score))
        improved_acc = self.state.end_epoch(epoch, row, score, val.loss, cfg)
        if self.tracker:
            self.tracker.log_epoch(row)
        run_id = self.tracker.run_id if self.tracker else None
        ckpt = epoch_checkpoint(cfg, t, scan.class_names, scan.meta, row, run_id)
        if improved_acc:
            save_checkpoint(ckpt, self.run_dir / "best.pt")
        return ckpt

    def _keep_to_budget(self, epoch: int, epoch_s: float) -> None:
        """Re-plan the rest of the run from the measured epoch times; the cosine schedule is
        stretched or squeezed to the new plan."""
        st = self.state
        test_images = self.data.prepared.size("test")
        epochs = self.budget.replan(epoch, epoch_s, st.epochs, test_images)
        if epochs > epoch and epochs != st.epochs:
            t = self.trainee
            self.scheduler = reschedule(self.scheduler, t.optimizer, self.cfg, self.steps, epochs)
        st.epochs = epochs

    def _save_last(self, ckpt: Checkpoint) -> None:
        """Rank 0: last.pt, everything --resume needs, as the run stands after the epoch."""
        st = self.state
        loader = self.data.loaders["train"]
        ckpt.train_state = train_state(st, self.trainee, self.scheduler, loader, self.dist)
        save_checkpoint(ckpt, self.run_dir / "last.pt")
        self.rep.epoch(ckpt.metrics)
        if st.stopped_early:
            self.rep.info(
                f"early stopping: val_loss has not improved for {st.bad_epochs} epoch(s) "
                f"(best {st.best_val_loss:.4f})"
            )

    # -- the end -------------------------------------------------------------------------------

    def _crossfit(self) -> CrossfitResult:
        """The continuations from the base model (base.pt: the best base epoch, kept so that a
        resumed run starts them again from it, with the steps planned for them then);
        best.pt becomes the final continuation."""
        t, data = self.trainee, self.data
        base_path, best_path = self.run_dir / "base.pt", self.run_dir / "best.pt"
        if base_path.exists():
            base = load_checkpoint(base_path)
        else:
            base = load_checkpoint(best_path)
            base.metrics = {**base.metrics, "crossfit_steps": self._continuation_steps()}
            save_checkpoint(base, base_path)
        steps = int(base.metrics.get("crossfit_steps") or self._continuation_steps())
        sampler = data.sampler
        n = data.prepared.size("train")
        weights = (
            sampler.weights.numpy()
            if isinstance(sampler, BalancedSampler)
            else np.full(n, 1.0 / max(n, 1))
        )
        result = run_crossfit(
            self.cfg,
            t,
            data.prepared,
            self.scan.cv_folds,
            base.state_dict,
            num_classes=len(self.scan.class_names),
            source_names=self.scan.source_names,
            train_weights=weights,
            steps=steps,
            rep=self.rep,
        )
        final = epoch_checkpoint(
            self.cfg, t, self.scan.class_names, self.scan.meta, base.metrics, base.mlflow_run_id
        )
        final.metrics = {**base.metrics, "crossfit_steps": result.steps}
        save_checkpoint(final, best_path)
        return result

    def _continuation_steps(self) -> int:
        """Steps of every continuation: what the time left holds (CPU budget) or the passes
        asked (`crossfit.epochs`)."""
        prepared = self.data.prepared
        eval_images = sum(prepared.size(k) for k in prepared.labels if k != "train")
        times = self.budget.epoch_times
        sec_per_step = float(np.median(times)) / max(self.steps, 1) if times else 1.0
        left = (
            None
            if self.resume is not None
            else self.budget.seconds_left(self.budget.finish_reserve(eval_images))
        )
        folds = self.cfg.crossfit.folds
        n_field_train = round(prepared.size("cv") * (folds - 1) / folds)
        return continuation_steps(self.cfg, n_field_train, left, sec_per_step)

    def _finish(self, crossfit: CrossfitResult | None) -> dict[str, Any]:
        return finish_run(
            self.cfg,
            self.state,
            self.trainee,
            self.scan,
            self.data,
            self.dist,
            self.tracker,
            self.budget.started,
            self.run_dir,
            crossfit,
        )
