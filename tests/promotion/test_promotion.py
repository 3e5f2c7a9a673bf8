"""compare / promote without a server: the paired statistics, the gate, the photos, comparing
checkpoints, and the repository's durable version pin."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from plantdx.exceptions import ConfigError, DatasetError, RepositoryError
from plantdx.promotion.gate import Gate, evaluate_gate
from plantdx.promotion.photos import labelled_photos
from plantdx.promotion.stats import mcnemar_exact, paired, per_class_delta, selective_metrics


def _binomial_two_sided(b: int, c: int) -> float:
    """Reference: sum of the probabilities of every outcome no more likely than the observed."""
    n = b + c
    if n == 0:
        return 1.0
    pmf = [math.comb(n, k) / 2**n for k in range(n + 1)]
    return min(1.0, sum(p for p in pmf if p <= pmf[min(b, c)] * (1 + 1e-12)))


@pytest.mark.parametrize("b,c", [(0, 0), (0, 5), (1, 9), (3, 3), (10, 2), (25, 40), (0, 1)])
def test_mcnemar_exact_matches_the_binomial_test(b: int, c: int) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(_binomial_two_sided(b, c), rel=1e-9)
    assert mcnemar_exact(b, c) == mcnemar_exact(c, b)


def test_mcnemar_known_values() -> None:
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)
    assert mcnemar_exact(0, 0) == 1.0


def test_selective_metrics_and_pairs() -> None:
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.55, 0.45], [0.2, 0.8]], dtype=np.float32)
    labels = np.array([0, 0, 0, 1])
    m = selective_metrics(probs, labels, np.full(4, 0.7))
    assert m == {"accuracy": 0.75, "coverage": 0.5, "selective_accuracy": 1.0, "n": 4}
    right_a = np.array([True, False, True, True])
    right_b = np.array([True, True, False, False])
    assert paired(right_a, right_b)["only_a_right"] == 2
    assert paired(right_a, right_b)["only_b_right"] == 1
    d = per_class_delta(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1]), labels, ["x", "y"])
    assert d["x"]["recall_a"] == pytest.approx(2 / 3)
    assert d["x"]["recall_b"] == pytest.approx(2 / 3)
    assert d["y"]["delta"] == 0.0


def _comparison(
    sources: dict[str, tuple[float, float, float, float, float, int]],
) -> dict[str, Any]:
    """sources: name → (acc_a, acc_b, cov_a, cov_b, mcnemar_p, n)."""
    blocks = {
        name: {
            "a": {"accuracy": aa, "coverage": ca, "selective_accuracy": aa, "n": n},
            "b": {"accuracy": ab, "coverage": cb, "selective_accuracy": ab, "n": n},
            "mcnemar_p": p,
        }
        for name, (aa, ab, ca, cb, p, n) in sources.items()
    }
    overall = {
        "a": {"accuracy": float(np.mean([v[0] for v in sources.values()])), "coverage": 1.0},
        "b": {"accuracy": float(np.mean([v[1] for v in sources.values()])), "coverage": 1.0},
    }
    overall["a"]["selective_accuracy"] = overall["a"]["accuracy"]
    overall["b"]["selective_accuracy"] = overall["b"]["accuracy"]
    return {
        "sources": blocks,
        "overall": overall,
        "mean_source_accuracy": {"a": overall["a"]["accuracy"], "b": overall["b"]["accuracy"]},
    }


def test_gate_passes_a_better_candidate() -> None:
    cmp = _comparison({"lab": (0.95, 0.96, 1, 1, 0.5, 300), "field": (0.40, 0.50, 1, 1, 0.01, 70)})
    verdict = evaluate_gate(Gate(), cmp)
    assert verdict["passed"], verdict["reasons"]


def test_gate_catches_a_trade_of_field_for_lab() -> None:
    """Better on the pooled metric, worse beyond noise on the field photos."""
    cmp = _comparison({"lab": (0.80, 0.97, 1, 1, 1e-6, 300), "field": (0.50, 0.40, 1, 1, 0.02, 70)})
    verdict = evaluate_gate(Gate(), cmp)
    assert not verdict["passed"]
    assert any(r.startswith("field:") for r in verdict["reasons"])


def test_gate_small_noisy_drop_passes_but_large_drop_fails() -> None:
    noisy = _comparison({"lab": (0.90, 0.93, 1, 1, 0.2, 300), "field": (0.50, 0.48, 1, 1, 0.8, 20)})
    assert evaluate_gate(Gate(), noisy)["passed"]
    large = _comparison({"lab": (0.90, 0.99, 1, 1, 0.2, 300), "field": (0.50, 0.40, 1, 1, 0.3, 20)})
    assert not evaluate_gate(Gate(), large)["passed"]


def test_gate_refuses_equal_or_lower_metric_and_coverage_loss() -> None:
    same = _comparison({"lab": (0.9, 0.9, 1, 1, 1.0, 100)})
    assert not evaluate_gate(Gate(), same)["passed"]
    fewer = _comparison({"lab": (0.9, 0.92, 0.9, 0.6, 0.5, 100)})
    fewer["sources"]["lab"]["b"]["selective_accuracy"] = 0.85  # answers less, and worse
    verdict = evaluate_gate(Gate(), fewer)
    assert not verdict["passed"] and "coverage" in verdict["reasons"][0]
    sharper = _comparison({"lab": (0.9, 0.92, 0.9, 0.6, 0.5, 100)})
    sharper["sources"]["lab"]["b"]["selective_accuracy"] = 0.99  # answers less, but better
    assert evaluate_gate(Gate(), sharper)["passed"]
    with pytest.raises(ConfigError):
        Gate(metric="f1").check()  # type: ignore[arg-type]


def test_labelled_photos_match_classes_by_folder_name(synth_dir: Path) -> None:
    classes = sorted(p.name for p in synth_dir.iterdir() if p.is_dir())
    photos = labelled_photos([synth_dir], ["zzz-unknown", *classes[1:]], limit=5)
    assert photos.unknown_folders == {synth_dir.name: [classes[0]]}
    assert len(photos) == 5 and set(photos.labels) <= set(range(1, len(classes)))
    with pytest.raises(DatasetError):
        labelled_photos([synth_dir], ["nothing", "here"])
    with pytest.raises(DatasetError):
        labelled_photos([], classes)


def test_compare_checkpoints_cli_json(tiny_run: Path, mini_dir: Path, tmp_path: Path) -> None:
    """A checkpoint against itself: identical answers; against a changed copy: the deltas and
    the McNemar test see the difference; both sides judged on the same photos per source."""
    from plantdx.cli import app

    from helpers.serving import alt_checkpoint

    alt = alt_checkpoint(tiny_run / "best.pt", tmp_path / "alt.pt", shift=4.0)
    runner = CliRunner()
    args = ["--data", str(mini_dir), "--data", str(mini_dir), "--limit", "60", "--json"]
    same = runner.invoke(app, ["compare", str(tiny_run), str(tiny_run / "best.pt"), *args])
    assert same.exit_code == 0, same.output
    d = json.loads(same.output)
    assert d["mcnemar_p"] == 1.0 and d["n"] == 120
    assert set(d["sources"]) == {f"{mini_dir.name}-0", f"{mini_dir.name}-1"}
    for block in d["sources"].values():
        assert block["a"] == block["b"]
        assert set(block["a"]) == {"accuracy", "coverage", "selective_accuracy", "n"}
    assert all(v["delta"] == 0 for v in d["per_class_delta"].values())

    png = tmp_path / "cmp.png"
    diff = runner.invoke(app, ["compare", str(tiny_run), str(alt), *args, "--plot", str(png)])
    assert diff.exit_code == 0, diff.output
    d = json.loads(diff.output)
    assert d["overall"]["only_a_right"] + d["overall"]["only_b_right"] > 0
    assert d["mcnemar_p"] < 1.0
    assert any(v["delta"] != 0 for v in d["per_class_delta"].values())
    assert png.stat().st_size > 10_000
    assert d["latency"]["a"]["p50_ms"] > 0

    table = runner.invoke(app, ["compare", str(tiny_run), str(alt), *args[:-1]])
    assert table.exit_code == 0 and "McNemar" in table.output


def test_compare_refuses_bad_arguments(tiny_run: Path, mini_dir: Path) -> None:
    from plantdx.cli import app

    runner = CliRunner()
    one = runner.invoke(app, ["compare", str(tiny_run), "--data", str(mini_dir)])
    assert isinstance(one.exception, ConfigError) and "exactly two" in str(one.exception)
    both = runner.invoke(
        app, ["compare", "--url", "localhost:1", "--versions", "3", "--data", str(mini_dir)]
    )
    assert isinstance(both.exception, ConfigError)
    assert "two different version numbers" in str(both.exception)


def test_pin_served_version_is_durable_and_validated(
    tiny_repo: Path, tiny_run: Path, tmp_path: Path
) -> None:
    from plantdx.export import ExportConfig, export
    from plantdx.model_repository.served import pin_served_version, served_by_policy

    from helpers.serving import alt_checkpoint

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo, repo)
    alt = alt_checkpoint(tiny_run / "best.pt", tmp_path / "alt.pt")
    export(ExportConfig(source=str(alt), repository=str(repo)))
    assert served_by_policy(repo) == [2]
    pin_served_version(repo, 1)
    assert served_by_policy(repo) == [1]
    assert "specific" in (repo / "preprocess" / "config.pbtxt").read_text()
    before = (repo / "classifier" / "config.pbtxt").read_bytes()
    with pytest.raises(RepositoryError, match="no version 7"):
        pin_served_version(repo, 7)
    assert (repo / "classifier" / "config.pbtxt").read_bytes() == before
