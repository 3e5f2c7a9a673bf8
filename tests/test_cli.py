"""The CLI: every command explains itself; errors become messages and non-zero exits."""

from __future__ import annotations

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
    ["models", "list"],
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


def test_models_list() -> None:
    r = run("models", "list")
    assert r.returncode == 0 and "efficientnet_lite0" in r.stdout and "vit" in r.stdout
