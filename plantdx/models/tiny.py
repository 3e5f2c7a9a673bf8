"""test_tiny: a few thousand parameters, for tests that need a real but fast network."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from plantdx.exceptions import ModelNotFoundError

from .registry import IMAGENET_MEAN, IMAGENET_STD, CamSplit, ModelSpec, register_model


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
    if pretrained or weights:
        raise ModelNotFoundError("test_tiny has no pretrained weights; train it from scratch")
    model = TinyNet(num_classes, width=width)
    model.plantdx_kwargs = {"width": width}  # type: ignore[assignment]
    return model


def _cam(m: Any) -> CamSplit:
    """TinyNet: features[:-2] → AdaptiveAvgPool2d(1) → Flatten → classifier."""
    body = m.features[:-2]
    pool, flat = m.features[-2], m.features[-1]

    def head(f: torch.Tensor) -> torch.Tensor:
        return m.classifier(flat(pool(f)))

    return CamSplit(body, head, m.classifier, pool)


register_model(
    ModelSpec(
        "test_tiny",
        _build_tiny,
        default_image_size=64,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        description="tiny random CNN for tests",
        cam=_cam,
    )
)
