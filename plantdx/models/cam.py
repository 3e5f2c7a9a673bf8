"""Exact class-activation maps for the architectures whose head is global average pooling + one
linear layer.

For such a head, logit_c = mean_hw(F(h, w)) · W_c + b_c = mean_hw(W_c · F(h, w) + b_c), so
CAM_c(h, w) = W_c · F(h, w) + b_c is an exact spatial decomposition of logit c (its mean is the
logit). `CamModel` returns (logits, cams): the logits computed exactly as the plain model
computes them, and the maps of every class at the last feature-map resolution, computed as a
1×1 convolution with the head's weights (exportable to ONNX). Each architecture registers how
its network splits into features and head on its ModelSpec (`cam`, a `CamSplit`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from plantdx.exceptions import ExplainUnavailableError, ModelNotFoundError

from .registry import CamSplit, get_spec


def _split(name: str) -> Callable[[nn.Module], CamSplit] | None:
    """The architecture's registered CAM split (`ModelSpec.cam`); None for an unknown name."""
    try:
        return get_spec(name).cam
    except ModelNotFoundError:
        return None


def cam_supported(name: str) -> bool:
    """Whether `create_model(name, ...)` builds a network with an exact CAM."""
    return _split(name) is not None


def require_cam(name: str) -> Callable[[nn.Module], CamSplit]:
    split = _split(name)
    if split is None:
        raise ExplainUnavailableError(
            f"class-activation maps are not available for architecture {name}: its head is "
            "not global pooling + one linear layer"
        )
    return split


class CamModel(nn.Module):
    """forward(x) → (logits, cams): logits [B, C] exactly as the plain model computes them,
    cams FP32 [B, C, h, w] at the last feature map's resolution."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        split = require_cam(name)(model)
        self.model = model
        self.arch = name
        self._features, self._head = split.features, split.head
        self.fc = split.linear
        # The pooling must be global: checked here, not found out as wrong maps later.
        pool = split.pool
        if isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size not in (1, (1, 1)):
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


def cam_model(model: nn.Module, name: str) -> CamModel:
    """The CAM wrapper of a model built by `plantdx.models.create_model(name, ...)`; raises
    ExplainUnavailableError for architectures without an exact CAM."""
    return CamModel(model, name)
