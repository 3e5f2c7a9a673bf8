"""Where a run stands at an epoch boundary: its plan, best epoch, early stopping and history."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .config import TrainConfig


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

    def end_epoch(
        self, epoch: int, row: dict[str, Any], score: float, val_loss: float, cfg: TrainConfig
    ) -> bool:
        """Record a validated epoch (its history row, the best selection score, early
        stopping); returns whether it is the best so far."""
        self.history.append(row)
        self.epoch = epoch
        improved_acc = score > self.best_acc  # best_acc holds the selection score (select_on)
        if improved_acc:
            self.best_acc, self.best_epoch = score, epoch
        if val_loss < self.best_val_loss - cfg.early_stopping_min_delta:
            self.best_val_loss, self.bad_epochs = val_loss, 0
        else:
            self.bad_epochs += 1
        patience = cfg.early_stopping_patience
        self.stopped_early = (
            bool(patience) and self.bad_epochs >= int(patience or 0) and epoch < self.epochs
        )
        return improved_acc
