"""The checkpoint of an epoch: the model's weights on the CPU, with everything a checkpoint
carries besides (model, classes, preprocessing, config, metrics, MLflow run)."""

from __future__ import annotations

from typing import Any

import torch

from plantdx.checkpoint import Checkpoint
from plantdx.config import to_dict
from plantdx.crops import run_crops
from plantdx.models import model_kwargs_for_checkpoint
from plantdx.preprocessing import PreprocessMeta

from .build import Trainee
from .config import TrainConfig


def epoch_checkpoint(
    cfg: TrainConfig,
    trainee: Trainee,
    class_names: list[str],
    meta: PreprocessMeta,
    row: dict[str, Any],
    mlflow_run_id: str | None,
) -> Checkpoint:
    state = {
        k: v.detach().to("cpu", memory_format=torch.contiguous_format).clone()
        if v.is_floating_point()
        else v.detach().cpu().clone()
        for k, v in trainee.net.state_dict().items()
    }
    return Checkpoint(
        model_name=cfg.model,
        class_names=list(class_names),
        preprocessing=meta,
        state_dict=state,
        model_kwargs=model_kwargs_for_checkpoint(trainee.net),
        config=to_dict(cfg),
        metrics=dict(row),
        mlflow_run_id=mlflow_run_id,
        crops=run_crops(cfg.out, class_names),
    )
