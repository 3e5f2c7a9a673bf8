"""`plantdx weights import`: put an architecture's ImageNet weights where training finds them,
after checking that they really are that architecture's weights (`ModelSpec.import_weights`)."""

from __future__ import annotations

from pathlib import Path

from plantdx.exceptions import ConfigError

from .registry import get_spec


def import_weights(source: str | Path, model: str) -> Path:
    """Check `source` against `model` and copy it to the place `create_model(model,
    pretrained=True)` reads; the destination. Refuses, copying nothing, when the weights do
    not load into the architecture (strict except the classification head)."""
    spec = get_spec(model)  # an unknown name fails with the list of names
    if spec.import_weights is None:
        raise ConfigError(f"{model} has no ImageNet weights to import")
    return spec.import_weights(source)
