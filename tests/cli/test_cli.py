"""The CLI: every command explains itself; errors become messages and non-zero exits."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from plantdx.cli import app

COMMANDS = [
    [],
    ["train"],
    ["evaluate"],
    ["export"],
    ["serve"],
    ["predict"],
    ["demo"],
    ["data"],
    ["data", "synth"],
    ["data", "info"],
    ["repo"],
    ["repo", "list"],
    ["repo", "validate"],
    ["models"],
    ["models", "status"],
    ["architectures"],
    ["weights", "import"],
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "plantdx")
def test_help(cmd: list[str]) -> None:
    result = CliRunner().invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plantdx", *args], capture_output=True, text=True, timeout=120
    )


def test_errors_are_messages_with_nonzero_exit(tmp_path) -> None:
    r = run("evaluate", str(tmp_path / "missing.pt"), "--data", str(tmp_path))
    assert r.returncode == 1
    assert "error:" in r.stderr and "does not exist" in r.stderr and "Traceback" not in r.stderr
    r = run("train", "--data", str(tmp_path), "--model", "nope")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochz: 3\n")
    r = run("train", "--config", str(cfg), "--data", str(tmp_path))
    assert r.returncode == 2 and "epochz" in r.stderr
    r = run("repo", "validate", str(tmp_path))
    assert r.returncode == 1 and "config.pbtxt is missing" in r.stderr


def test_data_synth_and_info(tmp_path) -> None:
    out = tmp_path / "leaves"
    r = run("data", "synth", str(out), "--per-class", "3", "--size", "64")
    assert r.returncode == 0, r.stderr
    r = run("data", "info", str(out))
    assert r.returncode == 0 and "18  images in 6 classes" in r.stdout


def test_architectures() -> None:
    r = run("architectures")
    assert r.returncode == 0 and "efficientnet_lite0" in r.stdout and "vit" in r.stdout


def test_missing_weights_file_is_a_one_line_error(tmp_path, synth_dir) -> None:
    """`plantdx train --weights MISSING` (the default model): a message naming the file."""
    missing = tmp_path / "nonexistent.pth"
    r = run("train", "--data", str(synth_dir), "--weights", str(missing), "--out", str(tmp_path))
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: weights file {missing} does not exist"], r.stderr


@pytest.mark.parametrize(
    ("model", "weights", "message"),
    [
        ("efficientnet_lite0", "missing.pth", "weights file {} does not exist"),
        ("efficientnet_lite0", "folder", "weights file {} is not a file"),
        ("efficientnet_lite0", "junk.pth", "{} is not a readable PyTorch weights file"),
        ("mobilenet_v3_small", "missing.pth", "weights file {} does not exist"),
        ("resnet50", "junk.pth", "{} is not a readable PyTorch weights file"),
        ("vit", "missing-vit", "ViT weights directory {} does not exist"),
        ("vit", "folder", "{} is not a HuggingFace model directory"),
    ],
)
def test_bad_weights_fail_before_the_dataset_is_decoded(
    tmp_path, synth_dir, monkeypatch, model: str, weights: str, message: str
) -> None:
    run_data = importlib.import_module("plantdx.training.run_data")
    from plantdx.exceptions import ModelNotFoundError

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dataset was decoded before the weights were checked")

    monkeypatch.setattr(run_data, "prepare_datasets", no_decoding)
    (tmp_path / "folder").mkdir()
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    path = tmp_path / weights
    args = ["train", "--data", str(synth_dir), "--model", model, "--weights", str(path)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run"), "--no-mlflow"])
    assert isinstance(result.exception, ModelNotFoundError), result.output
    assert message.format(path) in str(result.exception)
    assert not (tmp_path / "run" / "config.yaml").exists()  # no run directory was started
