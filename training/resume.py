"""--resume: the run a checkpoint continues, and the training state last.pt holds besides the
weights (loop, optimizer, scheduler, scaler, RNG streams)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from plantdx.checkpoint import Checkpoint, load_checkpoint
from plantdx.config import load_yaml, resolve, to_dict
from plantdx.exceptions import ConfigError

from .build import Trainee, seed_everything
from .config import TrainConfig
from .distributed import Distributed
from .loop_state import LoopState
from .progress import Reporter

# Settings a resumed run must share with the run it continues.
RESUME_MUST_MATCH = (
    "model",
    "model_kwargs",
    "image_size",
    "eval_image_size",
    "eval_scale",
    "batch_size",
    "seed",
    "val_fraction",
    "test_fraction",
    "resize",
)
# What a run from before a setting existed had instead of its default today.
BEFORE_DEFAULT = {"eval_scale": 1.0}


def resume_config(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config a run was started with (its config.yaml), with `overrides` on top."""
    run = Path(run_dir)
    if not (run / "last.pt").is_file():
        raise ConfigError(f"cannot resume {run}: it has no last.pt (no epoch was completed)")
    stored = load_yaml(run / "config.yaml") or {}
    older = {k: v for k, v in BEFORE_DEFAULT.items() if k not in stored}
    merged = {**older, **(overrides or {}), "resume": str(run), "out": str(run)}
    return resolve(TrainConfig, run / "config.yaml", merged)


def load_resume(cfg: TrainConfig) -> Checkpoint | None:
    if not cfg.resume:
        return None
    last = Path(cfg.resume) / "last.pt"
    if not last.is_file():
        raise ConfigError(f"cannot resume {cfg.resume}: it has no last.pt")
    ckpt = load_checkpoint(last)
    if not ckpt.train_state:
        raise ConfigError(f"{last} holds no training state to resume from")
    mine, defaults = to_dict(cfg), {**to_dict(TrainConfig()), **BEFORE_DEFAULT}
    changed = [k for k in RESUME_MUST_MATCH if ckpt.config.get(k, defaults[k]) != mine[k]]
    if changed:
        raise ConfigError(
            f"cannot resume {cfg.resume} with other {', '.join(changed)} "
            f"(run: {[ckpt.config.get(k) for k in changed]}, now: {[mine.get(k) for k in changed]})"
        )
    return ckpt


def train_state(
    state: LoopState,
    trainee: Trainee,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: DataLoader[Any],
    dist: Distributed,
) -> dict[str, Any]:
    """Everything besides the weights that the next epoch depends on (weights_only-safe)."""
    py = random.getstate()
    np_state: Any = np.random.get_state()
    rng: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "loader": loader.generator.get_state(),  # type: ignore[union-attr]
    }
    if trainee.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(trainee.device)
    return {
        "loop": dataclasses.asdict(state),
        "optimizer": trainee.optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": trainee.scaler.state_dict() if trainee.scaler else {},
        "rng": rng,
        "world_size": dist.world_size,
    }


def restore_train_state(
    saved: dict[str, Any],
    epochs: int,
    more_epochs: bool,
    *,
    cfg: TrainConfig,
    trainee: Trainee,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: DataLoader[Any],
    dist: Distributed,
    rep: Reporter,
    run_dir: Path,
) -> LoopState:
    """Put back what `train_state` saved; returns the loop state to go on from."""
    trainee.optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if trainee.scaler and saved.get("scaler"):
        trainee.scaler.load_state_dict(saved["scaler"])
    st = LoopState(**saved["loop"])
    st.epochs = epochs
    done = st.epoch >= epochs or (st.stopped_early and not more_epochs)
    if done and not (run_dir / "metrics.json").exists():
        # Killed after its last epoch, in the cross-fitting or the final evaluation: the run
        # goes on from there (the continuations start again from base.pt).
        rep.info(f"resuming {run_dir}: its {st.epoch} epoch(s) are done; finishing the run")
        return st
    if done:
        how = "stopped early after" if st.stopped_early else "already finished"
        raise ConfigError(
            f"{cfg.resume} {how} {st.epoch} epoch(s); pass a larger --epochs to go on"
        )
    if st.stopped_early:  # asked for more epochs: patience starts over
        st.stopped_early, st.bad_epochs = False, 0
    if saved.get("world_size", 1) != dist.world_size or dist.rank != 0:
        # The saved RNG streams are rank 0's: other ranks (or layouts) reseed per epoch.
        seed_everything(cfg.seed + dist.rank + 1000 * st.epoch)
        return st
    rng = saved["rng"]
    py = rng["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = rng["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and trainee.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], trainee.device)
    loader.generator.set_state(rng["loader"])  # type: ignore[union-attr]
    rep.info(f"resuming {run_dir} after epoch {st.epoch}/{epochs}")
    return st
