"""One epoch of training and one pass of evaluation, in the style of torchvision's references."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class EpochStats:
    loss: float
    acc: float
    images: int
    seconds: float

    @property
    def img_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def train_one_epoch(
    model: nn.Module,
    loader: Batches,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    device: torch.device,
    *,
    channels_last: bool = False,
    scaler: torch.amp.GradScaler | None = None,
    max_batches: int | None = None,
    frozen: Sequence[nn.Module] = (),
    on_batch: Callable[[int, float], None] | None = None,
) -> EpochStats:
    """`frozen`: modules kept in eval mode (the BatchNorm of a frozen backbone)."""
    model.train()
    for module in frozen:
        module.eval()
    total_loss, correct, seen, labelled = 0.0, 0, 0, 0
    start = time.perf_counter()
    for i, (images, targets) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        images = _to_device(images, device, channels_last)
        targets = targets.to(device, non_blocking=True)
        # Autocast only where it pays: bf16/fp16 on CUDA; CPU stays fp32 for exact parity.
        with torch.autocast(device.type, enabled=scaler is not None):
            logits = model(images)
            loss = criterion(logits, targets)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"loss is {loss.item()} at batch {i}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        n = targets.size(0)
        total_loss += loss.item() * n
        # Accuracy over labelled photos only (unknown ones, label -1, have no right class).
        correct += int((logits.argmax(1) == targets).sum())
        labelled += int((targets >= 0).sum())
        seen += n
        if on_batch:
            on_batch(n, loss.item())
    seconds = time.perf_counter() - start
    return EpochStats(total_loss / max(seen, 1), correct / max(labelled, 1), seen, seconds)


@dataclass
class EvalResult:
    loss: float
    acc: float
    predictions: np.ndarray
    targets: np.ndarray
    probabilities: np.ndarray
    logits: np.ndarray


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Batches,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    *,
    channels_last: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> EvalResult:
    model.eval()
    losses, logits_all, targets_all = [], [], []
    for images, targets in loader:
        images = _to_device(images, device, channels_last)
        targets = targets.to(device)
        logits = model(images).float()
        losses.append(criterion(logits, targets).item() * targets.size(0))
        logits_all.append(logits.cpu().numpy())
        targets_all.append(targets.cpu().numpy())
        if on_batch:
            on_batch(targets.size(0))
    z = np.concatenate(logits_all) if logits_all else np.zeros((0, 0), np.float32)
    p = torch.from_numpy(z).softmax(1).numpy() if len(z) else z
    t = np.concatenate(targets_all) if targets_all else np.zeros(0, np.int64)
    pred = p.argmax(1) if len(p) else t
    n = max(len(t), 1)
    acc = float((pred == t).mean()) if len(t) else 0.0
    return EvalResult(sum(losses) / n, acc, pred, t, p, z)
