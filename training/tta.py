"""Test-time flips, measured: a wrapper that runs the model on the mirror image (left-right).
Cross-fitting predicts every held-out field photo both ways and averages the two logits, so
`metrics.json` says what the flip would buy on field photos before anyone ships it (the served
graph would have to do the same: evaluation and serving stay one)."""

from __future__ import annotations

import torch
from torch import nn


class Mirrored(nn.Module):
    """logits(x) = net(x mirrored left-right)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(torch.flip(x, dims=[3]))
        return out
