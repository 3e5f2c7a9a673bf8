"""The publishing journal: a publish or pin stopped at every step (as a kill would leave it)
is rolled back or completed by recovery; SIGTERM/SIGINT while publishing finish the step, roll
back (or complete), then exit; `repo validate` reports a half-published repository and
`--repair` fixes it; a server refuses one. The random SIGKILLs of real `plantdx export` and
`plantdx repo pin` processes are tests/model_repository/test_publish_kill.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from plantdx.exceptions import ServerError
from plantdx.export import ExportConfig, export
from plantdx.model_repository import journal as journal_mod
from plantdx.model_repository.config import parse_pbtxt
from plantdx.model_repository.journal import (
    JOURNAL_FILENAME,
    Journal,
    locked,
    publish_problems,
    publish_state,
    recover,
)
from plantdx.model_repository.layout import versions
from plantdx.model_repository.repository import StagedVersion, publish_version
from plantdx.model_repository.served import pin_served_version, served_by_policy
from plantdx.model_repository.validate import validate_repository
from plantdx.preprocessing import PreprocessMeta

from helpers.export import snapshot, tiny_checkpoint


class Crash(BaseException):
    """Stands for SIGKILL: nothing after it runs, not even the rollback."""


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding version 1 (a real export), copied by each test."""
    tmp = tmp_path_factory.mktemp("journal")
    repo = tmp / "repo"
    export(ExportConfig(source=str(tiny_checkpoint(tmp / "best.pt")), repository=str(repo)))
    return repo


@pytest.fixture()
def repo(base: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base, tmp_path / "repo"))


def publish(repo: Path, write: Callable[[StagedVersion], None] | None = None) -> int:
    """The next version, from version 1's ONNX file: publishing alone, no export."""
    onnx = repo / "classifier" / "1" / "model.onnx"

    def files(staged: StagedVersion) -> None:
        shutil.copyfile(onnx, staged.dir / "model.onnx")
        if write:
            write(staged)

    config = parse_pbtxt((repo / "classifier" / "config.pbtxt").read_text())
    cams = next(tuple(o.dims) for o in config.output if o.name == "CAMS")
    return publish_version(
        repo,
        class_names=["a", "b", "c"],
        meta=PreprocessMeta.load(repo / "classifier" / "1" / "preprocessing.json"),
        write_classifier_files=files,
        provenance={"model_name": "test_tiny"},
        cams_dims=cams,
    )


def leftovers(repo: Path) -> list[str]:
    """Whatever a change leaves behind: journal, staging, new and old copies, temp files."""
    hidden = (".staging-", ".new", ".old", ".tmp", JOURNAL_FILENAME)
    return sorted(str(p.relative_to(repo)) for p in repo.rglob(".*") if p.name.endswith(hidden))


@pytest.fixture()
def killed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, int], None]]:
    """`kill(where, n)`: the n-th journal record (where "record": before it is written,
    "after-record": once it is on disk), or the n-th new file / old copy, is the last thing
    that happens; the journal is left as a killed process leaves it."""

    def fake_exit(self: Journal, *exc: object) -> None:
        self._close()  # no rollback, no cleanup: the process is gone
        if self._held is not None:
            self._held.pending = None
            self._held.release()

    def kill(where: str, n: int) -> None:
        calls = [0]
        monkeypatch.setattr(Journal, "__exit__", fake_exit)

        def counted(real: Callable[..., Any], after: bool) -> Callable[..., Any]:
            def wrapper(*args: Any) -> Any:
                calls[0] += 1
                if calls[0] == n and not after:
                    raise Crash(where)
                out = real(*args)
                if calls[0] == n:
                    raise Crash(where)
                return out

            return wrapper

        if where in ("record", "after-record"):
            monkeypatch.setattr(Journal, "_log", counted(Journal._log, where == "after-record"))
        elif where == "new file":
            monkeypatch.setattr(journal_mod, "write_new", counted(journal_mod.write_new, True))
        elif where == "old copy":
            monkeypatch.setattr(journal_mod, "_keep_old", counted(journal_mod._keep_old, True))
        else:
            raise AssertionError(where)

    yield kill


def _records(repo: Path, monkeypatch: pytest.MonkeyPatch, change: Callable[[Path], Any]) -> int:
    """How many journal records `change(repo)` writes (into a copy of `repo`)."""
    n = [0]
    real = Journal._log

    def count(self: Journal, record: dict[str, Any]) -> None:
        n[0] += 1
        real(self, record)

    trial = Path(shutil.copytree(repo, repo.parent / "trial"))
    with monkeypatch.context() as m:
        m.setattr(Journal, "_log", count)
        change(trial)
    shutil.rmtree(trial)
    return n[0]


def _check_recovered(repo: Path, before: dict[str, str], published: bool, want: list[int]) -> None:
    assert publish_state(repo) == "interrupted"
    assert any("--repair" in p for p in publish_problems(repo))
    done = recover(repo)
    assert done and ("completed" in done) == published, done
    assert leftovers(repo) == []
    assert validate_repository(repo) == [] and publish_problems(repo) == []
    if published:
        assert served_by_policy(repo) == want
    else:
        assert snapshot(repo) == before


