"""torchvision classifiers (resnet50, efficientnet_b0, mobilenet_v3_*, vgg16): pretrained
weights only from the local torch hub cache or --weights."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plantdx.exceptions import ModelNotFoundError

from .registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CamSplit,
    ModelSpec,
    load_state,
    register_model,
    weights_file,
)


def _resnet_cam(m: Any) -> CamSplit:
    """torchvision ResNet: conv1 … layer4 → avgpool → fc."""

    def features(x: torch.Tensor) -> torch.Tensor:
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))

    def head(f: torch.Tensor) -> torch.Tensor:
        return m.fc(torch.flatten(m.avgpool(f), 1))

    return CamSplit(features, head, m.fc, m.avgpool)


def _efficientnet_cam(m: Any) -> CamSplit:
    """torchvision EfficientNet: features → avgpool → classifier[Dropout, Linear]."""

    def head(f: torch.Tensor) -> torch.Tensor:
        return m.classifier(torch.flatten(m.avgpool(f), 1))

    return CamSplit(m.features, head, m.classifier[-1], m.avgpool)


# name → (torchvision weights enum, head attribute, class-activation-map split or None)
_TORCHVISION: dict[str, tuple[str, str, Callable[[Any], CamSplit] | None]] = {
    "resnet50": ("ResNet50_Weights", "fc", _resnet_cam),
    "efficientnet_b0": ("EfficientNet_B0_Weights", "classifier", _efficientnet_cam),
    "mobilenet_v3_large": ("MobileNet_V3_Large_Weights", "classifier", None),
    "mobilenet_v3_small": ("MobileNet_V3_Small_Weights", "classifier", None),
    "vgg16": ("VGG16_Weights", "classifier", None),
}


def _last_linear(model: nn.Module, attr: str) -> tuple[nn.Module, str]:
    """The module that owns the final nn.Linear of the head, and that Linear's name in it."""
    head = getattr(model, attr)
    if isinstance(head, nn.Linear):
        return model, attr
    assert isinstance(head, nn.Sequential)
    last = str(len(head) - 1)
    assert isinstance(head[-1], nn.Linear)
    return head, last


def _replace_head(model: nn.Module, attr: str, num_classes: int) -> None:
    owner, name = _last_linear(model, attr)
    old = getattr(owner, name)
    setattr(owner, name, nn.Linear(old.in_features, num_classes))


def torch_hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def hub_weights_path(name: str) -> Path:
    """Where training looks for `name`'s ImageNet weights: the torch hub cache, under the file
    name of torchvision's weights enum."""
    import torchvision

    enum = getattr(torchvision.models, _TORCHVISION[name][0]).DEFAULT
    return torch_hub_checkpoint_dir() / os.path.basename(enum.url)


def import_torchvision_weights(name: str, source: str | Path) -> Path:
    """Check that `source` holds `name`'s weights (loaded into the 1000-class network, strict
    except the head), then copy it where training looks. Nothing is copied when it does not."""
    import shutil

    import torchvision

    path = weights_file(source)
    model = torchvision.models.get_model(name, weights=None, num_classes=1000)
    _load_torchvision_weights(model, name, path, _TORCHVISION[name][1])
    dest = hub_weights_path(name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    shutil.copyfile(path, partial)
    partial.replace(dest)
    return dest


def _load_torchvision_weights(model: nn.Module, name: str, path: Path, head_attr: str) -> None:
    """ImageNet (or any same-architecture) weights; a head of another size is left out."""
    state = load_state(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelNotFoundError(f"{path} does not hold a state dict for {name}")
    own = model.state_dict()
    head_prefix = f"{head_attr}."
    misfit = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    state = {k: v for k, v in state.items() if k not in misfit}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(head_prefix)]
    misfit = [k for k in misfit if not k.startswith(head_prefix)]  # a head of another size is fine
    if missing or misfit or result.unexpected_keys:
        raise ModelNotFoundError(
            f"{path} does not hold {name} weights (missing {missing[:3]}, other shapes "
            f"{misfit[:3]}, unexpected {result.unexpected_keys[:3]})"
        )


def _torchvision_builder(name: str) -> Callable[..., nn.Module]:
    import torchvision

    head_attr = _TORCHVISION[name][1]

    def build(*, num_classes: int, pretrained: bool, image_size: int, weights: Any) -> nn.Module:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        if pretrained or weights:
            path = weights_file(weights) if weights else hub_weights_path(name)
            if not path.is_file():
                raise ModelNotFoundError(
                    f"no ImageNet weights for {name}: looked for {path} (torch hub cache, "
                    f"TORCH_HOME={os.environ.get('TORCH_HOME', '~/.cache/torch')}); "
                    f"put them there with `plantdx weights import FILE --model {name}`, or pass "
                    "--weights FILE. plantdx never downloads at training time and never "
                    "silently trains from scratch."
                )
            _load_torchvision_weights(model, name, path, head_attr)
        return model

    return build


for _name, (_, _head, _cam) in _TORCHVISION.items():
    register_model(
        ModelSpec(
            _name,
            _torchvision_builder(_name),
            default_image_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            description=f"torchvision {_name}",
            head=_head,
            import_weights=functools.partial(import_torchvision_weights, _name),
            cam=_cam,
        )
    )
