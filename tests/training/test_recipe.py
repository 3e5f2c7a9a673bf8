"""The default training recipe: its mechanics, not its 20-minute run (see BENCHMARKS.md)."""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from plantdx.config import resolve, to_dict
from plantdx.training.augment import GroundBank, build_augment, paste_on_ground, random_ground
from plantdx.training.config import AugmentConfig, TrainConfig
from plantdx.training.run_data import image_sizes, run_metas

ROOT = Path(__file__).resolve().parents[2]

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
    from plantdx.training.budget import plan_epochs

    cfg = TrainConfig(time_budget_min=budget, epochs=50)
    n = plan_epochs(cfg, per_epoch, overhead + reserve)
    assert 1 <= n <= 50
    if n > 1:  # one epoch is always run, even when nothing fits
        assert overhead + reserve + n * per_epoch <= budget * 60
    # ...and no more than one epoch's worth of the budget is left unused.
    if n < 50:
        assert overhead + reserve + (n + 1) * per_epoch > budget * 60


def _simulate(
    cfg: TrainConfig, times: list[float], estimate: float, start: float, reserve: float
) -> tuple[int, float]:
    """The budgeted loop of train.py on a clock: (epochs run, seconds at the end)."""
    from plantdx.training.budget import plan_epochs, replan_epochs

    planned = plan_epochs(cfg, estimate, start + reserve)
    spent, done, seen = start, 0, []
    while done < planned:
        seen.append(times[min(done, len(times) - 1)])
        spent += seen[-1]
        done += 1
        if done >= planned:
            break
        planned = replan_epochs(cfg, done, seen, spent + reserve)
    return done, spent + reserve


