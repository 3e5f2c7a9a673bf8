"""Training from several sources: per-source splits, the balanced sampler, outlier exposure,
the fitted decision rule (temperature, abstention threshold) and the evaluation that shows it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from plantdx.data import (
    UNKNOWN_LABEL,
    read_split,
    save_split,
    scan_image_folder,
    scan_sources,
    scan_unknown,
    split_samples,
    stratified_split,
    unknown_group,
)
from plantdx.decision import UNCERTAIN, DecisionRule, softmax
from plantdx.preprocessing import PreprocessMeta, Preprocessor
from plantdx.training.calibrate import AbstainConfig, fit_decision_rule, fit_temperature, nll
from plantdx.training.sampling import BalancedSampler, OutlierExposureLoss, sample_weights

from helpers.common import SHARED_DATA


def _folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(d / f"{i}.png")
    return root


def test_sources_are_joined_by_class_name_and_split_on_their_own(tmp_path: Path) -> None:
    lab = _folder(tmp_path / "lab", {"a": 20, "b": 20, "c": 20})
    field = _folder(tmp_path / "field", {"b": 10, "c": 4}, seed=1)
    folder = scan_sources([lab, field])
    assert folder.class_names == ["a", "b", "c"]
    assert [s.name for s in folder.sources] == ["lab", "field"]
    assert folder.source_counts() == {"lab": 60, "field": 14}
    field_b = [s for s in folder.samples if s.source == 1 and s.label == 1]
    assert len(field_b) == 10 and all(s.path.parent.name == "b" for s in field_b)

    split = stratified_split(folder, val_fraction=0.2, test_fraction=0.1, seed=3)
    for name, n_val, n_test in (("lab", 12, 6), ("field", 3, 2)):
        i = [s.name for s in folder.sources].index(name)
        assert sum(1 for s in split["val"] if s.source == i) == n_val
        assert sum(1 for s in split["test"] if s.source == i) == n_test
    # Every source's class with >= 3 photos has val and test photos of its own.
    for key in {(s.source, s.label) for s in folder.samples}:
        assert any((s.source, s.label) == key for s in split["val"])
        assert any((s.source, s.label) == key for s in split["test"])

    save_split(split, folder, tmp_path / "split.json", seed=3)
    doc = json.loads((tmp_path / "split.json").read_text())
    assert [s["name"] for s in doc["sources"]] == ["lab", "field"]
    assert doc["source_counts"]["val"] == {"lab": 12, "field": 3}
    back = read_split(tmp_path / "split.json")
    assert back.source_names == ["lab", "field"]
    assert sorted(map(str, back.split["test"])) == sorted(map(str, split["test"]))


def test_one_source_keeps_the_single_folder_split_and_file(tmp_path: Path) -> None:
    lab = _folder(tmp_path / "lab", {"a": 9, "b": 7})
    one = scan_sources([lab])
    old = scan_image_folder(lab)
    assert one.class_names == old.class_names and one.samples == old.samples
    split = stratified_split(one, seed=5)
    save_split(split, one, tmp_path / "split.json", seed=5)
    doc = json.loads((tmp_path / "split.json").read_text())
    assert "sources" not in doc and all(len(row) == 2 for row in doc["train"])


def test_unknown_photos_are_split_by_their_subfolders(tmp_path: Path) -> None:
    other = _folder(tmp_path / "other", {"apple": 10, "corn": 20})
    samples = scan_unknown([other], source=2)
    assert len(samples) == 30 and {s.label for s in samples} == {UNKNOWN_LABEL}
    split = split_samples(samples, seed=1, group=unknown_group([other]))
    assert sum(1 for s in split["val"] if s.path.parent.name == "apple") == 2
    assert sum(1 for s in split["val"] if s.path.parent.name == "corn") == 4


def test_balanced_weights_give_every_source_and_class_its_share() -> None:
    # Source 0: 900 + 100 photos of two classes; source 1: 40 + 10; 50 unknown photos.
    labels = np.array([0] * 900 + [1] * 100 + [0] * 40 + [1] * 10 + [UNKNOWN_LABEL] * 50)
    sources = np.array([0] * 1000 + [1] * 50 + [2] * 50)
    w = sample_weights(labels, sources, source_balance=1.0, class_balance=1.0, unknown_share=0.2)
    assert w.sum() == pytest.approx(1.0)
    assert w[sources == 0].sum() == pytest.approx(0.4)
    assert w[sources == 1].sum() == pytest.approx(0.4)
    assert w[labels == UNKNOWN_LABEL].sum() == pytest.approx(0.2)
    assert w[(sources == 1) & (labels == 1)].sum() == pytest.approx(0.2)
    # Plain concatenation: every photo equally likely.
    flat = sample_weights(
        labels[:1050], sources[:1050], source_balance=0.0, class_balance=0.0, unknown_share=0.0
    )
    assert np.allclose(flat, 1 / 1050)


def test_source_weights_multiply_a_named_sources_share() -> None:
    from plantdx.exceptions import ConfigError
    from plantdx.training.sampling import SamplingConfig

    labels = np.array([0] * 50 + [1] * 50 + [0] * 50)
    sources = np.array([0] * 100 + [1] * 50)
    cfg = SamplingConfig(source_weights={"extra": 3.0})
    mult = cfg.source_multipliers(["lab", "extra"])
    assert mult == {1: 3.0}
    w = sample_weights(
        labels,
        sources,
        source_balance=1.0,
        class_balance=1.0,
        unknown_share=0.0,
        source_multipliers=mult,
    )
    # Equal shares (source_balance 1) times 1 and 3: a quarter and three quarters.
    assert w[sources == 0].sum() == pytest.approx(0.25)
    assert w[sources == 1].sum() == pytest.approx(0.75)
    # A name the run does not have is left out (the run reports it), not an error: the
    # default recipe weighs a source by name that other runs do not have.
    other = SamplingConfig(source_weights={"nope": 2.0, "lab": 2.0})
    assert other.source_multipliers(["lab"]) == {0: 2.0}
    assert other.not_sources(["lab"]) == ["nope"]
    with pytest.raises(ConfigError, match="> 0"):
        SamplingConfig(source_weights={"lab": 0.0}).source_multipliers(["lab"])


def test_balanced_sampler_is_reproducible_and_splits_across_ranks() -> None:
    w = np.full(100, 0.01)
    a = list(BalancedSampler(w, 64, seed=7))
    b = list(BalancedSampler(w, 64, seed=7))
    assert a == b and len(a) == 64
    s = BalancedSampler(w, 64, seed=7)
    s.set_epoch(1)
    assert list(s) != a
    ranks = [BalancedSampler(w, 64, seed=7, rank=r, world_size=2) for r in (0, 1)]
    assert sorted(list(ranks[0]) + list(ranks[1])) == sorted(a)


def test_outlier_exposure_is_cross_entropy_without_unknowns_and_flattens_them() -> None:
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    targets = torch.tensor([0, 1])
    loss = OutlierExposureLoss(label_smoothing=0.1)
    ref = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    assert loss(logits, targets).item() == pytest.approx(ref(logits, targets).item())
    z = torch.tensor([[4.0, 0.0, 0.0]], requires_grad=True)
    out = OutlierExposureLoss(unknown_weight=1.0)(z, torch.tensor([UNKNOWN_LABEL]))
    out.backward()
    assert z.grad is not None and z.grad[0, 0] > 0 > z.grad[0, 1]  # the top logit goes down


def test_crop_term_is_the_crop_cross_entropy_and_costs_a_wrong_crop_more() -> None:
    crops = [0, 0, 1]  # classes 0 and 1 of one crop, class 2 of another
    logits = torch.tensor([[1.0, 0.5, -1.0], [0.2, 0.1, 2.0], [0.0, 0.0, 0.0]])
    targets = torch.tensor([0, 1, UNKNOWN_LABEL])
    plain = OutlierExposureLoss(label_smoothing=0.1)
    off = OutlierExposureLoss(label_smoothing=0.1, crop_of_class=crops, crop_weight=0.0)
    on = OutlierExposureLoss(label_smoothing=0.1, crop_of_class=crops, crop_weight=0.5)
    assert off(logits, targets).item() == pytest.approx(plain(logits, targets).item())
    p = logits[:2].softmax(1)
    crop_p = torch.stack([p[:, 0] + p[:, 1], p[:, 2]], 1)
    crop_nll = -crop_p[[0, 1], [0, 0]].log().mean()
    expected = plain(logits, targets) + 0.5 * crop_nll
    assert on(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)
    # The same wrong answer costs more when it is of another crop.
    near = torch.tensor([[0.0, 2.0, 0.0]])
    far = torch.tensor([[0.0, 0.0, 2.0]])
    t = torch.tensor([0])
    assert plain(near, t).item() == pytest.approx(plain(far, t).item())
    assert on(far, t).item() > on(near, t).item()


def _overconfident(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += 1.5
    return z * 5.0, y  # right about 80% of the time, with near-certain probabilities


def test_fitted_temperature_lowers_validation_nll() -> None:
    z, y = _overconfident(400, 6, 0)
    t = fit_temperature(z, y)
    assert t > 1.5  # overconfident logits are cooled
    assert nll(z, y, t) < nll(z, y, 1.0) - 0.1
    assert nll(z, y, t) <= min(nll(z, y, s) for s in (t * 0.8, t * 1.25))
    zt, yt = _overconfident(400, 6, 1)  # and on other photos of the same kind
    assert nll(zt, yt, t) < nll(zt, yt, 1.0)


def test_threshold_meets_the_unknown_target_unless_coverage_forbids() -> None:
    z, y = _overconfident(300, 5, 2)
    unknown = np.random.default_rng(3).normal(size=(200, 5)) * 2.0
    rule = fit_decision_rule({"lab": z}, {"lab": y}, unknown, AbstainConfig(min_coverage=0.3))
    top_u = softmax(unknown, rule.temperature).max(1)
    assert (top_u < rule.threshold).mean() >= 0.8
    assert rule.fitted["unknown_val_abstain_rate"] >= 0.8
    assert rule.fitted["val"]["lab"]["coverage"] >= 0.3
    strict = fit_decision_rule({"lab": z}, {"lab": y}, unknown, AbstainConfig(min_coverage=0.99))
    assert strict.fitted["val"]["lab"]["coverage"] >= 0.99
    assert "unknown_target" in strict.fitted["missed"]


def test_decision_rule_answers_or_says_uncertain() -> None:
    rule = DecisionRule(temperature=2.0, threshold=0.6)
    probs = rule.probabilities(np.array([[6.0, 0.0], [0.5, 0.0]]))
    assert probs[0, 0] == pytest.approx(1 / (1 + np.exp(-3.0)), rel=1e-6)
    assert rule.decisions(probs, ["a", "b"]) == ["a", UNCERTAIN]
    assert rule.decisions(probs, ["a", "b"], threshold=0.0) == ["a", "a"]
    assert DecisionRule.from_dict(rule.to_dict()) == rule
    assert DecisionRule.from_dict({}) == DecisionRule()  # old checkpoints: answer everything
    with pytest.raises(ValueError):
        DecisionRule(temperature=0.0)


@pytest.mark.parametrize("mode", ["squash", "crop", "pad"])
def test_resize_modes_give_the_square_input(mode: str) -> None:
    img = Image.new("RGB", (300, 100), (200, 20, 20))
    img.paste((20, 200, 20), (0, 0, 30, 100))  # a green strip on the left tenth
    out = Preprocessor(PreprocessMeta(image_size=60, resize=mode)).resize(img)
    assert out.shape == (60, 60, 3)
    left = out[30, 1]
    if mode == "squash":
        assert left[1] > 150  # the strip is squeezed but kept
    elif mode == "crop":
        assert left[0] > 150  # the centre only: the strip is cut away
    else:
        assert out[1, 30].tolist() == [round(m * 255) for m in PreprocessMeta().mean]
        assert out[30, 1][1] > 150  # the whole photo, letterboxed
    with pytest.raises(ValueError):
        PreprocessMeta(resize="stretch")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plantdx", *args], capture_output=True, text=True, timeout=600
    )


def test_multi_source_run_reports_per_source_and_unknown_figures(tmp_path: Path) -> None:
    from plantdx.checkpoint import load_checkpoint
    from plantdx.synth import generate_dataset

    generate_dataset(tmp_path / "lab", per_class=14, size=64, seed=1)
    generate_dataset(tmp_path / "field", per_class=5, size=64, seed=2)
    generate_dataset(tmp_path / "other", per_class=4, size=64, seed=3)
    run = tmp_path / "run"
    r = _cli(
        "train",
        "--data", str(tmp_path / "lab"),
        "--data", str(tmp_path / "field"),
        "--unknown-data", str(tmp_path / "other"),
        "--out", str(run),
        "--model", "test_tiny", "--no-pretrained", "--image-size", "48",
        "--epochs", "2", "--time-budget", "0", "--no-mlflow", "--quiet",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("val_acc", "test_acc", "test_coverage", "test_selective_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    assert set(metrics["sources"]) == {"lab", "field"}
    for splits in metrics["sources"].values():
        assert set(splits) == {"val", "test"}
        assert {"acc", "macro_f1", "coverage", "selective_accuracy", "n"} <= set(splits["test"])
    assert metrics["unknown_test_n"] == 6 and 0 <= metrics["unknown_test_abstain_rate"] <= 1
    history = json.loads((run / "history.json").read_text())
    assert {"val_acc.lab", "val_acc.field", "val_score"} <= set(history[0])
    ckpt = load_checkpoint(run / "best.pt")
    rule = DecisionRule.from_dict(ckpt.decision)
    assert rule.temperature == pytest.approx(metrics["temperature"])
    assert rule.threshold == pytest.approx(metrics["abstain_threshold"])
    assert json.loads((run / "split.json").read_text())["unknown"]["counts"]["test"] == 6

    # `plantdx evaluate` on the run's test split gives the figures training reported.
    r = _cli("evaluate", str(run), "--split", "test", "--json", "--out", str(tmp_path / "ev"))
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)
    assert report["accuracy"] == pytest.approx(metrics["test_acc"])
    assert report["coverage"] == pytest.approx(metrics["test_coverage"])
    assert report["selective_accuracy"] == pytest.approx(metrics["test_selective_accuracy"])
    assert report["sources"]["field"]["coverage"] == pytest.approx(
        metrics["sources"]["field"]["test"]["coverage"]
    )
    assert report["unknown_abstain_rate"] == pytest.approx(metrics["unknown_test_abstain_rate"])

    # --unknown-data alone: how many photos of no class are answered "uncertain".
    r = _cli(
        "evaluate", str(run), "--unknown-data", str(tmp_path / "other"), "--threshold", "1.0",
        "--json", "--out", str(tmp_path / "ev2"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout)
    assert report["unknown_n"] == 24 and report["unknown_abstain_rate"] == 1.0
    assert "accuracy" not in report


@pytest.mark.skipif(
    not (SHARED_DATA / "plantdoc-field-train").is_dir(),
    reason=f"real field photos not found at {SHARED_DATA}/plantdoc-field-train",
)
def test_real_lab_and_field_sources_split_per_source() -> None:
    lab, field = SHARED_DATA / "plantvillage-train", SHARED_DATA / "plantdoc-field-train"
    folder = scan_sources([lab, field])
    assert len(folder.class_names) == 15
    counts = folder.source_counts()
    assert counts["plantdoc-field-train"] == 353
    split = stratified_split(folder, seed=42)
    field_val = [s for s in split["val"] if s.source == 1]
    field_test = [s for s in split["test"] if s.source == 1]
    assert 60 <= len(field_val) <= 80 and 30 <= len(field_test) <= 45
