"""The kill test, small: real `plantdx export` and `plantdx repo pin` processes SIGKILLed at
random moments, then `plantdx repo validate` (with `--repair` when needed) and a fresh Triton
server that must serve one consistent version (`plantdx bench kill-publish` runs 50 or more;
BENCHMARKS.md has the figures). Also: the consistency check does catch a mixed version, and a
real export sent SIGTERM while publishing rolls back and exits 143."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plantdx.bench.publish_kill import make_checkpoints, run_kill_test, serve_and_check
from plantdx.bench.served_check import probe_image
from plantdx.model_repository.journal import JOURNAL_FILENAME, publish_problems
from plantdx.model_repository.layout import versions
from plantdx.model_repository.served import served_by_policy
from plantdx.model_repository.validate import validate_repository

from helpers.export import snapshot

pytestmark = [pytest.mark.triton, pytest.mark.slow]

RUNS = 6
SEED = 4200
EXPORT = [sys.executable, "-m", "plantdx", "--quiet", "export"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    return run_kill_test(tmp_path_factory.mktemp("kill") / "work", runs=RUNS, seed=SEED)


def test_killed_exports_and_pins_leave_a_valid_consistently_served_repository(
    report: dict,  # type: ignore[type-arg]
) -> None:
    failed = [r for r in report["results"] if not r["consistent"]]
    assert not failed, failed
    assert report["passed"] and report["runs"] == RUNS
    assert report["seeds"] == list(range(SEED, SEED + RUNS))
    assert report["valid_after_repair"] == RUNS
    # The point of the test: some kills landed while the repository was being changed.
    assert report["killed_mid_change"] >= 1 and report["needed_repair"] >= 1


def test_the_check_catches_a_version_whose_parts_do_not_belong_together(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    ckpts = make_checkpoints(tmp_path / "ckpts")
    for ckpt in ckpts[:2]:
        done = subprocess.run(
            [*EXPORT, str(ckpt), "--repository", str(repo)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
    log = tmp_path / "triton.log"
    assert serve_and_check(repo, probe_image(), [[2]], ckpts, log)[1]
    # Version 2 with version 1's classifier: what a torn publish could look like.
    onnx = repo / "classifier" / "2" / "model.onnx"
    own = onnx.read_bytes()
    shutil.copyfile(repo / "classifier" / "1" / "model.onnx", onnx)
    version, consistent, diff, problems = serve_and_check(repo, probe_image(), [[2]], ckpts, log)
    assert version == 2 and not consistent and diff is not None and diff > 1e-3, problems
    # Preprocess 2 sending version 1's decision rule is caught as well.
    onnx.write_bytes(own)
    rule = "decision.json"
    shutil.copyfile(repo / "preprocess" / "1" / rule, repo / "preprocess" / "2" / rule)
    problems = serve_and_check(repo, probe_image(), [[2]], ckpts, log)[3]
    assert any("temperature" in p for p in problems), problems


def test_sigterm_to_a_real_export_while_publishing_rolls_back_and_exits_143(
    tmp_path: Path,
) -> None:
    ckpts = make_checkpoints(tmp_path / "ckpts")
    repo = tmp_path / "repo"
    cmd = [*EXPORT, str(ckpts[0]), "--repository", str(repo)]
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    before = snapshot(repo)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (repo / JOURNAL_FILENAME).exists() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.0005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    # 143: the process answered the signal itself after rolling back (or, past the commit
    # record, completing); -15: the signal came after publishing, with Python's default.
    assert proc.returncode in (128 + signal.SIGTERM, -signal.SIGTERM), err.decode()[-2000:]
    assert not (repo / JOURNAL_FILENAME).exists()  # nothing left to repair either way
    assert publish_problems(repo) == [] and validate_repository(repo) == []
    if versions(repo / "classifier") == [1]:
        assert snapshot(repo) == before and proc.returncode == 143
    else:
        assert served_by_policy(repo) == [2]
