"""The default training recipe: its mechanics, not its 20-minute run (see BENCHMARKS.md)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plantdx.training.config import AugmentConfig, TrainConfig
from plantdx.training.data import GroundBank, build_augment, paste_on_ground, random_ground

ROOT = Path(__file__).resolve().parent.parent

EVERYTHING_ON = AugmentConfig(
    zoom_p=1.0,
    zoom_min=0.7,
    zoom_max=1.2,
    shift=0.1,
    field_p=1.0,
    color_p=1.0,
    illumination_p=1.0,
    blur_p=1.0,
    noise_p=1.0,
)


def _photo(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((size, size)), dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# Augmentation


@pytest.mark.parametrize("cfg", [AugmentConfig(), EVERYTHING_ON], ids=["defaults", "all-on"])
def test_augment_keeps_shape_and_dtype_and_is_seeded(
    cfg: AugmentConfig, mini_photos: list[Path]
) -> None:
    augment = build_augment(cfg)
    for path in mini_photos[:6]:
        pixels = _photo(path, 96)
        before = pixels.copy()
        out = augment(pixels, seed=11)
        assert out.shape == (96, 96, 3) and out.dtype == np.uint8
        assert np.array_equal(pixels, before), "the cached image must not be modified"
        assert np.array_equal(out, augment(pixels, seed=11))
    outs = [augment(_photo(mini_photos[0], 96), seed=s) for s in range(6)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])


def test_field_paste_puts_the_leaf_on_new_ground(mini_photos: list[Path]) -> None:
    pixels = _photo(mini_photos[0], 128)
    rng = np.random.default_rng(0)
    ground = random_ground(rng, 128)
    out = paste_on_ground(pixels, ground, rng, leaf_scale_min=0.6)
    assert out.shape == pixels.shape and out.dtype == np.uint8
    # The corners were lab board; now they are ground.
    corner = (slice(0, 10), slice(0, 10))
    assert np.abs(out[corner].astype(float) - ground[corner]).mean() < 20
    assert np.abs(out[corner].astype(float) - pixels[corner]).mean() > 5


def test_field_paste_passes_through_what_it_cannot_segment() -> None:
    flat = np.full((64, 64, 3), 128, np.uint8)
    rng = np.random.default_rng(0)
    out = paste_on_ground(flat, random_ground(rng, 64), rng)
    assert np.array_equal(out, flat)


def test_ground_bank_is_fixed_per_size() -> None:
    a, b = GroundBank(n=4), GroundBank(n=4)
    x = a.draw(np.random.default_rng(5), 48)
    y = b.draw(np.random.default_rng(5), 48)
    assert x.shape == (48, 48, 3) and x.dtype == np.float32
    assert np.array_equal(x, y)
    assert len(a.bank[48]) == 4


# --------------------------------------------------------------------------------------------
# Time-budget planning


@pytest.mark.parametrize(
    ("budget", "per_epoch", "overhead", "reserve"),
    list(itertools.product([1.0, 5.0, 18.0], [7.0, 45.0, 130.0], [0.0, 40.0, 300.0], [0.0, 60.0])),
)
def test_planned_epochs_fit_the_budget(
    budget: float, per_epoch: float, overhead: float, reserve: float
) -> None:
    from plantdx.training.train import plan_epochs

    cfg = TrainConfig(time_budget_min=budget, epochs=50)
    n = plan_epochs(cfg, per_epoch, overhead + reserve)
    assert 1 <= n <= 50
    if n > 1:  # one epoch is always run, even when nothing fits
        assert overhead + reserve + n * per_epoch <= budget * 60
    # ...and no more than one epoch's worth of the budget is left unused.
    if n < 50:
        assert overhead + reserve + (n + 1) * per_epoch > budget * 60


def test_no_budget_means_the_epochs_asked_for() -> None:
    from plantdx.training.train import plan_epochs

    for off in (None, 0.0):
        assert plan_epochs(TrainConfig(time_budget_min=off, epochs=7), 1e6, 1e6) == 7


def test_reschedule_continues_from_the_step_reached() -> None:
    import torch

    from plantdx.training.train import build_scheduler, reschedule

    cfg = TrainConfig(lr=1.0, warmup_epochs=0.5, scheduler="cosine")
    weight = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([weight], lr=cfg.lr)
    sched = build_scheduler(opt, cfg, steps_per_epoch=10, epochs=4)
    for _ in range(10):  # one epoch
        opt.step()
        sched.step()
    sched = reschedule(sched, opt, cfg, steps_per_epoch=10, epochs=8)
    expected = 0.5 * (1 + np.cos(np.pi * (10 - 5) / (80 - 5)))
    assert sched.last_epoch == 10
    assert opt.param_groups[0]["lr"] == pytest.approx(expected)
    for _ in range(70):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)


# --------------------------------------------------------------------------------------------
# Freezing the stem


def test_freeze_stem_freezes_the_early_blocks_only() -> None:
    import torch

    from plantdx.models import create_model
    from plantdx.training.train import freeze_stem

    model = create_model("efficientnet_lite0", num_classes=3, pretrained=False, image_size=64)
    norms = freeze_stem(model, 3)
    frozen = [model._conv_stem, model._bn0, *model._blocks[:3]]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in model._blocks[3].parameters())
    assert all(p.requires_grad for p in model._fc.parameters())
    assert model._bn0 in norms and len(norms) == 1 + 2 + 3 + 3
    model.train()
    for m in norms:
        m.eval()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert (
        model._conv_stem.weight.grad is None
        and model._blocks[3]._project_conv.weight.grad is not None
    )


def test_freeze_stem_leaves_other_models_alone() -> None:
    from plantdx.models import create_model
    from plantdx.training.train import freeze_stem

    tiny = create_model("test_tiny", num_classes=3)
    assert freeze_stem(tiny, 3) == []
    assert all(p.requires_grad for p in tiny.parameters())
    lite = create_model("efficientnet_lite0", num_classes=3, pretrained=False, image_size=64)
    assert freeze_stem(lite, None) == []
