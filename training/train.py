"""`plantdx train`: fine-tune a registered model on an ImageFolder and write a checkpoint."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from plantdx.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from plantdx.config import save_yaml, to_dict
from plantdx.data import SPLIT_FILENAME, save_split, scan_image_folder, stratified_split
from plantdx.exceptions import ConfigError, DatasetError
from plantdx.labels import write_labels
from plantdx.models import create_model, get_spec, model_kwargs_for_checkpoint
from plantdx.preprocessing import Normalizer, Preprocessor

from .config import TrainConfig
from .data import PixelDataset, build_augment, decode_samples
from .engine import EvalResult, evaluate, train_one_epoch
from .progress import Reporter

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    metrics: dict[str, Any]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on biases and norm layers: it only fights the normalisation.
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


def plan_epochs(cfg: TrainConfig, seconds_per_epoch: float, overhead_s: float) -> int:
    """Epochs that fit the time budget (at least one), never more than cfg.epochs."""
    if cfg.time_budget_min is None:
        return cfg.epochs
    left = cfg.time_budget_min * 60 - overhead_s
    return int(max(1, min(cfg.epochs, math.floor(left / max(seconds_per_epoch, 1e-6)))))


def train(cfg: TrainConfig, *, reporter: Reporter | None = None) -> TrainResult:
    if not cfg.data:
        raise ConfigError("no dataset: pass --data DIR (an ImageFolder: one folder per class)")
    started = time.perf_counter()
    rep = reporter or Reporter()
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    channels_last = cfg.channels_last
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)

    dataset = scan_image_folder(cfg.data)
    split = stratified_split(
        dataset, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed
    )
    save_split(split, dataset, run_dir / SPLIT_FILENAME, seed=cfg.seed)
    write_labels(dataset.class_names, run_dir / "labels.txt")
    save_yaml(cfg, run_dir / "config.yaml")

    spec = get_spec(cfg.model)
    meta = spec.preprocessing(cfg.image_size)
    pre = Preprocessor(meta)
    decoded = {}
    with rep.task("decode images", total=len(dataset.samples)) as advance:
        for name in ("train", "val", "test"):
            decoded[name] = decode_samples(split[name], pre, progress=advance)
    skipped = [(str(p), why) for d in decoded.values() for p, why in d.skipped]
    if skipped:
        rep.warn(
            f"skipped {len(skipped)} unreadable file(s): " + ", ".join(p for p, _ in skipped[:5])
        )
    if len(decoded["train"].labels) == 0 or len(decoded["val"].labels) == 0:
        raise DatasetError("no readable images left in the train or validation split")

    normalize = Normalizer(meta)
    train_ds = PixelDataset(decoded["train"], normalize, build_augment(cfg.augment))
    loaders = {
        "train": DataLoader(
            train_ds,
            batch_size=cfg.batch_size,
            shuffle=True,
            drop_last=len(train_ds) > cfg.batch_size,
            num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0,
            generator=torch.Generator().manual_seed(cfg.seed),
        ),
        **{
            k: DataLoader(PixelDataset(decoded[k], normalize), batch_size=64, num_workers=0)
            for k in ("val", "test")
        },
    }

    model = create_model(
        cfg.model,
        num_classes=len(dataset.class_names),
        pretrained=cfg.pretrained,
        image_size=meta.image_size,
        weights=cfg.weights,
    ).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and device.type == "cuda" else None

    steps = len(loaders["train"])
    if cfg.max_train_batches:
        steps = min(steps, cfg.max_train_batches)
    epochs = cfg.epochs
    if cfg.time_budget_min is not None:
        sec_per_img = _measure_step_time(model, loaders["train"], criterion, device, channels_last)
        per_epoch = sec_per_img * steps * cfg.batch_size * 1.05 + sec_per_img * 0.35 * len(
            decoded["val"].labels
        )
        epochs = plan_epochs(cfg, per_epoch, time.perf_counter() - started + 30)
        rep.info(
            f"time budget {cfg.time_budget_min:g} min → {epochs} epoch(s) of ~{per_epoch:.0f} s"
        )
    scheduler = build_scheduler(optimizer, cfg, steps, epochs)

    tracker = _Tracker(cfg, dataset.class_names) if cfg.mlflow else None
    if tracker:
        tracker.log_dataset(dataset)
    history: list[dict[str, float]] = []
    best_acc, best_epoch = -1.0, 0
    try:
        for epoch in range(1, epochs + 1):
            with rep.task(
                f"epoch {epoch}/{epochs}", total=steps * cfg.batch_size, unit="img"
            ) as adv:
                stats = train_one_epoch(
                    model,
                    loaders["train"],
                    criterion,
                    optimizer,
                    scheduler,
                    device,
                    channels_last=channels_last,
                    scaler=scaler,
                    max_batches=cfg.max_train_batches,
                    on_batch=lambda n, _loss: adv(n),
                )
            val = evaluate(model, loaders["val"], criterion, device, channels_last=channels_last)
            row = {
                "epoch": epoch,
                "train_loss": stats.loss,
                "train_acc": stats.acc,
                "val_loss": val.loss,
                "val_acc": val.acc,
                "lr": optimizer.param_groups[0]["lr"],
                "train_img_per_s": stats.img_per_s,
            }
            history.append(row)
            rep.epoch(row)
            if tracker:
                tracker.log_epoch(row)
            ckpt = _checkpoint(model, cfg, dataset.class_names, meta, tracker, row)
            if val.acc > best_acc:
                best_acc, best_epoch = val.acc, epoch
                save_checkpoint(ckpt, run_dir / "best.pt")
            ckpt.train_state = {"epoch": epoch, "optimizer": optimizer.state_dict()}
            save_checkpoint(ckpt, run_dir / "last.pt")

        best = load_checkpoint(run_dir / "best.pt")
        model.load_state_dict(best.state_dict)
        test = evaluate(model, loaders["test"], criterion, device, channels_last=channels_last)
        metrics: dict[str, Any] = {
            "val_acc": best_acc,
            "best_epoch": best_epoch,
            "test_acc": test.acc,
            "test_loss": test.loss,
            "n_train": len(decoded["train"].labels),
            "n_val": len(decoded["val"].labels),
            "n_test": len(decoded["test"].labels),
            "epochs": epochs,
            "skipped_files": len(skipped),
            "seconds": time.perf_counter() - started,
            "model": cfg.model,
            "image_size": meta.image_size,
            "device": str(device),
        }
        best.metrics = {**best.metrics, **{k: v for k, v in metrics.items()}}
        save_checkpoint(best, run_dir / "best.pt")
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (run_dir / "history.json").write_text(json.dumps(history, indent=2) + "\n")
        if skipped:
            (run_dir / "skipped.json").write_text(json.dumps(skipped, indent=2) + "\n")
        if tracker:
            tracker.finish(metrics, run_dir, test, dataset.class_names)
            metrics["mlflow_run_id"] = tracker.run_id
            if tracker.registered:
                metrics["registered_model"] = tracker.registered
    except BaseException:
        if tracker:
            tracker.fail()
        raise
    rep.summary(metrics)
    return TrainResult(run_dir, run_dir / "best.pt", metrics)


def _checkpoint(
    model: nn.Module,
    cfg: TrainConfig,
    class_names: list[str],
    meta: Any,
    tracker: _Tracker | None,
    row: dict[str, Any],
) -> Checkpoint:
    state = {
        k: v.detach().to("cpu", memory_format=torch.contiguous_format).clone()
        if v.is_floating_point()
        else v.detach().cpu().clone()
        for k, v in model.state_dict().items()
    }
    return Checkpoint(
        model_name=cfg.model,
        class_names=list(class_names),
        preprocessing=meta,
        state_dict=state,
        model_kwargs=model_kwargs_for_checkpoint(model),
        config=to_dict(cfg),
        metrics=dict(row),
        mlflow_run_id=tracker.run_id if tracker else None,
    )


def _measure_step_time(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    device: torch.device,
    channels_last: bool,
) -> float:
    """Seconds per training image, from a few real forward/backward passes (no update)."""
    model.train()
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
    model.zero_grad(set_to_none=True)
    return float(np.median(times[1:] if len(times) > 1 else times))


class _Tracker:
    """MLflow logging for one run; never lets a tracking hiccup kill a training run."""

    def __init__(self, cfg: TrainConfig, class_names: list[str]) -> None:
        from plantdx.tracking import configure

        self.mlflow = configure()
        self.mlflow.set_experiment(cfg.experiment)
        self.run = self.mlflow.start_run()
        self.run_id: str = self.run.info.run_id
        self.cfg = cfg
        flat = {k: v for k, v in to_dict(cfg).items() if not isinstance(v, dict)}
        flat.update({f"augment.{k}": v for k, v in to_dict(cfg.augment).items()})
        flat["num_classes"] = len(class_names)
        self.mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
        self.data_hash = ""
        self.registered: str | None = None

    def log_dataset(self, dataset: Any) -> None:
        """A hash of the file list and sizes: cheap, and changes whenever the data does."""
        import hashlib

        h = hashlib.sha256()
        for s in dataset.samples:
            h.update(
                f"{s.path.relative_to(dataset.root)}:{s.path.stat().st_size}:{s.label}\n".encode()
            )
        self.data_hash = h.hexdigest()
        self.mlflow.set_tags({"data_sha256": self.data_hash, "data_root": str(dataset.root)})

    def log_epoch(self, row: dict[str, Any]) -> None:
        step = int(row["epoch"])
        self.mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"}, step=step)

    def finish(
        self, metrics: dict[str, Any], run_dir: Path, test: EvalResult, class_names: list[str]
    ) -> None:
        numeric = {
            ("best_val_acc" if k == "val_acc" else k): float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float)
        }
        self.mlflow.log_metrics(numeric)
        for name in ("config.yaml", "labels.txt", SPLIT_FILENAME, "metrics.json", "history.json"):
            if (run_dir / name).is_file():
                self.mlflow.log_artifact(str(run_dir / name))
        self.mlflow.log_artifact(str(run_dir / "best.pt"), artifact_path="checkpoint")
        if self.cfg.register_as:
            self.register(self.cfg.register_as, metrics)
        self.mlflow.end_run()

    def register(self, name: str, metrics: dict[str, Any]) -> None:
        """A registry version whose source is the checkpoint folder, so models:/NAME/N exports."""
        from mlflow.exceptions import MlflowException

        client = self.mlflow.MlflowClient()
        with contextlib.suppress(MlflowException):  # already registered
            client.create_registered_model(name)
        tags = {k: str(v) for k, v in metrics.items() if isinstance(v, int | float | str)}
        tags["data_sha256"] = self.data_hash
        source = f"{self.run.info.artifact_uri}/checkpoint"
        version = client.create_model_version(name, source, run_id=self.run_id, tags=tags)
        self.registered = f"models:/{name}/{version.version}"

    def fail(self) -> None:
        self.mlflow.end_run(status="FAILED")
