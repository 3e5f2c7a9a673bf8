"""The time budget of a CPU run: plan the epochs from a measured training step, then re-plan
after every epoch from the epoch times measured (validation and checkpoints included)."""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .build import Trainee
from .config import TrainConfig
from .distributed import Distributed
from .progress import Reporter
from .run_data import image_sizes

# Seconds a time-budgeted run keeps for the end (test pass, plots, checkpoint, MLflow upload).
FINISH_RESERVE_S = 45.0


def replan_epochs(cfg: TrainConfig, done: int, epoch_s: list[float], spent_s: float) -> int:
    """Epochs in all once `done` have run and `spent_s` seconds (reserve for the end included)
    are gone: as many more as fit at the recent pace (the median of the last three epochs, or
    the last one if it was slower), never more than cfg.epochs; `done` means stop now."""
    pace = max(float(np.median(epoch_s[-3:])), epoch_s[-1], 1e-6)
    left = float(cfg.time_budget_min or 0) * 60 - spent_s
    return int(min(cfg.epochs, done + max(0, math.floor(left / pace))))


def eval_cost_scale(cfg: TrainConfig) -> float:
    """An evaluated photo's cost relative to a training photo's: their pixels
    (`image_sizes`: the evaluation size against the training size)."""
    size, eval_size = image_sizes(cfg)
    return float((eval_size / size) ** 2)


def plan_epochs(cfg: TrainConfig, seconds_per_epoch: float, overhead_s: float) -> int:
    """Epochs that fit the time budget (at least one), never more than cfg.epochs."""
    if not cfg.time_budget_min or cfg.time_budget_min <= 0:
        return cfg.epochs
    left = cfg.time_budget_min * 60 - overhead_s
    return int(max(1, min(cfg.epochs, math.floor(left / max(seconds_per_epoch, 1e-6)))))


class TimeBudget:
    """A run's clock and the epochs it fits; the budget applies on a CPU only: elsewhere the
    epochs are what was asked."""

    def __init__(self, cfg: TrainConfig, dist: Distributed, rep: Reporter) -> None:
        self.cfg, self.dist, self.rep = cfg, dist, rep
        self.total_min = cfg.time_budget_min or 0.0
        self.started = time.perf_counter()
        self.epoch_times: list[float] = []  # measured, for re-planning
        self.eval_s_per_img = 0.0

    def keep_share(self, share: float) -> None:
        """Plan the epochs for (1 - share) of the budget: the rest is kept for what runs after
        them (cross-fitting); `seconds_left` still counts the whole budget."""
        if self.cfg.time_budget_min:
            reduced = self.cfg.time_budget_min * (1.0 - share)
            self.cfg = dataclasses.replace(self.cfg, time_budget_min=reduced)

    def seconds_left(self, reserve_s: float) -> float | None:
        """Seconds of the whole budget left after `reserve_s`; None when no budget applies."""
        if not self.applies:
            return None
        total = float(self.total_min) * 60
        return max(0.0, total - (time.perf_counter() - self.started) - reserve_s)

    @property
    def applies(self) -> bool:
        return bool(self.cfg.time_budget_min) and self.dist.device.type == "cpu"

    def finish_reserve(self, test_images: int) -> float:
        """Seconds kept for what follows the last epoch: the test pass, reports, MLflow."""
        return FINISH_RESERVE_S + self.eval_s_per_img * test_images

    def planned_epochs(
        self,
        trainee: Trainee,
        loader: DataLoader[Any],
        steps: int,
        val_images: int,
        test_images: int,
    ) -> int:
        """The epochs to run: cfg.epochs, or under the budget as many as fit at the speed of a
        few measured training steps."""
        cfg = self.cfg
        self.eval_s_per_img = 0.0
        if not self.applies:
            return cfg.epochs
        sec_per_img = measure_step_time(
            trainee.net,
            loader,
            trainee.criterion,
            trainee.device,
            trainee.channels_last,
            optimizer=trainee.optimizer,
            frozen=trainee.frozen_norms,
        )
        # An evaluated photo costs about a third of a trained one at the same size.
        self.eval_s_per_img = sec_per_img * 0.35 * eval_cost_scale(cfg)
        per_epoch = sec_per_img * steps * cfg.batch_size * 1.05 + self.eval_s_per_img * (val_images)
        elapsed = time.perf_counter() - self.started
        epochs = plan_epochs(cfg, per_epoch, elapsed + self.finish_reserve(test_images))
        epochs = int(self.dist.broadcast(epochs))  # every rank must run the same epochs
        self.rep.info(
            f"time budget {cfg.time_budget_min:g} min → {epochs} epoch(s) of ~{per_epoch:.0f} s"
        )
        return epochs

    def replan(self, epoch: int, epoch_s: float, planned: int, test_images: int) -> int:
        """The epochs in all after `epoch` took `epoch_s` seconds (augmentation, validation and
        checkpoints included, which the step-time estimate leaves out): more when the machine
        is faster than estimated, fewer (down to `epoch`: stop now) when it is slower."""
        self.epoch_times.append(epoch_s)
        if epoch >= planned:  # the schedule has run out: the run ends as planned
            return planned
        elapsed = time.perf_counter() - self.started
        reserve = self.finish_reserve(test_images)
        epochs = replan_epochs(self.cfg, epoch, self.epoch_times, elapsed + reserve)
        epochs = int(self.dist.broadcast(epochs))
        if epochs == planned:
            return planned
        if epochs <= epoch:
            self.rep.warn(f"time budget: stopping after epoch {epoch}/{planned}")
            return epoch
        self.rep.info(f"time budget: {epochs} epoch(s) at the measured {epoch_s:.0f} s/epoch")
        return epochs


def measure_step_time(
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