@pytest.mark.parametrize("estimate_error", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("pace", [20.0, 61.0, 150.0])
def test_replanning_uses_the_budget_without_overrunning(pace: float, estimate_error: float) -> None:
    cfg = TrainConfig(time_budget_min=18.0, epochs=40)
    done, end = _simulate(cfg, [pace], pace * estimate_error, start=25.0, reserve=50.0)
    assert end <= 18 * 60
    assert done == 40 or 18 * 60 - end < pace  # less than an epoch left unused


def test_replanning_follows_the_machine() -> None:
    cfg = TrainConfig(time_budget_min=18.0, epochs=40)
    # Slow while other work shares the CPU, then fast: the run grows to use the time.
    done, end = _simulate(cfg, [140, 200, 80, 70], 190, start=10, reserve=50)
    assert end <= 18 * 60 and 18 * 60 - end < 70 and done > 7
    # Fast, then three times slower from epoch 4 on: it stops early, within one slow epoch.
    done, end = _simulate(cfg, [60, 60, 60, 180], 60, start=10, reserve=50)
    assert end <= 18 * 60 + (180 - 60) and done < 16


def test_no_budget_means_the_epochs_asked_for() -> None:
    from plantdx.training.budget import plan_epochs

    for off in (None, 0.0):
        assert plan_epochs(TrainConfig(time_budget_min=off, epochs=7), 1e6, 1e6) == 7


def test_reschedule_continues_from_the_step_reached() -> None:
    import torch

    from plantdx.training.build import build_scheduler, reschedule

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
    from plantdx.training.freezing import freeze_stem

    model = create_model("efficientnet_lite0", num_classes=3, pretrained=False, image_size=64)
    norms = freeze_stem(model, "efficientnet_lite0", 3)
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
    from plantdx.training.freezing import freeze_stem

    tiny = create_model("test_tiny", num_classes=3)
    assert freeze_stem(tiny, "test_tiny", 3) == []
    assert all(p.requires_grad for p in tiny.parameters())
    lite = create_model("efficientnet_lite0", num_classes=3, pretrained=False, image_size=64)
    assert freeze_stem(lite, "efficientnet_lite0", None) == []
    assert freeze_stem(lite, "efficientnet_lite0", -1) == []
    assert all(p.requires_grad for p in lite.parameters())


def test_freeze_blocks_flag_reaches_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import plantdx.training
    from plantdx.cli import app

    seen: list[TrainConfig] = []

    def fake_train(cfg: TrainConfig, **_: Any) -> Any:
        seen.append(cfg)
        raise SystemExit(0)

    monkeypatch.setattr(plantdx.training, "train", fake_train)
    for flag, want in (([], 5), (["--freeze-blocks", "-1"], -1), (["--freeze-blocks", "3"], 3)):
        seen.clear()
        CliRunner().invoke(app, ["train", "--data", str(tmp_path), *flag])
        assert seen and seen[0].freeze_blocks == want, flag


# --------------------------------------------------------------------------------------------
# The recipe as documented


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_default_yaml_is_exactly_the_defaults() -> None:
    assert resolve(TrainConfig, ROOT / "plantdx/configs/default.yaml") == TrainConfig()


def test_plain_yaml_is_the_plain_fine_tune() -> None:
    plain = resolve(TrainConfig, ROOT / "plantdx/configs/plain.yaml")
    assert (plain.image_size, plain.epochs, plain.time_budget_min) == (192, 8, None)
    assert plain.freeze_blocks is None
    assert plain.augment.field_p == plain.augment.zoom_p == 0.0


def test_benchmarks_state_the_defaults() -> None:
    """Every row of the recipe table in BENCHMARKS.md matches TrainConfig()."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    section = text.split("### Accuracy", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `([a-z_.-]+)` \| `([^`]*)` \|", section, flags=re.M)
    assert len(rows) >= 10, "the recipe table in BENCHMARKS.md (### Accuracy) is missing"
    defaults = _flat(to_dict(TrainConfig()))
    for key, value in rows:
        assert key in defaults, f"BENCHMARKS.md names an unknown option {key}"
        assert yaml.safe_load(value) == defaults[key], f"{key}: BENCHMARKS.md says {value}"


def test_evaluation_at_a_larger_size_is_budgeted_at_its_pixels() -> None:
    from plantdx.training.budget import eval_cost_scale

    assert eval_cost_scale(TrainConfig(image_size=160, eval_scale=1.0)) == 1.0
    assert eval_cost_scale(TrainConfig(image_size=160)) == (192 / 160) ** 2
    assert eval_cost_scale(TrainConfig(image_size=160, eval_image_size=224)) == (224 / 160) ** 2
    # image_size null: the architecture's own size is the training size (Lite0: 224).
    lite0 = TrainConfig(model="efficientnet_lite0", image_size=None, eval_image_size=280)
    assert eval_cost_scale(lite0) == (280 / 224) ** 2
    # An architecture built for one size is evaluated at it.
    assert eval_cost_scale(TrainConfig(model="vit", image_size=64)) == 1.0


def test_the_evaluation_size_is_eval_scale_times_the_training_size() -> None:
    assert image_sizes(TrainConfig()) == (160, 192)
    assert image_sizes(TrainConfig(image_size=64)) == (64, 77)
    assert image_sizes(TrainConfig(image_size=64, eval_image_size=96)) == (64, 96)
    assert image_sizes(TrainConfig(model="vit", image_size=64)) == (64, 64)
    train_meta, meta = run_metas(TrainConfig())
    assert (train_meta.image_size, meta.image_size) == (160, 192)
    assert dataclasses.replace(meta, image_size=160) == train_meta


def test_zoom_out_yaml_is_the_default_before_zoom_in_training() -> None:
    old = resolve(TrainConfig, ROOT / "plantdx/configs/zoom-out.yaml")
    changed = {
        k: v for k, v in _flat(to_dict(old)).items() if v != _flat(to_dict(TrainConfig()))[k]
    }
    assert changed == {
        "eval_scale": 1.0,
        "augment.zoom_p": 0.3,
        "augment.zoom_min": 0.75,
        "augment.zoom_max": 1.15,
        "augment.shift": 0.08,
    }
    assert image_sizes(old) == (160, 160)


def test_a_run_from_before_eval_scale_resumes_at_its_own_evaluation_size(tmp_path: Path) -> None:
    from plantdx.config import save_yaml
    from plantdx.training.resume import resume_config

    old = {k: v for k, v in to_dict(TrainConfig(image_size=64)).items() if k != "eval_scale"}
    for name, stored in (("old", old), ("new", to_dict(TrainConfig(image_size=64)))):
        run = tmp_path / name
        run.mkdir()
        save_yaml(stored, run / "config.yaml")
        (run / "last.pt").write_bytes(b"")
        cfg = resume_config(run)
        assert image_sizes(cfg) == ((64, 64) if name == "old" else (64, 77)), name
