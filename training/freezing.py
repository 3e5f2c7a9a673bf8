"""What a run keeps frozen: the backbone under --freeze-backbone (until --unfreeze-after) and the
stem and first `freeze_blocks` blocks of an architecture that names them (`ModelSpec.stem`)."""

from __future__ import annotations

from torch import nn

from plantdx.models import get_spec, head_module

from .config import TrainConfig


def backbone_frozen(cfg: TrainConfig, epoch: int) -> bool:
    """Head-only training under --freeze-backbone, until epoch `unfreeze_after` is done."""
    if not (cfg.freeze_backbone or cfg.unfreeze_after is not None):
        return False
    return cfg.unfreeze_after is None or epoch <= cfg.unfreeze_after


def set_backbone_frozen(model: nn.Module, name: str, frozen: bool) -> list[nn.Module]:
    """Freeze (or free) all but the head; returns the norm layers that must stay in eval mode."""
    head = head_module(model, name)
    head_params = {id(p) for p in head.parameters()}
    for p in model.parameters():
        p.requires_grad_(not frozen or id(p) in head_params)
    if not frozen:
        return []
    in_head = {id(m) for m in head.modules()}
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in in_head
    ]


def freeze_stem(model: nn.Module, name: str, blocks: int | None) -> list[nn.Module]:
    """Freeze the stem and the first `blocks` blocks of architecture `name` (`ModelSpec.stem`:
    EfficientNet-Lite's `_conv_stem`, `_bn0` and `_blocks`); returns their norm layers, which
    must stay in eval mode. Architectures without a stem, or `blocks` None or negative, are
    left alone."""
    stem = None if blocks is None or blocks < 0 else get_spec(name).stem
    if stem is None or blocks is None:
        return []
    norms: list[nn.Module] = []
    for part in stem(model, blocks):
        for p in part.parameters():
            p.requires_grad_(False)
        norms += [m for m in part.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return norms


def frozen_for_epoch(model: nn.Module, cfg: TrainConfig, epoch: int) -> list[nn.Module]:
    """Freeze what `cfg` keeps frozen in `epoch` (the backbone under --freeze-backbone until
    --unfreeze-after, and the stem and first `freeze_blocks` blocks); returns the norm layers
    that must stay in eval mode."""
    norms = set_backbone_frozen(model, cfg.model, backbone_frozen(cfg, epoch))
    return norms + freeze_stem(model, cfg.model, cfg.freeze_blocks)
