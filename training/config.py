"""The training config: every hyperparameter, with the defaults that are the recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class AugmentConfig:
    """Train-time albumentations pipeline (eval uses plantdx.preprocessing only)."""

    hflip: float = 0.5
    vflip: float = 0.5
    rotate_limit: int = 30
    rotate_p: float = 0.5
    brightness_contrast: float = 0.2
    brightness_contrast_p: float = 0.5
    blur_p: float = 0.1
    noise_p: float = 0.1


@dataclass
class TrainConfig:
    data: str = ""
    out: str = "runs/latest"
    model: str = "efficientnet_lite0"
    pretrained: bool = True
    weights: str | None = None
    image_size: int | None = 192
    epochs: int = 8
    # On a CPU, plan the number of epochs so the run fits this many minutes (None: no limit).
    time_budget_min: float | None = None
    batch_size: int = 32
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    momentum: float = 0.9
    scheduler: Literal["cosine", "step", "none"] = "cosine"
    warmup_epochs: float = 0.3
    step_size: int = 3
    gamma: float = 0.1
    label_smoothing: float = 0.1
    freeze_backbone: bool = False
    unfreeze_after: int | None = None
    early_stopping_patience: int | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.1
    seed: int = 42
    num_workers: int = 0
    cache_images: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool = True
    amp: bool = True
    mlflow: bool = True
    experiment: str = "plantdx"
    register_as: str | None = None
    max_train_batches: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
