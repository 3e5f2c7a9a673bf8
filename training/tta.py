"""Test-time flips, measured: a wrapper whose logits are the mean of the model's logits on the
image and on its mirror image (left-right). Cross-fitting predicts every held-out field photo
both ways, so `metrics.json` says what the flip would buy on field photos before anyone ships
it (the served graph would have to hold the same wrapper: evaluation and serving stay one)."""

from __future__ import annotations

import torch
from torch import nn


class HFlipMean(nn.Module):
    """logits(x) = (net(x) + net(x mirrored left-right)) / 2."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = (self.net(x) + self.net(torch.flip(x, dims=[3]))) / 2
        return out
