"""Training stage: fine-tune a registered model on an ImageFolder; evaluate a checkpoint."""

from __future__ import annotations

from .config import AugmentConfig, TrainConfig
from .evaluate import EvaluateConfig, evaluate_checkpoint
from .train import TrainResult, resume_config, train

__all__ = [
    "AugmentConfig",
    "EvaluateConfig",
    "TrainConfig",
    "TrainResult",
    "evaluate_checkpoint",
    "resume_config",
    "train",
]
