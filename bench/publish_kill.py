"""The kill test of publishing (`plantdx bench kill-publish`): real `plantdx export` and `plantdx
repo pin` processes SIGKILLed at random moments, each followed by `plantdx repo validate` (and,
when it fails, the documented repair, `plantdx repo validate --repair`) and a fresh Triton
server (the pip wheel's) on the repository, which must serve one version whose preprocess,
classifier and decision rule belong together (served_check.py).

Every run has its own seed (`--seed` + run number), which picks the command, the checkpoint or
version, and the moment: most kills land while the repository is being changed (a random delay
after the journal appears, up to the journal's measured lifetime), some just after the
journal's commit record (up to 10 ms: the change is complete, its cleanup is not), the rest
anywhere in the process's life. The checkpoints are tiny (`test_tiny`, 64 px) with different weights and
different temperatures, so any mix of two versions shows in the served probabilities.
"""

from __future__ import annotations

import json
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from plantdx.exceptions import ConfigError
from plantdx.model_repository.journal import JOURNAL_FILENAME, read_journal
from plantdx.model_repository.layout import versions
from plantdx.model_repository.names import CLASSIFIER
from plantdx.model_repository.served import served_by_policy

from .served_check import check_served, probe_image

CHECKPOINTS = 4
MOMENTS = ("publishing", "committed", "anytime")
TEMPERATURES = (1.0, 1.6, 2.3, 3.1)


@dataclass
class KillRun:
    run: int
    seed: int
    command: str  # export | pin
    target: int  # the version the command publishes or pins
    moment: str  # after the journal appeared (publishing), its commit record (committed), the start
    delay_s: float
    killed: bool  # the process was still running when SIGKILL was sent
    journal_records: int | None  # changes recorded in the journal it left; None: none left
    committed: bool  # that journal had its commit record
    validate_rc: int
    repair: str | None  # what `--repair` did (None: not needed, or nothing to do)
    repair_rc: int | None
    served_before: list[int]
    served: int | None  # the version the fresh server served
    outcome: str  # unchanged | changed: served version before or after the command
    consistent: bool
    max_abs_diff: float | None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def make_checkpoints(out: Path) -> list[Path]:
    """`CHECKPOINTS` test_tiny checkpoints: other weights and another temperature each."""
    import torch

    from plantdx.checkpoint import Checkpoint, save_checkpoint
    from plantdx.decision import DecisionRule
    from plantdx.models import create_model, get_spec, model_kwargs_for_checkpoint

    paths = []
    for i in range(CHECKPOINTS):
        torch.manual_seed(i)
        model = create_model("test_tiny", num_classes=3)
        ckpt = Checkpoint(
            "test_tiny",
            ["leaf_a", "leaf_b", "leaf_c"],
            get_spec("test_tiny").preprocessing(64),
            model.state_dict(),
            model_kwargs_for_checkpoint(model),
            decision=DecisionRule(temperature=TEMPERATURES[i]).to_dict(),
        )
        paths.append(Path(save_checkpoint(ckpt, out / f"ckpt{i}.pt")))
    return paths


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "plantdx", "--quiet", *args]


def _export_cmd(ckpt: Path, repo: Path) -> list[str]:
    return _cli("export", str(ckpt), "--to", "onnx", "--repository", str(repo))


def _pin_cmd(repo: Path, version: int) -> list[str]:
    return _cli("repo", "pin", str(repo), str(version))


def _timed(cmd: list[str], repo: Path, log: Path) -> tuple[float, float]:
    """Run `cmd` to the end: (its wall time, how long its journal existed)."""
    journal = repo / JOURNAL_FILENAME
    start = time.monotonic()
    seen: list[float] = []
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=fh)
        while proc.poll() is None:
            if journal.exists() != (len(seen) == 1):
                seen.append(time.monotonic())
            time.sleep(0.0005)
    end = time.monotonic()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {proc.returncode}); see {log}")
    if not seen:
        raise RuntimeError(f"{' '.join(cmd)} never wrote {journal}")
    return end - start, (seen[1] if len(seen) > 1 else end) - seen[0]


def _committed(journal: Path) -> bool:
    try:
        return '"op": "commit"' in journal.read_text()
    except FileNotFoundError:
        return False


def _kill_at(cmd: list[str], repo: Path, log: Path, moment: str, delay: float) -> bool:
    """Start `cmd`, SIGKILL it at the moment; True when it was still running then."""
    journal = repo / JOURNAL_FILENAME
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=fh)
        if moment in ("publishing", "committed"):
            while proc.poll() is None and not journal.exists():
                time.sleep(0.0005)
        if moment == "committed":  # the change is complete, its cleanup is not
            while proc.poll() is None and journal.exists() and not _committed(journal):
                time.sleep(0.0002)
        time.sleep(delay)
        alive = proc.poll() is None
        if alive:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    return alive


def _validate(repo: Path, log: Path) -> tuple[int, str | None, int | None]:
    """`plantdx repo validate`, then `--repair` when it fails: (rc, what repair did, its rc)."""
    with open(log, "ab") as fh:
        rc = subprocess.run(_cli("repo", "validate", str(repo)), stdout=fh, stderr=fh).returncode
    if rc == 0:
        return rc, None, None
    done = subprocess.run(
        _cli("repo", "validate", "--repair", "--json", str(repo)), capture_output=True, text=True
    )
    with open(log, "a") as fh:
        fh.write(done.stdout + done.stderr)
    try:
        repaired = json.loads(done.stdout).get("repaired")
    except ValueError:
        repaired = None
    return rc, repaired, done.returncode


