"""Training and evaluation on real photos with a tiny model; MLflow in a temporary store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from plantdx.checkpoint import load_checkpoint
from plantdx.training import EvaluateConfig, evaluate_checkpoint


def test_train_writes_run_directory(tiny_run: Path) -> None:
    for name in ("best.pt", "last.pt", "metrics.json", "split.json", "config.yaml", "labels.txt"):
        assert (tiny_run / name).is_file(), name
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert 0.0 <= metrics["val_acc"] <= 1.0 and 0.0 <= metrics["test_acc"] <= 1.0
    assert metrics["n_train"] == 630 and metrics["n_test"] == 90
    ckpt = load_checkpoint(tiny_run / "best.pt")
    assert ckpt.model_name == "test_tiny" and len(ckpt.class_names) == 15
    assert ckpt.config["model"] == "test_tiny" and ckpt.config["image_size"] == 64
    # Trained at 64 px, evaluated (and so exported and served) at eval_scale 1.2 times that.
    assert ckpt.preprocessing.image_size == round(64 * 1.2) == 77
    assert ckpt.mlflow_run_id


def test_training_learns_something(tiny_run: Path) -> None:
    """Two epochs of a tiny CNN on 15 classes must beat chance (1/15) clearly."""
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["test_acc"] > 0.15


def test_mlflow_run_and_registry(
    tiny_run: Path, mlflow_store: str, tmp_path: Path, monkeypatch
) -> None:
    import mlflow

    ckpt = load_checkpoint(tiny_run / "best.pt")
    client = mlflow.MlflowClient(tracking_uri=mlflow_store)
    run = client.get_run(ckpt.mlflow_run_id)
    assert run.data.params["model"] == "test_tiny"
    assert "test_acc" in run.data.metrics
    history = client.get_metric_history(run.info.run_id, "val_acc")
    assert [m.step for m in history] == [1, 2]
    versions = client.search_model_versions(f"name='plantdx-test' and run_id='{run.info.run_id}'")
    assert versions and versions[0].run_id == run.info.run_id
    assert len(versions[0].tags["data_sha256"]) == 64
    # The registry URI is an export source.
    from plantdx.export import ExportConfig, export

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    result = export(
        ExportConfig(
            source=f"models:/plantdx-test/{versions[0].version}", repository=str(tmp_path / "r")
        )
    )
    assert result.version == 1 and result.provenance["mlflow_run_id"] == run.info.run_id


def test_evaluate_all_and_test_split(tiny_run: Path, mini_dir: Path, tmp_path: Path) -> None:
    report = evaluate_checkpoint(
        EvaluateConfig(checkpoint=str(tiny_run), data=str(mini_dir), out=str(tmp_path))
    )
    assert report["n"] == 900
    assert 0 <= report["accuracy"] <= 1 and 0 <= report["macro_f1"] <= 1
    assert sum(r["support"] for r in report["per_class"].values()) == 900
    assert len(report["misclassified"]) == round(900 * (1 - report["accuracy"]))
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000
    test = evaluate_checkpoint(EvaluateConfig(checkpoint=str(tiny_run / "best.pt"), split="test"))
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert test["n"] == 90
    assert test["accuracy"] == pytest.approx(metrics["test_acc"], abs=1e-9)


def test_cli_train_and_evaluate_json(tmp_path: Path, synth_dir: Path) -> None:
    from typer.testing import CliRunner

    from plantdx.cli import app

    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(synth_dir),
        "--model",
        "test_tiny",
        "--no-pretrained",
        "--epochs",
        "1",
        "--image-size",
        "48",
        "--out",
        str(out),
        "--quiet",
    ]
    result = CliRunner().invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    assert (out / "best.pt").is_file()
    result = CliRunner().invoke(
        app, ["evaluate", str(out / "best.pt"), "--data", str(synth_dir), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["n"] == 72 and "accuracy" in report
    assert os.path.exists(out / "metrics.json")
