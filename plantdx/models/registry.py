"""The model registry: every architecture plantdx can train, export and serve.

Each family module (tiny, efficientnet_lite, torchvision_models, vit) registers a ModelSpec
here, which holds everything plantdx knows about the architecture: how to build the network,
its default image size and the normalisation its weights expect, its head, how to check and
import its ImageNet weights, its exact class-activation-map split and the early layers
`--freeze-blocks` freezes. Nothing elsewhere keys on an architecture's name. This module
imports no family; `plantdx.models` imports them all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plantdx.exceptions import ModelNotFoundError
from plantdx.preprocessing import PreprocessMeta

from .pooling import exportable_pooling

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class CamSplit:
    """A network whose head is global average pooling + one linear layer, split for exact
    class-activation maps (`plantdx.models.cam`): `head(features(x))` is the network's own
    forward pass and `linear` the head's last layer. `pool` is the head's pooling module,
    checked to be global before any map is computed."""

    features: Forward
    head: Forward
    linear: nn.Linear
    pool: nn.Module | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    default_image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    description: str = ""
    # Extra keyword arguments the builder must get again when a checkpoint is rebuilt.
    returns_kwargs: bool = False
    # Dotted attribute path of the classification head: what trains under --freeze-backbone.
    head: str = "classifier"
    # Checks a --weights value before any work (default: a readable file, `weights_file`).
    weights_check: Callable[[str | Path], object] | None = None
    # `plantdx weights import SOURCE`: checks SOURCE and copies it where the builder looks for
    # ImageNet weights; returns the destination. None: the architecture has none to import.
    import_weights: Callable[[str | Path], Path] | None = None
    # The exact class-activation-map split of a built network; None: no exact maps (the head
    # is not global pooling + one linear layer).
    cam: Callable[[nn.Module], CamSplit] | None = None
    # The stem and first `k` blocks of a built network (what --freeze-blocks k freezes); None:
    # --freeze-blocks leaves the architecture alone.
    stem: Callable[[nn.Module, int], list[nn.Module]] | None = None
    # The network takes any input size (its head pools globally): it may be trained at one
    # size and evaluated at another (`eval_scale`). False: built for one size (ViT).
    any_input_size: bool = True

    def preprocessing(self, image_size: int | None = None) -> PreprocessMeta:
        return PreprocessMeta(
            image_size=image_size or self.default_image_size,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
        )


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelNotFoundError(
            f"unknown model {name!r}; available: {', '.join(list_models())}"
        ) from None


def create_model(
    name: str,
    *,
    num_classes: int,
    pretrained: bool = False,
    image_size: int | None = None,
    weights: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model with a fresh `num_classes` head.

    With `pretrained`, ImageNet weights are loaded from an offline location (or `weights`);
    when none can be found this raises ModelNotFoundError instead of training from scratch.
    """
    spec = get_spec(name)
    size = image_size or spec.default_image_size
    model = spec.builder(
        num_classes=num_classes,
        pretrained=pretrained,
        image_size=size,
        weights=weights,
        **kwargs,
    )
    return exportable_pooling(model, size)


def check_weights(name: str, weights: str | Path | None) -> None:
    """Fail at once, naming the path, when `weights` for model `name` is missing or unreadable.

    Training calls this before it decodes the dataset; the builders check the same again.
    """
    spec = get_spec(name)
    if weights is None or str(weights) == "":
        return
    (spec.weights_check or weights_file)(weights)


def weights_file(weights: str | Path) -> Path:
    """A --weights file that exists and can be read."""
    path = Path(weights).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"weights file {path} does not exist")
    if not path.is_file():
        raise ModelNotFoundError(f"weights file {path} is not a file")
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ModelNotFoundError(f"weights file {path} cannot be read: {exc}") from exc
    return path


def load_state(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelNotFoundError(f"{path} is not a readable PyTorch weights file: {exc}") from exc


def head_module(model: nn.Module, name: str) -> nn.Module:
    """The classification head of a model built by `create_model(name, ...)`."""
    path = get_spec(name).head
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise ModelNotFoundError(f"model {name!r} has no head module {path!r}") from exc


def model_kwargs_for_checkpoint(model: nn.Module) -> dict[str, Any]:
    """Builder arguments a checkpoint must store to rebuild `model` without its weights source."""
    extra = getattr(model, "plantdx_kwargs", None)
    return dict(extra) if extra else {}
