"""`plantdx bench train`: the training loader against preloaded tensors, with the model built
as `plantdx train` builds it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from bench_helpers import run_plantdx

from plantdx.training import TrainConfig


def test_bench_train_reports_both_rates_and_ratio(tmp_path: Path, synth_dir: Path) -> None:
    out = tmp_path / "bench.json"
    r = run_plantdx(
        "bench",
        "train",
        "--data",
        str(synth_dir),
        "--model",
        "test_tiny",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--batches",
        "3",
        "--repeats",
        "1",
        "--json",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    err = r.stderr
    result = json.loads(out.read_text())
    assert result == json.loads(r.stdout)
    assert result["real_loader_img_per_s"] > 0 and result["preloaded_img_per_s"] > 0
    assert result["ratio"] == pytest.approx(
        result["real_loader_img_per_s"] / result["preloaded_img_per_s"]
    )
    assert result["meets_target"] == (result["ratio"] >= 0.85)
    assert "ratio" in err and "preloaded" in err


def test_bench_train_builds_the_model_as_training_does(
    synth_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default `plantdx train`: 160 px, channels_last, stem and first 3 blocks frozen."""
    import plantdx.bench.train_loader as bench_module
    from plantdx.bench.train_loader import BenchTrainConfig, bench_train
    from plantdx.training.engine import EpochStats

    calls: list[tuple[torch.nn.Module, dict[str, Any]]] = []

    def no_training(model: torch.nn.Module, *args: Any, **kwargs: Any) -> EpochStats:
        calls.append((model, kwargs))  # the model as it would be trained; no time spent
        return EpochStats(0.0, 0.0, 32, 1.0)

    monkeypatch.setattr(bench_module, "train_one_epoch", no_training)
    defaults = TrainConfig()
    result = bench_train(
        BenchTrainConfig(batches=1, repeats=1, train=TrainConfig(data=str(synth_dir)))
    )
    assert result["model"] == defaults.model == "efficientnet_lite0"
    assert result["image_size"] == defaults.image_size == 160
    assert result["freeze_blocks"] == defaults.freeze_blocks == 5
    assert result["channels_last"] is True and result["freeze_backbone"] is False
    model, kwargs = calls[0]
    assert all(m is model for m, _ in calls)
    assert kwargs["channels_last"] is True
    blocks = model._blocks  # type: ignore[union-attr]
    frozen_params = [*model._conv_stem.parameters(), *blocks[:5].parameters()]  # type: ignore[union-attr]
    assert not any(p.requires_grad for p in frozen_params)
    assert all(p.requires_grad for p in blocks[5:].parameters())
    norms = [m for m in blocks[:5].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {id(m) for m in norms} <= {id(m) for m in kwargs["frozen"]}  # kept in eval mode
    stem = model._conv_stem.weight  # type: ignore[union-attr]
    assert stem.is_contiguous(memory_format=torch.channels_last)
    trainable = result["trainable_params"]
    assert 0 < trainable < sum(p.numel() for p in model.parameters())
    # The flags still override: every layer trains with freeze_blocks -1.
    calls.clear()
    every = bench_train(
        BenchTrainConfig(
            batches=1, repeats=1, train=TrainConfig(data=str(synth_dir), freeze_blocks=-1)
        )
    )
    assert every["trainable_params"] == sum(p.numel() for p in calls[0][0].parameters())
    assert calls[0][1]["frozen"] == []