def test_a_publish_stopped_at_every_step_is_rolled_back_or_completed(
    repo: Path, monkeypatch: pytest.MonkeyPatch, killed: Callable[[str, int], None]
) -> None:
    total = _records(repo, monkeypatch, publish)
    assert total >= 10  # begin, model dirs, staging, two versions, files, configs, commit
    pristine = repo.parent / "pristine"
    shutil.copytree(repo, pristine)
    points = [("record", n) for n in range(2, total + 1)]
    points += [("after-record", n) for n in range(2, total + 1)]
    points += [("new file", 1), ("new file", 3), ("old copy", 1), ("old copy", 2)]
    for where, n in points:
        shutil.rmtree(repo)
        shutil.copytree(pristine, repo)
        before = snapshot(repo)
        killed(where, n)
        with pytest.raises(Crash):
            publish(repo)
        monkeypatch.undo()
        committed = where == "after-record" and n == total
        _check_recovered(repo, before, committed, [2])
    # And the next export recovers by itself.
    killed("record", total - 1)
    with pytest.raises(Crash):
        publish(repo)
    monkeypatch.undo()
    assert publish(repo) == 2 and leftovers(repo) == [] and validate_repository(repo) == []


def test_a_pin_stopped_at_every_step_is_rolled_back_or_completed(
    repo: Path, monkeypatch: pytest.MonkeyPatch, killed: Callable[[str, int], None]
) -> None:
    publish(repo)
    assert served_by_policy(repo) == [2]

    total = _records(repo, monkeypatch, lambda r: pin_served_version(r, 1))
    assert total == 4  # begin, two configs, commit
    for where, n in [("record", 2), ("record", 3), ("after-record", 3), ("after-record", 4)]:
        before = snapshot(repo)
        killed(where, n)
        with pytest.raises(Crash):
            pin_served_version(repo, 1)
        monkeypatch.undo()
        _check_recovered(repo, before, n == total, [1])
        if n == total:
            pin_served_version(repo, 2)  # back, for the next point


def _published(repo: Path) -> bool:
    return versions(repo / "classifier") == [1, 2] and validate_repository(repo) == []


def test_sigterm_while_publishing_rolls_back_then_exits_143(repo: Path) -> None:
    before = snapshot(repo)
    handler = signal.getsignal(signal.SIGTERM)  # not always SIG_DFL: earlier tests may set one

    def term(staged: StagedVersion) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(SystemExit) as stopped:
        publish(repo, term)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert snapshot(repo) == before
    assert signal.getsignal(signal.SIGTERM) == handler  # handlers restored


def test_sigint_while_publishing_rolls_back_then_raises_keyboard_interrupt(repo: Path) -> None:
    before = snapshot(repo)

    def interrupt(staged: StagedVersion) -> None:
        os.kill(os.getpid(), signal.SIGINT)

    # Python's own SIGINT handler, whatever an earlier test in this process left installed.
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            publish(repo, interrupt)
    finally:
        signal.signal(signal.SIGINT, old)
    assert snapshot(repo) == before


def test_sigterm_after_the_commit_record_completes_then_exits(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = journal_mod.finish

    def finish_under_term(*args: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        real(*args)

    monkeypatch.setattr(journal_mod, "finish", finish_under_term)
    with pytest.raises(SystemExit) as stopped:
        publish(repo)
    assert stopped.value.code == 143
    assert _published(repo) and leftovers(repo) == []


def test_a_failing_publish_leaves_nothing_and_needs_no_repair(repo: Path) -> None:
    before = snapshot(repo)

    def broken(staged: StagedVersion) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        publish(repo, broken)
    assert snapshot(repo) == before and publish_problems(repo) == []


def test_validate_reports_an_interrupted_publish_and_repair_fixes_it(
    repo: Path, killed: Callable[[str, int], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    from plantdx.cli import app

    before = snapshot(repo)
    killed("after-record", 8)
    with pytest.raises(Crash):
        publish(repo)
    monkeypatch.undo()
    runner = CliRunner()
    plain = runner.invoke(app, ["repo", "validate", str(repo)])
    assert plain.exit_code == 1
    assert "export of version 2 was interrupted" in plain.output and "--repair" in plain.output
    fixed = runner.invoke(app, ["repo", "validate", str(repo), "--repair", "--json"])
    assert fixed.exit_code == 0, fixed.output
    doc = json.loads(fixed.stdout)
    assert doc["ok"] and doc["repaired"] == "rolled back the interrupted export of version 2"
    assert snapshot(repo) == before
    again = runner.invoke(app, ["repo", "validate", str(repo), "--repair"])
    assert again.exit_code == 0 and "rolled back" not in again.output


def test_a_server_refuses_a_half_published_repository(
    repo: Path, killed: Callable[[str, int], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    from plantdx.serving.server import TritonServer, refuse_half_published

    killed("after-record", 9)
    with pytest.raises(Crash):
        publish(repo)
    monkeypatch.undo()
    with pytest.raises(ServerError, match="interrupted"):
        TritonServer(repository=repo).start()
    recover(repo)
    refuse_half_published(repo)  # repaired: nothing to refuse


def test_a_publish_in_progress_is_reported_as_such(repo: Path) -> None:
    from plantdx.serving.server import refuse_half_published

    with locked(repo), Journal(repo, "export of version 9"):
        assert publish_state(repo) == "running"
        assert "in progress" in publish_problems(repo)[0]
        with pytest.raises(ServerError, match="in progress"):
            refuse_half_published(repo, wait_s=0.3)
    assert publish_state(repo) is None


def test_a_served_version_view_refuses_a_half_published_repository(
    repo: Path, killed: Callable[[str, int], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    from plantdx.serving.served_version import build_view

    killed("after-record", 9)
    with pytest.raises(Crash):
        publish(repo)
    monkeypatch.undo()
    with pytest.raises(ServerError, match="interrupted"):
        build_view(repo, 1, repo.parent / "view")
    recover(repo)
    assert (build_view(repo, 1, repo.parent / "view") / "classifier").is_dir()