def serve_and_check(
    repo: Path, image: bytes, expected: list[list[int]], checkpoints: list[Path], log: Path
) -> tuple[int | None, bool, float | None, list[str]]:
    """A fresh server on `repo`: (version served, consistent, max abs difference, problems)."""
    from plantdx.serving.server import TritonServer, free_port

    key = secrets.token_hex(16)
    server = TritonServer(
        admin_key=key,
        repository=repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        load_models=["plantdx"],
        log_file=log,
        restart_dead_stubs=False,
    )
    try:
        server.start(timeout_s=180)
        served = check_served(server.http_url, repo, image, expected, checkpoints, key)
    except Exception as exc:  # a server that does not start is a failed run, not a crash
        return None, False, None, [f"{type(exc).__name__}: {exc}"]
    finally:
        server.stop()
    return served.version, served.consistent, served.max_abs_diff, served.problems


def run_kill_test(
    work: str | Path,
    runs: int = 50,
    seed: int = 0,
    export_share: float = 0.5,
    anytime_share: float = 0.1,
    committed_share: float = 0.15,
    on_run: Callable[[KillRun], None] | None = None,
) -> dict[str, Any]:
    """`runs` killed commands into one repository under `work`; the report as a dict."""
    work = Path(work)
    repo, log = work / "repo", work / "kill-test.log"
    if repo.exists():
        raise ConfigError(f"{repo} already exists: give the kill test an empty --work folder")
    work.mkdir(parents=True, exist_ok=True)
    ckpts = make_checkpoints(work / "checkpoints")
    image = probe_image()
    # Versions 1 and 2 untouched; their timings size the random moments.
    export_s, export_journal_s = _timed(_export_cmd(ckpts[0], repo), repo, log)
    _timed(_export_cmd(ckpts[1], repo), repo, log)
    pin_s, pin_journal_s = _timed(_pin_cmd(repo, 1), repo, log)
    results: list[KillRun] = []
    started = time.monotonic()
    for i in range(runs):
        run_seed = seed + i
        rng = random.Random(run_seed)
        t0 = time.monotonic()
        before = served_by_policy(repo)
        if rng.random() < export_share:
            command = "export"
            target = max(versions(repo / CLASSIFIER)) + 1
            cmd = _export_cmd(rng.choice(ckpts), repo)
            total_s, journal_s = export_s, export_journal_s
        else:
            command = "pin"
            target = rng.choice(versions(repo / CLASSIFIER))
            cmd = _pin_cmd(repo, target)
            total_s, journal_s = pin_s, pin_journal_s
        draw = rng.random()
        moment = (
            "anytime"
            if draw < anytime_share
            else "committed"
            if draw < anytime_share + committed_share
            else "publishing"
        )
        # A little past the journal's lifetime: the end of a change is a moment too.
        delay = rng.uniform(
            0, {"anytime": total_s, "committed": 0.01, "publishing": 1.1 * journal_s}[moment]
        )
        killed = _kill_at(cmd, repo, log, moment, delay)
        left = read_journal(repo)
        changes = [r for r in left or [] if r.get("op") not in ("begin", "commit")]
        committed = any(r.get("op") == "commit" for r in left or [])
        validate_rc, repair, repair_rc = _validate(repo, log)
        served, consistent, diff, problems = serve_and_check(
            repo, image, [before, [target]], ckpts, log
        )
        if repair_rc not in (None, 0):
            problems.append(f"validate --repair exited {repair_rc}")
        result = KillRun(
            run=i,
            seed=run_seed,
            command=command,
            target=target,
            moment=moment,
            delay_s=round(delay, 4),
            killed=killed,
            journal_records=len(changes) if left is not None else None,
            committed=committed,
            validate_rc=validate_rc,
            repair=repair,
            repair_rc=repair_rc,
            served_before=before,
            served=served,
            outcome="unchanged" if served is not None and [served] == before else "changed",
            consistent=consistent and not problems,
            max_abs_diff=diff,
            problems=problems,
            seconds=round(time.monotonic() - t0, 2),
        )
        results.append(result)
        if on_run:
            on_run(result)
    return summarize(results, seed, time.monotonic() - started, export_journal_s, pin_journal_s)


def summarize(
    results: list[KillRun], seed: int, seconds: float, export_journal_s: float, pin_journal_s: float
) -> dict[str, Any]:
    from .report import machine

    killed = [r for r in results if r.killed]

    def count(pred: Callable[[KillRun], bool]) -> int:
        return sum(1 for r in results if pred(r))

    return {
        "machine": machine(),
        "seed": seed,
        "seeds": [r.seed for r in results],
        "runs": len(results),
        "killed": len(killed),
        "exports": count(lambda r: r.command == "export"),
        "pins": count(lambda r: r.command == "pin"),
        "moments": {m: count(lambda r, m=m: r.moment == m) for m in MOMENTS},  # type: ignore[misc]
        "killed_mid_change": count(lambda r: r.killed and r.journal_records is not None),
        "left_committed": count(lambda r: r.committed),
        "needed_repair": count(lambda r: r.validate_rc != 0),
        "rolled_back": count(lambda r: bool(r.repair and "rolled back" in r.repair)),
        "completed": count(lambda r: bool(r.repair and "completed" in r.repair)),
        "valid_after_repair": count(lambda r: r.repair_rc in (None, 0)),
        "consistent": count(lambda r: r.consistent),
        "served_unchanged": count(lambda r: r.outcome == "unchanged"),
        "served_changed": count(lambda r: r.outcome == "changed"),
        "max_abs_diff": max((r.max_abs_diff or 0.0) for r in results) if results else None,
        "journal_lifetime_s": {"export": export_journal_s, "pin": pin_journal_s},
        "seconds": round(seconds, 1),
        "passed": bool(results) and all(r.consistent for r in results),
        "results": [asdict(r) for r in results],
    }
