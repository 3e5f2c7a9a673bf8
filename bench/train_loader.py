"""`plantdx bench train`: does loading starve training?

Training throughput (images/s through forward, backward and the optimizer step) is measured
twice with the same model: fed by the real training loader (decoding or cache, augmentation,
normalisation, batching: exactly what `plantdx train` builds), and fed from batches already in
memory. Their ratio is the share of the model's speed the input pipeline lets it reach.
"""

from __future__ import annotations

import itertools
import math
import os
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plantdx.data import scan_sources, stratified_split
from plantdx.exceptions import ConfigError
from plantdx.models import create_model, get_spec
from plantdx.training.build import build_optimizer, place_model
from plantdx.training.config import TrainConfig, as_list
from plantdx.training.distributed import pick_device
from plantdx.training.engine import train_one_epoch
from plantdx.training.freezing import backbone_frozen, frozen_for_epoch
from plantdx.training.loading import prepare_datasets, train_loader

from .report import machine

TARGET_RATIO = 0.85


@dataclass
class BenchTrainConfig:
    batches: int = 10  # measured batches per pass
    repeats: int = 3  # passes of each kind, interleaved (ABBA...); medians are reported
    # Unmeasured batches through each feed first: the first few hundred images of a process run
    # slower (allocator growth, kernel selection), which is start-up, not the loader's cost.
    warmup_batches: int | None = None  # None: as many as `batches`
    train: TrainConfig | None = None


def _synthetic_data(root: Path, images_needed: int, train_fraction: float) -> Path:
    from plantdx.synth import CLASSES, generate_dataset

    per_class = math.ceil(images_needed / max(train_fraction, 0.1) / len(CLASSES)) + 2
    generate_dataset(root, per_class=per_class, size=256, seed=0)
    return root


def bench_train(
    cfg: BenchTrainConfig, *, on_pass: Callable[[str, float], None] | None = None
) -> dict[str, Any]:
    tc = cfg.train or TrainConfig()
    if cfg.batches < 1 or cfg.repeats < 1:
        raise ConfigError("--batches and --repeats must be at least 1")
    with tempfile.TemporaryDirectory(prefix="plantdx-bench-train-") as tmp:
        if not tc.data:
            need = cfg.batches * tc.batch_size
            train_fraction = 1 - tc.val_fraction - tc.test_fraction
            tc = replace(tc, data=str(_synthetic_data(Path(tmp) / "leaves", need, train_fraction)))
        return _measure(cfg, tc, on_pass)


def _measure(
    cfg: BenchTrainConfig, tc: TrainConfig, on_pass: Callable[[str, float], None] | None
) -> dict[str, Any]:
    folder = scan_sources(as_list(tc.data))
    split = stratified_split(
        folder, val_fraction=tc.val_fraction, test_fraction=tc.test_fraction, seed=tc.seed
    )
    meta = replace(get_spec(tc.model).preprocessing(tc.image_size), resize=tc.resize)
    data = prepare_datasets({"train": split["train"]}, meta, tc.augment, cache=tc.cache_images)
    dataset = data.datasets["train"]
    loader = train_loader(
        dataset, batch_size=tc.batch_size, num_workers=tc.num_workers, seed=tc.seed
    )
    if len(loader) < cfg.batches:
        raise ConfigError(
            f"{tc.data} gives {len(loader)} training batch(es) of {tc.batch_size}; "
            f"--batches {cfg.batches} needs more images (or a smaller --batches)"
        )
    device = pick_device(tc.device)
    # The model as `plantdx train` builds it for its first epoch: the same image size, memory
    # format and frozen layers (stem and first `freeze_blocks` blocks, --freeze-backbone).
    channels_last = tc.channels_last
    model = place_model(
        create_model(
            tc.model,
            num_classes=len(folder.class_names),
            pretrained=False,  # throughput does not depend on the weights
            image_size=meta.image_size,
            **tc.model_kwargs,
        ),
        device,
        channels_last,
    )
    frozen = frozen_for_epoch(model, tc, 1)
    criterion = nn.CrossEntropyLoss(label_smoothing=tc.label_smoothing)
    optimizer = build_optimizer(model, tc)
    scaler = torch.amp.GradScaler("cuda") if tc.amp and device.type == "cuda" else None

    def step_through(batches: Any, n: int | None = None) -> float:
        stats = train_one_epoch(
            model,
            batches,
            criterion,
            optimizer,
            None,
            device,
            channels_last=channels_last,
            scaler=scaler,
            max_batches=n,
            frozen=frozen,
        )
        return stats.img_per_s

    warm = cfg.batches if cfg.warmup_batches is None else cfg.warmup_batches
    warmup = [step_through(loader, warm)] if warm else []
    preloaded = list(itertools.islice(iter(loader), cfg.batches))
    if warm:
        warmup.append(step_through(preloaded, warm))
    real: list[float] = []
    pre: list[float] = []
    load = [os.getloadavg()[0]]
    for i in range(cfg.repeats):
        # Alternate which goes first, so a drift in machine load does not favour one side.
        for kind in ("real loader", "preloaded") if i % 2 == 0 else ("preloaded", "real loader"):
            if kind == "real loader":
                real.append(step_through(loader, cfg.batches))
            else:
                pre.append(step_through(preloaded))
            if on_pass:
                on_pass(kind, (real if kind == "real loader" else pre)[-1])
        load.append(os.getloadavg()[0])
    loader_only = _loader_only(loader, cfg.batches)
    ratio = statistics.median(real) / statistics.median(pre)
    return {
        "model": tc.model,
        "image_size": meta.image_size,
        "freeze_blocks": tc.freeze_blocks,
        "freeze_backbone": backbone_frozen(tc, 1),
        "channels_last": channels_last,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "batch_size": tc.batch_size,
        "batches": cfg.batches,
        "repeats": cfg.repeats,
        "num_workers": tc.num_workers,
        "cache_images": tc.cache_images,
        "data": tc.data if cfg.train and cfg.train.data else "synthetic (plantdx data synth)",
        "n_train_images": len(dataset),  # type: ignore[arg-type]
        "device": str(device),
        "machine": machine(torch_details=True),
        "real_loader_img_per_s": statistics.median(real),
        "preloaded_img_per_s": statistics.median(pre),
        "ratio": ratio,
        "loader_only_img_per_s": loader_only,
        "real_loader_passes": real,
        "preloaded_passes": pre,
        "warmup_img_per_s": {"real loader": warmup[:1], "preloaded": warmup[1:]},
        # 1-minute load average before and after each pair of passes: on a machine with
        # os.cpu_count() cores, values well above the torch thread count mean other work ran.
        "load_avg_1m": load,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
    }


def _loader_only(loader: Any, batches: int) -> float:
    """Images/s the loader delivers with nothing else running."""
    import time

    start = time.perf_counter()
    seen = 0
    for images, _ in itertools.islice(iter(loader), batches):
        seen += images.size(0)
    return seen / max(time.perf_counter() - start, 1e-9)
