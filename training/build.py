"""A run's training pieces: seeding, the model on its device, loss, optimizer and LR schedule."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from plantdx.checkpoint import Checkpoint
from plantdx.crops import CropMap, run_crops
from plantdx.exceptions import ConfigError
from plantdx.models import create_model
from plantdx.preprocessing import PreprocessMeta

from .config import TrainConfig
from .distributed import Distributed
from .freezing import backbone_frozen, freeze_stem, frozen_for_epoch
from .progress import Reporter
from .sampling import OutlierExposureLoss


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


def place_model(model: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """The model on `device`, in the memory format training feeds it."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


@dataclass
class Trainee:
    """The model a run trains and what trains it."""

    net: nn.Module  # the model itself: checkpoints and evaluation use it
    model: nn.Module  # what the training step runs: `net`, wrapped by DDP under torchrun
    device: torch.device
    channels_last: bool
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    amp: bool
    scaler: torch.amp.GradScaler | None
    frozen_norms: list[nn.Module]  # norm layers kept in eval mode
    frozen: bool | None = None  # whether the backbone is frozen; None before the first epoch

    def freeze_for(self, epoch: int, cfg: TrainConfig, dist: Distributed, rep: Reporter) -> None:
        """Freeze (or unfreeze) what `cfg` keeps frozen in `epoch`."""
        frozen = backbone_frozen(cfg, epoch)
        if frozen == self.frozen:
            return
        if self.frozen is not None:
            rep.info(f"epoch {epoch}: unfreezing the backbone")
        self.frozen = frozen
        self.frozen_norms = frozen_for_epoch(self.net, cfg, epoch)
        self.model = dist.wrap(self.net)  # DDP reduces only what is trainable at wrap time


def build_trainee(
    cfg: TrainConfig,
    class_names: Sequence[str],
    meta: PreprocessMeta,
    device: torch.device,
    resume: Checkpoint | None,
    train_image_size: int | None = None,
) -> Trainee:
    """The model (ImageNet or --weights, or the resumed run's), its loss and optimizer.

    The network is built for `meta`'s size, the one it is evaluated, exported and served at
    (the checkpoint rebuilds it so); with a smaller `train_image_size` it must also take that
    size, or the run stops here with a clear error."""
    kwargs = dict(cfg.model_kwargs)
    if resume is not None:
        kwargs = dict(resume.model_kwargs)
    net = create_model(
        cfg.model,
        num_classes=len(class_names),
        pretrained=cfg.pretrained and resume is None,
        image_size=meta.image_size,
        weights=cfg.weights if resume is None else None,
        **kwargs,
    )
    if resume is not None:
        net.load_state_dict(resume.state_dict)
    if train_image_size and train_image_size != meta.image_size:
        _check_takes_size(net, cfg.model, train_image_size, meta.image_size)
    net = place_model(net, device, cfg.channels_last)
    frozen_norms: list[nn.Module] = freeze_stem(net, cfg.model, cfg.freeze_blocks)
    crops = CropMap.from_dict(class_names, run_crops(cfg.out, class_names))
    crop_index = {crop: k for k, crop in enumerate(crops.names)}
    criterion = OutlierExposureLoss(
        label_smoothing=cfg.label_smoothing,
        unknown_weight=cfg.sampling.unknown_weight,
        crop_of_class=[crop_index[c] for c in crops.crops],
        crop_weight=cfg.crop_loss_weight,
    )
    optimizer = build_optimizer(net, cfg)
    amp = cfg.amp and device.type == "cuda"
    return Trainee(
        net=net,
        model=net,
        device=device,
        channels_last=cfg.channels_last,
        criterion=criterion,
        optimizer=optimizer,
        amp=amp,
        scaler=torch.amp.GradScaler("cuda") if amp else None,
        frozen_norms=frozen_norms,
    )


def _check_takes_size(net: nn.Module, model: str, size: int, built_for: int) -> None:
    """One forward pass at `size` on the network built for `built_for` (eval_image_size)."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, size, size))
    except Exception as exc:
        raise ConfigError(
            f"{model} built for eval_image_size {built_for} cannot train at image_size "
            f"{size}: {exc}"
        ) from exc
    finally:
        net.train(was_training)
