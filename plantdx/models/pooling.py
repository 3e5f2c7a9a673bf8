"""Adaptive average pooling that exports to ONNX at any input size.

`create_model` passes every network through `exportable_pooling`, which swaps the adaptive
pools torch.onnx cannot export at the chosen image size for an exact matrix form.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def adaptive_pool_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """The out_size × in_size averaging matrix of adaptive average pooling along one axis:
    row i averages PyTorch's bin [floor(i·in/out), ceil((i+1)·in/out))."""
    m = torch.zeros(out_size, in_size)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -(-((i + 1) * in_size) // out_size)
        m[i, start:end] = 1.0 / (end - start)
    return m


class MatrixAdaptiveAvgPool2d(nn.Module):
    """nn.AdaptiveAvgPool2d for one input size, as out = P_h · x · P_wᵀ (it is separable).

    The same numbers, but exportable to ONNX when the output size does not divide the input
    size (torch.onnx refuses adaptive pooling there, e.g. vgg16's 7×7 pool over the 5×5 map of
    a 160 px image). The matrices are non-persistent buffers: state dicts do not change. Any
    other input size falls back to adaptive pooling.
    """

    rows: torch.Tensor
    cols: torch.Tensor

    def __init__(self, in_size: tuple[int, int], out_size: tuple[int, int]) -> None:
        super().__init__()
        self.in_size = in_size
        self.out_size = out_size
        rows = adaptive_pool_matrix(in_size[0], out_size[0])
        cols = adaptive_pool_matrix(in_size[1], out_size[1]).t().contiguous()
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.in_size:
            return nn.functional.adaptive_avg_pool2d(x, self.out_size)
        return torch.matmul(torch.matmul(self.rows, x), self.cols)

    def extra_repr(self) -> str:
        return f"in_size={self.in_size}, output_size={self.out_size}"


def _pair(size: Any, like: tuple[int, int]) -> tuple[int, int]:
    """An adaptive pool's output_size as two ints (None: the input size on that axis)."""
    h, w = (size, size) if isinstance(size, int) or size is None else tuple(size)
    return (like[0] if h is None else int(h), like[1] if w is None else int(w))


def exportable_pooling(model: nn.Module, image_size: int) -> nn.Module:
    """Replace, in place, every nn.AdaptiveAvgPool2d that torch.onnx cannot export at this
    image size (its output size does not divide its input size) by the exact
    MatrixAdaptiveAvgPool2d. Input sizes come from one forward pass of a blank image, run only
    when the model has such a pool that is not a global (1×1) one."""
    pools = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size not in (1, (1, 1))
    }
    if not pools:
        return model
    seen: dict[str, tuple[int, int]] = {}

    def record(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            seen.setdefault(name, (int(args[0].shape[-2]), int(args[0].shape[-1])))

        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in pools.items()]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(training)
    for name, in_size in seen.items():
        out = _pair(pools[name].output_size, in_size)
        if in_size[0] % out[0] == 0 and in_size[1] % out[1] == 0:
            continue  # torch.onnx exports it as a plain AvgPool
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, MatrixAdaptiveAvgPool2d(in_size, out))
    return model
