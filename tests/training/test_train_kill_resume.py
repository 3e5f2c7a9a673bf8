"""Training killed mid-epoch resumes exactly, end to end with the CLI: `plantdx train` on a
small generated dataset, SIGKILL half way through epoch 2, `plantdx train --resume RUN`, and
the final weights (best.pt and last.pt, every tensor), the optimizer state and the history
equal those of the same run left alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from plantdx.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 3


@pytest.fixture(scope="module")
def leaves(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from plantdx.synth import generate_dataset

    out = tmp_path_factory.mktemp("leaves")
    generate_dataset(out, per_class=40, size=96, seed=7)
    return out


def _train(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PLANTDX_LOG": "WARNING"}
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "plantdx", "train", *args, "--quiet"],
            stdout=fh,
            stderr=fh,
            env=env,
            cwd=ROOT,
        )


def _args(data: Path, out: Path) -> list[str]:
    return [
        "--data", str(data), "--out", str(out), "--model", "test_tiny", "--no-pretrained",
        "--image-size", "48", "--batch-size", "8", "--epochs", str(EPOCHS),
        "--time-budget", "0", "--device", "cpu", "--no-mlflow", "--seed", "3",
    ]  # fmt: skip


def _cpu_s(pid: int) -> float:
    """CPU seconds a process has used (all its threads): a clock that other load on the
    machine does not speed up or slow down."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _epoch_ends(proc: subprocess.Popen[bytes], last: Path) -> list[float]:
    """Watch a run to its end: its CPU seconds when each new last.pt appeared."""
    seen: list[float] = []
    stamp = None
    while proc.poll() is None:
        now = last.stat().st_mtime_ns if last.exists() else None
        if now != stamp and now is not None:
            seen.append(_cpu_s(proc.pid))
            stamp = now
        time.sleep(0.002)
    assert proc.returncode == 0
    return seen


def _history(run: Path) -> list[dict[str, Any]]:
    rows = json.loads((run / "history.json").read_text())
    return [{k: v for k, v in r.items() if k != "train_img_per_s"} for r in rows]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(leaves: Path, tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    ends = _epoch_ends(_train(_args(leaves, whole), log), whole / "last.pt")
    assert len(ends) == EPOCHS, log.read_text()[-2000:]
    epoch_cpu = ends[1] - ends[0]  # epoch 2: its training, validation and checkpoints

    proc = _train(_args(leaves, cut), log)
    last = cut / "last.pt"
    while not last.exists():
        assert proc.poll() is None, log.read_text()[-2000:]
        time.sleep(0.002)
    start = _cpu_s(proc.pid)
    while _cpu_s(proc.pid) - start < 0.4 * epoch_cpu:  # 40 % into epoch 2 (its training)
        assert proc.poll() is None
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    state = load_checkpoint(last).train_state["loop"]
    assert state["epoch"] == 1, f"killed after epoch 2 ended (epoch: {epoch_cpu:.2f} CPU s)"
    assert len(state["history"]) == 1 and not (cut / "metrics.json").exists()

    resumed = _train(["--resume", str(cut)], log)
    assert resumed.wait(timeout=600) == 0, log.read_text()[-2000:]
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(whole / name), load_checkpoint(cut / name)
        assert _same(a.state_dict, b.state_dict), name
    a_opt = load_checkpoint(whole / "last.pt").train_state["optimizer"]["state"]
    b_opt = load_checkpoint(cut / "last.pt").train_state["optimizer"]["state"]
    assert a_opt.keys() == b_opt.keys()
    assert all(_same(a_opt[k], b_opt[k]) for k in a_opt)
    assert _history(whole) == _history(cut) and len(_history(cut)) == EPOCHS
    print(f"epoch 2: {epoch_cpu:.2f} CPU s; killed 40 % into it; weights identical")
