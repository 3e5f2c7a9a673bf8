"""Cross-fitting the field photos: folds, which sources, the continuations' draws, and a whole
run whose decision rule is fitted on out-of-fold predictions of every field photo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from plantdx.checkpoint import load_checkpoint
from plantdx.data import scan_sources
from plantdx.exceptions import ConfigError
from plantdx.training.crossfit import continuation_weights
from plantdx.training.crossfit_data import CrossfitConfig, assign_folds, field_sources, move_to_cv
from plantdx.training.predictions import load_predictions

from helpers.common import train_tiny


def _folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            base = rng.integers(0, 255, 3)
            pixels = np.clip(base + rng.integers(-40, 40, (48, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(d / f"{name}_{i}.png")
    return root


def _domains(path: Path, rows: list[tuple[Path, str]]) -> Path:
    lines = ["path\tdomain\tscore"] + [f"{p.resolve()}\t{d}\t0.5" for p, d in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_folds_are_stratified_deterministic_and_cover_every_photo(tmp_path: Path) -> None:
    folder = scan_sources([_folder(tmp_path / "f", {"a": 13, "b": 8, "c": 3})])
    folds = assign_folds(folder.samples, 4, seed=1)
    assert set(folds) == {s.path for s in folder.samples}
    assert folds == assign_folds(folder.samples, 4, seed=1)
    assert folds != assign_folds(folder.samples, 4, seed=2)
    for label, n in ((0, 13), (1, 8)):
        per_fold = np.bincount([folds[s.path] for s in folder.samples if s.label == label], None, 4)
        assert per_fold.sum() == n and per_fold.max() - per_fold.min() <= 1


def test_field_sources_come_from_the_audit_or_are_named(tmp_path: Path) -> None:
    lab = _folder(tmp_path / "lab", {"a": 6, "b": 6})
    field = _folder(tmp_path / "field", {"a": 5, "b": 5}, seed=1)
    folder = scan_sources([lab, field])
    cfg = CrossfitConfig()
    assert field_sources(folder, cfg, None)[0] == []
    rows = [(s.path, "field" if s.source == 1 else "lab") for s in folder.samples]
    # One field source photo called lab-style does not change the majority.
    rows[-1] = (rows[-1][0], "lab")
    picked, how = field_sources(folder, cfg, str(_domains(tmp_path / "d.tsv", rows)))
    assert picked == [1] and "d.tsv" in how
    assert field_sources(folder, CrossfitConfig(sources=["lab"]), None)[0] == [0]
    with pytest.raises(ConfigError, match="names no --data source"):
        field_sources(folder, CrossfitConfig(sources=["nope"]), None)


def test_move_to_cv_takes_every_photo_of_the_field_sources_out_of_the_split(
    tmp_path: Path,
) -> None:
    folder = scan_sources(
        [_folder(tmp_path / "lab", {"a": 5, "b": 5}), _folder(tmp_path / "field", {"a": 9}, seed=1)]
    )
    s = folder.samples
    split = {"train": s[:12], "val": s[12:16], "test": s[16:]}
    out, folds = move_to_cv(split, [1], 3, seed=0)
    assert all(s.source == 0 for k in ("train", "val", "test") for s in out[k])
    assert sorted(s.path for s in out["cv"]) == sorted(s.path for s in folder.samples[10:])
    assert set(folds.values()) == {0, 1, 2}


def test_a_continuation_never_draws_its_held_out_fold() -> None:
    train_w = np.array([0.5, 0.25, 0.25])
    field_w = np.array([0.1, 0.2, 0.3, 0.4])
    held = np.array([False, True, False, True])
    w = continuation_weights(train_w, field_w, held, 0.5)
    assert w.sum() == pytest.approx(1.0)
    assert w[:3].sum() == pytest.approx(0.5) and w[3:].sum() == pytest.approx(0.5)
    assert w[3 + 1] == 0 and w[3 + 3] == 0 and w[3] > 0
    draws = torch.multinomial(torch.as_tensor(w), 4000, True, generator=torch.manual_seed(0))
    assert not set(draws.tolist()) & {4, 6}


def test_a_run_fits_its_rule_on_out_of_fold_predictions_of_every_field_photo(
    tmp_path: Path,
) -> None:
    lab = _folder(tmp_path / "lab", {"a": 24, "b": 24, "c": 24})
    field = _folder(tmp_path / "field", {"a": 10, "b": 10, "c": 8}, seed=1)
    folder = scan_sources([lab, field])
    domains = _domains(
        tmp_path / "domains.tsv",
        [(s.path, "field" if s.source == 1 else "lab") for s in folder.samples],
    )
    run = train_tiny(
        tmp_path / "run",
        [lab, field],
        domains=str(domains),
        crossfit=CrossfitConfig(folds=3, epochs=1.0),
    )
    metrics = json.loads((run / "metrics.json").read_text())
    cf = metrics["crossfit"]
    assert cf["continuations"]["folds"] == 3 and cf["continuations"]["photos"] == 28
    src = cf["sources"]["field"]
    assert src["without_crop"]["n"] == 28 and src["with_crop"]["n"] == 28
    assert 0 <= src["without_crop"]["accuracy_folds"]["min"] <= 1
    by_class = src["without_crop"]["by_class"]
    assert {k: n for k, (_, n) in by_class.items()} == {"a": 10, "b": 10, "c": 8}
    right = sum(r for r, _ in by_class.values())
    assert right / 28 == pytest.approx(src["without_crop"]["accuracy"])
    balanced = sum(r / n for r, n in by_class.values()) / 3
    assert src["without_crop"]["class_balanced"]["accuracy"] == pytest.approx(balanced)
    assert set(src["hflip"]) == {"accuracy", "accuracy_with_crop"}
    assert all(0 <= v <= 1 for v in src["hflip"].values())
    # The field source has no val/test photos: its figures are the out-of-fold ones.
    assert set(metrics["sources"]["field"]) == {"cv"}
    assert metrics["sources"]["field"]["cv"]["n"] == 28
    best, base = load_checkpoint(run / "best.pt"), load_checkpoint(run / "base.pt")
    assert best.decision["fitted"]["val_n"] == metrics["n_val"] + 28
    # The shipped model is the final continuation, not the base.
    assert any(not torch.equal(best.state_dict[k], base.state_dict[k]) for k in best.state_dict)
    folds = json.loads((run / "crossfit.json").read_text())["folds"]
    assert len(folds) == 28 and set(folds.values()) == {0, 1, 2}
    split = json.loads((run / "split.json").read_text())
    assert len(split["cv"]) == 28
    # Every held-out prediction is kept: the out-of-fold ones give the reported accuracy back.
    pred = load_predictions(run)
    assert pred["cv/logits"].shape == (28, 3) and pred["cv/hflip_logits"].shape == (28, 3)
    assert sorted(pred["cv/paths"].tolist()) == sorted(folds)
    assert [folds[p] for p in pred["cv/paths"]] == pred["cv/folds"].tolist()
    acc = float((pred["cv/logits"].argmax(1) == pred["cv/targets"]).mean())
    assert acc == pytest.approx(src["without_crop"]["accuracy"])
    assert len(pred["test/logits"]) == metrics["n_test"] == len(pred["test/paths"])
    assert list(pred["source_names"]) == ["lab", "field"]


def test_the_flip_wrapper_runs_the_model_on_the_mirror_image() -> None:
    from plantdx.training.tta import Mirrored

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 3 * 4, 5))
    x = torch.randn(3, 2, 3, 4)
    want = net(x[..., torch.arange(3, -1, -1)])
    assert torch.allclose(Mirrored(net)(x), want, atol=1e-6)
    assert not torch.allclose(Mirrored(net)(x), net(x), atol=1e-3)


def test_a_larger_eval_size_is_the_models_and_training_stays_at_its_own(tmp_path: Path) -> None:
    """`eval_image_size`: the training photos (the cross-fitted ones' training copy too) at
    image_size, every evaluation at eval_image_size, which the checkpoint carries."""
    from plantdx.preprocessing import PreprocessMeta
    from plantdx.training.augment import AugmentConfig
    from plantdx.training.loading import prepare_datasets

    field = _folder(tmp_path / "field", {"a": 4, "b": 4})
    samples = [s for s in scan_sources([field]).samples]
    split = {"train": samples[:4], "val": samples[4:6], "cv": samples[6:]}
    at48, at64 = PreprocessMeta(image_size=48), PreprocessMeta(image_size=64)
    data = prepare_datasets(split, at64, AugmentConfig(), cache=True, train_meta=at48)
    shapes = {k: tuple(data.datasets[k][0][0].shape) for k in data.datasets}
    assert shapes == {
        "train": (3, 48, 48),
        "val": (3, 64, 64),
        "cv": (3, 64, 64),
        "cv_train": (3, 48, 48),
    }
    assert data.paths["cv_train"] == data.paths["cv"] and not data.skipped
    same = prepare_datasets(split, at64, AugmentConfig(), cache=True)
    assert "cv_train" not in same.datasets

    lab = _folder(tmp_path / "lab", {"a": 16, "b": 16})
    domains = _domains(
        tmp_path / "domains.tsv",
        [(s.path, "field" if s.source == 1 else "lab") for s in scan_sources([lab, field]).samples],
    )
    run = train_tiny(
        tmp_path / "run",
        [lab, field],
        image_size=48,
        eval_image_size=64,
        domains=str(domains),
        crossfit=CrossfitConfig(folds=2, epochs=1.0),
    )
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["image_size"], metrics["train_image_size"]) == (64, 48)
    assert load_checkpoint(run / "best.pt").preprocessing.image_size == 64
    assert metrics["crossfit"]["continuations"]["photos"] == 8


def test_a_model_that_cannot_train_below_its_eval_size_is_refused(tmp_path: Path) -> None:
    lab = _folder(tmp_path / "lab", {"a": 6, "b": 6})
    with pytest.raises(ConfigError, match=r"built for eval_image_size 64 cannot train at .*48"):
        train_tiny(
            tmp_path / "run",
            lab,
            model="vit",
            model_kwargs={"tiny": True},
            image_size=48,
            eval_image_size=64,
        )


def test_class_balanced_figures_count_every_class_equally() -> None:
    from plantdx.training.calibrate import by_class, class_balanced

    # Class 0: 4 photos, 3 right (one of them unsure); class 1: 1 photo, wrong.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.55, 0.45], [0.2, 0.8], [0.7, 0.3]])
    targets = np.array([0, 0, 0, 0, 1])
    out = class_balanced(probs, targets, threshold=0.6)
    assert out["accuracy"] == pytest.approx((3 / 4 + 0) / 2)
    # Answered: 3 of class 0 (weight 1/8 each), the class-1 photo (weight 1/2).
    assert out["coverage"] == pytest.approx(3 / 8 + 1 / 2)
    assert out["selective_accuracy"] == pytest.approx((2 / 8) / (3 / 8 + 1 / 2))
    assert by_class(probs, targets) == {0: (3, 4), 1: (0, 1)}


def test_a_run_killed_while_cross_fitting_resumes_to_the_same_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--resume after the base epochs: straight to the continuations, again from base.pt with
    the steps planned for them then, to the model and figures of the unbroken run."""
    from plantdx.training import crossfit as crossfit_module
    from plantdx.training import resume_config, train
    from plantdx.training.progress import Reporter

    lab = _folder(tmp_path / "lab", {"a": 16, "b": 16})
    field = _folder(tmp_path / "field", {"a": 8, "b": 8}, seed=1)
    folder = scan_sources([lab, field])
    domains = _domains(
        tmp_path / "domains.tsv",
        [(s.path, "field" if s.source == 1 else "lab") for s in folder.samples],
    )
    kw = {"domains": str(domains), "crossfit": CrossfitConfig(folds=2, epochs=2.0)}
    whole = train_tiny(tmp_path / "whole", [lab, field], **kw)

    real = crossfit_module._continue
    calls = []

    def dies_in_the_second(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs["fold"])
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(crossfit_module, "_continue", dies_in_the_second)
    with pytest.raises(KeyboardInterrupt):
        train_tiny(tmp_path / "cut", [lab, field], **kw)
    cut = tmp_path / "cut"
    assert (cut / "base.pt").exists() and not (cut / "metrics.json").exists()
    monkeypatch.setattr(crossfit_module, "_continue", real)

    train(resume_config(cut), reporter=Reporter(quiet=True))
    a, b = load_checkpoint(whole / "best.pt"), load_checkpoint(cut / "best.pt")
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    m_whole = json.loads((whole / "metrics.json").read_text())
    m_cut = json.loads((cut / "metrics.json").read_text())
    assert m_cut["crossfit"]["sources"] == m_whole["crossfit"]["sources"]
    assert m_cut["epochs"] == m_whole["epochs"] and m_cut["test_acc"] == m_whole["test_acc"]
