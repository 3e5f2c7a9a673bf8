"""The training config: every hyperparameter, with the defaults that are the recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from plantdx.choices import Device, Optimizer, Resize, Scheduler, SelectOn

from .calibrate import AbstainConfig
from .crossfit_data import CrossfitConfig
from .sampling import SamplingConfig


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
    # Zoom and shift (border reflected): zoom < 1 shows the leaf smaller, as field photos do;
    # zoom > 1 draws it larger than the frame shows it, which together with evaluating at
    # `eval_scale` x the training size gained field photos 4 points (BENCHMARKS.md).
    zoom_min: float = 0.9
    zoom_max: float = 1.6
    shift: float = 0.15
    zoom_p: float = 0.6
    # Cut the leaf off its lab board (training.compositing.leaf_mask) and paste it, shrunk to
    # leaf_scale_min..1 of the frame, onto a procedurally drawn ground, half the time with a
    # cast shadow: the model stops relying on the plain board (see BENCHMARKS.md).
    field_p: float = 0.3
    leaf_scale_min: float = 0.55
    # Colour: hue/saturation shift and white balance (colour temperature).
    color_p: float = 0.0
    # Uneven light: a linear or corner brightness gradient.
    illumination_p: float = 0.0


@dataclass
class TrainConfig:
    # One ImageFolder, or several (`--data LAB --data FIELD`): each source is split on its own
    # and reported on its own; classes are joined by folder name.
    data: list[str] | str = ""
    # Folders of photos that belong to no class (other crops): they teach and calibrate the
    # "uncertain" answer (outlier exposure, the abstention threshold). Any folder layout.
    unknown_data: list[str] | str | None = None
    # A data audit's exclude.txt (`plantdx data audit`): the photos it lists are dropped
    # before the split (listed in the run's excluded.tsv).
    exclude: str | None = None
    # A data audit's domains.tsv (default: the one beside `exclude`): a source with both
    # lab-style and field-style photos is sampled and reported as two, NAME and NAME:lab.
    domains: str | None = None
    out: str = "runs/latest"
    model: str = "efficientnet_lite0"
    pretrained: bool = True
    weights: str | None = None
    image_size: int | None = 160
    # The size every evaluation runs at, and so the size the model is exported and served at
    # (the checkpoint's preprocessing metadata carries it); None: the training size times
    # `eval_scale` (160 -> 192 px), or the training size for an architecture built for one
    # input size (ViT). Training at a smaller size than testing pays because zoomed-in
    # training crops show leaves larger than a whole photo does ("FixRes", Touvron et al.
    # 2019); measured in BENCHMARKS.md ("Field photos by class, and zoom-in training").
    eval_image_size: int | None = None
    eval_scale: float = 1.2
    # How a non-square photo becomes the square input: squash | crop | pad (preprocessing.py).
    resize: Resize = "crop"
    # The most epochs; on a GPU (no time budget there) exactly this many.
    epochs: int = 20
    # On a CPU, plan the epochs so the whole run (decoding, training, validation, test pass,
    # MLflow) fits this many minutes; re-planned after every epoch from the measured epoch
    # times (more epochs if the machine is faster, fewer if it slows down). None or 0: no limit.
    # Ignored on a GPU.
    time_budget_min: float | None = 18.0
    batch_size: int = 32
    optimizer: Optimizer = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    momentum: float = 0.9
    scheduler: Scheduler = "cosine"
    warmup_epochs: float = 0.3
    step_size: int = 3
    gamma: float = 0.1
    label_smoothing: float = 0.1
    # Weight of a second cross-entropy on the photo's crop (its classes' probabilities summed;
    # crops from the class names, or the run's crops.yaml). 0: none.
    crop_loss_weight: float = 0.0
    freeze_backbone: bool = False
    # Keep the stem and the first N blocks of an EfficientNet frozen for the whole run (weights
    # and BatchNorm statistics): no backward pass through the early high-resolution layers,
    # which roughly halves a CPU training step. None or -1: train every layer. Models without a
    # stem/blocks layout (test_tiny, vit) ignore it.
    freeze_blocks: int | None = 5
    unfreeze_after: int | None = None
    early_stopping_patience: int | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.1
    seed: int = 42
    num_workers: int = 0
    cache_images: bool = True
    device: Device = "auto"
    channels_last: bool = True
    amp: bool = True
    mlflow: bool = True
    experiment: str = "plantdx"
    register_as: str | None = None
    max_train_batches: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    # The best epoch: the highest mean over sources of val accuracy (mean_source_acc), the
    # highest worst source (min_source_acc), or pooled val accuracy (pooled_acc). With one
    # source all three are the val accuracy.
    select_on: SelectOn = "mean_source_acc"
    abstain: AbstainConfig = field(default_factory=AbstainConfig)
    # The field sources' photos in K folds: out-of-fold predictions for the decision rule,
    # then the shipped model on all of them (training/crossfit.py).
    crossfit: CrossfitConfig = field(default_factory=CrossfitConfig)
    # Builder arguments for the model, e.g. {"tiny": true} or {"hf_config": {...}} for vit.
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # Early stopping counts epochs whose val_loss did not drop by more than this.
    early_stopping_min_delta: float = 0.0
    # A run directory to continue from its last.pt (model, optimizer, scheduler, RNG, epoch).
    resume: str | None = None
    # Register the best model in the MLflow Model Registry as `register_as` (default "plantdx").
    register: bool = True
    register_alias: str | None = None


def as_list(value: str | list[str] | None) -> list[str]:
    """A --data/--unknown-data value (one path or several) as a list of paths."""
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]
