"""The checkpoint: the only thing training hands to export, evaluation and serving.

A checkpoint is a plain dict of tensors and primitive values, so it loads with
`torch.load(weights_only=True)`: no pickled code runs when a checkpoint is opened.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from plantdx.crops import CropMap, read_crops_override
from plantdx.exceptions import CheckpointError
from plantdx.files import file_sha256 as file_sha256
from plantdx.preprocessing import PreprocessMeta

FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    model_name: str
    class_names: list[str]
    preprocessing: PreprocessMeta
    state_dict: dict[str, torch.Tensor]
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # Everything a resumed run needs (optimizer, scheduler, epoch, RNG); empty for exports.
    train_state: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    # The fitted decision rule (temperature, abstention threshold): plantdx.decision.DecisionRule
    # as a dict; empty for checkpoints made before it existed (T=1, answer everything).
    decision: dict[str, Any] = field(default_factory=dict)
    # The crop of each class (class → crop, plantdx.crops); empty for checkpoints made before
    # crops were stored: then read from the class names.
    crops: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "model_name": self.model_name,
            "class_names": list(self.class_names),
            "preprocessing": self.preprocessing.to_dict(),
            "state_dict": self.state_dict,
            "model_kwargs": dict(self.model_kwargs),
            "config": dict(self.config),
            "metrics": dict(self.metrics),
            "train_state": dict(self.train_state),
            "mlflow_run_id": self.mlflow_run_id,
            "decision": dict(self.decision),
            "crops": dict(self.crops),
        }

    def build_model(self) -> torch.nn.Module:
        """The network with these weights, in eval mode."""
        from plantdx.models import create_model

        model = create_model(
            self.model_name,
            num_classes=self.num_classes,
            pretrained=False,
            image_size=self.preprocessing.image_size,
            **self.model_kwargs,
        )
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            raise CheckpointError(
                f"checkpoint weights do not fit {self.model_name}: {exc}"
            ) from exc
        return model.eval()


def save_checkpoint(ckpt: Checkpoint, path: str | Path) -> Path:
    """Write atomically: a killed process leaves the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(ckpt.to_dict(), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable plantdx checkpoint: {exc}") from exc
    if not isinstance(raw, dict) or "model_name" not in raw or "state_dict" not in raw:
        raise CheckpointError(f"{path} is not a plantdx checkpoint (no model_name/state_dict)")
    if raw.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format {raw['format_version']}; this plantdx reads up to {FORMAT_VERSION}"
        )
    return Checkpoint(
        model_name=raw["model_name"],
        class_names=list(raw["class_names"]),
        preprocessing=PreprocessMeta.from_dict(raw["preprocessing"]),
        state_dict=raw["state_dict"],
        model_kwargs=dict(raw.get("model_kwargs") or {}),
        config=dict(raw.get("config") or {}),
        metrics=dict(raw.get("metrics") or {}),
        train_state=dict(raw.get("train_state") or {}),
        mlflow_run_id=raw.get("mlflow_run_id"),
        decision=dict(raw.get("decision") or {}),
        crops={str(k): str(v) for k, v in (raw.get("crops") or {}).items()},
    )


def checkpoint_crops(ckpt: Checkpoint, path: str | Path | None = None) -> CropMap:
    """The crop of each class: the checkpoint's own (from its class names when it has none),
    with a `crops.yaml` beside the checkpoint file (its run directory) overriding."""
    override = read_crops_override(Path(path).parent) if path is not None else {}
    try:
        return CropMap.from_dict(ckpt.class_names, {**ckpt.crops, **override})
    except ValueError as exc:
        raise CheckpointError(f"the crops of {path or 'the checkpoint'}: {exc}") from exc
