"""Cross-fitting: out-of-fold predictions on every field photo, then the shipped model.

After the base epochs (which never see the field photos: `crossfit_data.move_to_cv`), each of
K continuations starts from the base model, trains the same number of steps on the base's
draws mixed with the field photos of K-1 folds, and predicts the fold left out. The final
continuation does exactly the same with every fold: it is the shipped model. Each field photo
is thus predicted once by a model trained as the shipped one was, less one fold: the
temperature, the abstention threshold and the reported field figures come from those
predictions (`sources.decide_and_report`), never from a few dozen validation photos.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Subset

from plantdx.exceptions import DatasetError

from .augment import build_augment
from .build import Trainee, build_optimizer, build_scheduler
from .config import TrainConfig
from .crossfit_data import CrossfitConfig
from .engine import EvalResult, evaluate, train_one_epoch
from .loading import PreparedData, eval_loader
from .progress import Reporter
from .sampling import sample_weights
from .tta import Mirrored


@dataclass
class CrossfitResult:
    """The out-of-fold predictions over the cross-fitted photos, in `prepared.paths["cv"]`
    order, and what the continuations were."""

    oof: EvalResult
    folds: np.ndarray  # fold of each photo
    sources: np.ndarray  # source index of each photo
    steps: int
    seconds: float
    fold_seconds: list[float] = field(default_factory=list)
    # The same out-of-fold predictions with the mirrored image's logits averaged in.
    hflip_logits: np.ndarray | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "folds": int(self.folds.max()) + 1 if len(self.folds) else 0,
            "photos": len(self.folds),
            "steps_per_continuation": self.steps,
            "seconds": self.seconds,
            "fold_seconds": self.fold_seconds,
        }


def continuation_steps(
    cfg: TrainConfig, n_field_train: int, seconds_left: float | None, sec_per_step: float
) -> int:
    """Steps of every continuation: the passes asked over the field photos (`epochs`), or
    fewer when the time left (CPU budget) does not hold K+1 of them."""
    c = cfg.crossfit
    field_draws = c.field_share * cfg.batch_size
    wanted = max(1, math.ceil(c.epochs * n_field_train / max(field_draws, 1e-9)))
    if seconds_left is None:
        return wanted
    fits = math.floor(seconds_left / (c.folds + 1) / max(sec_per_step, 1e-9))
    return max(1, min(wanted, fits))


def continuation_weights(
    train_weights: np.ndarray, field_weights: np.ndarray, held: np.ndarray, field_share: float
) -> np.ndarray:
    """Draw probabilities over [the base's training photos, the field photos]: the base's
    own weights scaled to 1 - field_share, the field photos' to field_share, the held-out
    fold's field photos never."""
    w_field = np.where(held, 0.0, field_weights)
    base = np.asarray(train_weights, dtype=np.float64)
    parts = [base / base.sum() * (1 - field_share) if base.sum() > 0 else base]
    parts.append(w_field / w_field.sum() * field_share if w_field.sum() > 0 else w_field)
    w = np.concatenate(parts)
    return w / w.sum()


def run_crossfit(
    cfg: TrainConfig,
    trainee: Trainee,
    data: PreparedData,
    folds_of: dict[Path, int],
    base_state: dict[str, torch.Tensor],
    *,
    num_classes: int,
    source_names: list[str],
    train_weights: np.ndarray,
    steps: int,
    rep: Reporter,
) -> CrossfitResult:
    """K continuations of `steps` steps for the out-of-fold predictions, then the final one,
    whose weights `trainee.net` holds on return."""
    c = cfg.crossfit
    started = time.perf_counter()
    cv_eval = data.datasets["cv"]
    paths = data.paths["cv"]
    folds = np.asarray([folds_of[p] for p in paths], dtype=np.int64)
    labels, sources = data.labels["cv"], data.sources["cv"]
    # Trained on at the training size, evaluated at the model's (`image_sizes`).
    cv_train = copy.copy(data.datasets.get("cv_train", cv_eval))
    if "cv_train" in data.datasets and data.paths["cv_train"] != paths:
        raise DatasetError("a cross-fitted photo decoded at one size but not at the other")
    cv_train.augment = build_augment(cfg.augment)  # type: ignore[attr-defined]
    pool: ConcatDataset[Any] = ConcatDataset([data.datasets["train"], cv_train])
    field_w = sample_weights(
        labels,
        sources,
        source_balance=cfg.sampling.source_balance,
        class_balance=cfg.sampling.class_balance,
        unknown_share=0.0,
        source_multipliers=cfg.sampling.source_multipliers(source_names),
    )
    rep.info(
        f"cross-fitting {len(paths)} field photo(s) in {c.folds} folds: "
        f"{c.folds + 1} continuations of {steps} steps"
    )
    oof_logits = np.zeros((len(paths), num_classes), dtype=np.float32)
    flip_logits = np.zeros_like(oof_logits)
    fold_seconds: list[float] = []
    for k in [*range(c.folds), -1]:  # -1: the final continuation, every fold
        t0 = time.perf_counter()
        held = folds == k
        w = continuation_weights(train_weights, field_w, held, c.field_share)
        trainee.net.load_state_dict(base_state)
        _continue(cfg, trainee, pool, w, steps, seed=cfg.seed * 100 + k + 1, rep=rep, fold=k)
        if k >= 0:
            idx = np.flatnonzero(held)
            res = evaluate(
                trainee.net,
                eval_loader(Subset(cv_eval, idx.tolist())),
                trainee.criterion,
                trainee.device,
                channels_last=trainee.channels_last,
            )
            oof_logits[idx] = res.logits
            mirrored = evaluate(
                Mirrored(trainee.net),
                eval_loader(Subset(cv_eval, idx.tolist())),
                trainee.criterion,
                trainee.device,
                channels_last=trainee.channels_last,
            )
            flip_logits[idx] = (res.logits + mirrored.logits) / 2
        fold_seconds.append(time.perf_counter() - t0)
    probs = torch.from_numpy(oof_logits).softmax(1).numpy()
    pred = probs.argmax(1)
    oof = EvalResult(
        loss=float("nan"),
        acc=float((pred == labels).mean()) if len(labels) else 0.0,
        predictions=pred,
        targets=np.asarray(labels),
        probabilities=probs,
        logits=oof_logits,
    )
    return CrossfitResult(
        oof,
        folds,
        np.asarray(sources),
        steps,
        time.perf_counter() - started,
        fold_seconds,
        hflip_logits=flip_logits,
    )


def _continue(
    cfg: TrainConfig,
    trainee: Trainee,
    pool: ConcatDataset[Any],
    weights: np.ndarray,
    steps: int,
    *,
    seed: int,
    rep: Reporter,
    fold: int,
) -> None:
    """`steps` optimizer steps from the current weights on draws from `weights` over `pool`:
    a fresh optimizer and the base's schedule shape (build_scheduler): 10 % warm-up, cosine."""
    c: CrossfitConfig = cfg.crossfit
    optimizer = build_optimizer(trainee.net, dataclasses.replace(cfg, lr=c.lr))
    # The base's schedule over one "epoch" of `steps`: 10 % warm-up, then cosine to zero.
    schedule = dataclasses.replace(cfg, warmup_epochs=0.1, scheduler="cosine")
    scheduler = build_scheduler(optimizer, schedule, steps, 1)
    g = torch.Generator().manual_seed(seed)
    draws = torch.multinomial(
        torch.as_tensor(weights, dtype=torch.double), steps * cfg.batch_size, True, generator=g
    )
    torch.manual_seed(seed)  # the augmentation's seeds
    loader = DataLoader(
        pool, batch_size=cfg.batch_size, sampler=draws.tolist(), num_workers=cfg.num_workers
    )
    what = f"fold {fold + 1}/{c.folds}" if fold >= 0 else "final"
    with rep.task(f"continuation ({what})", total=steps * cfg.batch_size, unit="img") as adv:
        train_one_epoch(
            trainee.model,
            loader,
            trainee.criterion,
            optimizer,
            scheduler,
            trainee.device,
            channels_last=trainee.channels_last,
            scaler=trainee.scaler,
            frozen=trainee.frozen_norms,
            on_batch=lambda n, _loss: adv(n),
        )
