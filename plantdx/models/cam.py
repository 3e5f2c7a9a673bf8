"""Exact class-activation maps for the architectures whose head is global average pooling + one
linear layer.

For such a head, logit_c = mean_hw(F(h, w)) · W_c + b_c = mean_hw(W_c · F(h, w) + b_c), so
CAM_c(h, w) = W_c · F(h, w) + b_c is an exact spatial decomposition of logit c (its mean is the
logit). `CamModel` returns (logits, cams): the logits computed exactly as the plain model
computes them, and the maps of every class at the last feature-map resolution, computed as a
1×1 convolution with the head's weights (exportable to ONNX).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from plantdx.exceptions import ExplainUnavailableError

Split = tuple[
    Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor], nn.Linear
]


def _lite(m: Any) -> Split:
    """efficientnet_lite_pytorch: extract_features → _avg_pooling → _dropout → _fc."""

    def head(f: torch.Tensor) -> torch.Tensor:
        x = m._avg_pooling(f).flatten(1)
        return m._fc(m._dropout(x))

    return m.extract_features, head, m._fc


def _resnet(m: Any) -> Split:
    """torchvision ResNet: conv1 … layer4 → avgpool → fc."""

    def features(x: torch.Tensor) -> torch.Tensor:
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        return m.layer4(m.layer3(m.layer2(m.layer1(x))))

    def head(f: torch.Tensor) -> torch.Tensor:
        return m.fc(torch.flatten(m.avgpool(f), 1))

    return features, head, m.fc


def _efficientnet_b0(m: Any) -> Split:
    """torchvision EfficientNet: features → avgpool → classifier[Dropout, Linear]."""

    def head(f: torch.Tensor) -> torch.Tensor:
        return m.classifier(torch.flatten(m.avgpool(f), 1))

    return m.features, head, m.classifier[-1]


def _tiny(m: Any) -> Split:
    """TinyNet: features[:-2] → AdaptiveAvgPool2d(1) → Flatten → classifier."""
    body = m.features[:-2]
    pool, flat = m.features[-2], m.features[-1]

    def head(f: torch.Tensor) -> torch.Tensor:
        return m.classifier(flat(pool(f)))

    return body, head, m.classifier


_SPLITS: dict[str, Callable[[Any], Split]] = {
    "efficientnet_lite0": _lite,
    "efficientnet_lite1": _lite,
    "efficientnet_lite2": _lite,
    "resnet50": _resnet,
    "efficientnet_b0": _efficientnet_b0,
    "test_tiny": _tiny,
}


def cam_supported(name: str) -> bool:
    """Whether `create_model(name, ...)` builds a network with an exact CAM."""
    return name in _SPLITS


def require_cam(name: str) -> None:
    if not cam_supported(name):
        raise ExplainUnavailableError(
            f"class-activation maps are not available for architecture {name}: its head is "
            "not global pooling + one linear layer"
        )


class CamModel(nn.Module):
    """forward(x) → (logits, cams): logits [B, C] exactly as the plain model computes them,
    cams FP32 [B, C, h, w] at the last feature map's resolution."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        require_cam(name)
        self.model = model
        self.arch = name
        self._features, self._head, fc = _SPLITS[name](model)
        self.fc = fc
        # The pooling must be global: checked here, not found out as wrong maps later.
        pool = _global_pool(model, name)
        if pool is not None and pool.output_size not in (1, (1, 1)):
            raise ExplainUnavailableError(
                f"class-activation maps are not available for architecture {name}: its pool "
                f"is not global (output size {pool.output_size})"
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self._features(x)
        logits = self._head(f)
        weight = self.fc.weight[:, :, None, None]
        cams = F.conv2d(f, weight, self.fc.bias)
        return logits, cams


def _global_pool(model: nn.Module, name: str) -> nn.AdaptiveAvgPool2d | None:
    attr = {"efficientnet_lite": "_avg_pooling", "test_tiny": "features.6"}
    path = next((v for k, v in attr.items() if name.startswith(k)), "avgpool")
    pool = model.get_submodule(path)
    return pool if isinstance(pool, nn.AdaptiveAvgPool2d) else None


def cam_model(model: nn.Module, name: str) -> CamModel:
    """The CAM wrapper of a model built by `plantdx.models.create_model(name, ...)`; raises
    ExplainUnavailableError for architectures without an exact CAM."""
    return CamModel(model, name)
