"""The publishing journal: an intent log on disk, so that a change to a live model repository
that fails, or is killed at any moment, is undone or completed.

Every change (a directory made, a staged version renamed into place, a file replaced by rename)
is first recorded in `REPO/.plantdx-journal` (one JSON line, fsynced), then made, then made
durable (the file, then its directory, fsynced). A replaced file's old bytes stay on disk as a
hidden hard link beside it until the change is over. `commit()` records that the change is
complete (after it only cleanup is left). Whoever next takes the repository's lock — the next
export or pin, or `plantdx repo validate --repair` — calls `recover()`: a journal without its
commit record is rolled back, newest change first; one with it is completed. A failure inside
the process rolls back at once. While a journal is open SIGTERM and SIGINT are held
(interrupts.py): the step in progress finishes, the change is rolled back (or, after the
commit record, completed), then the process answers the signal.

    {"op": "begin", "what": "export of version 5", "pid": 123, "at": "..."}
    {"op": "mkdir", "path": "heatmap"}                                    undo: rmdir
    {"op": "stage", "path": "classifier/.staging-1a2b"}                   undo and cleanup: rm -r
    {"op": "move", "src": "classifier/.staging-1a2b", "dest": "classifier/5"}   undo: rm -r dest
    {"op": "put", "path": "plantdx/config.pbtxt", "new": "...", "old": "..."}  undo: old back
    {"op": "commit"}
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from plantdx.exceptions import RepositoryError

from .durable import atomic_write, fsync_dir, fsync_tree, write_new
from .interrupts import Held
from .layout import STAGING_PREFIX

log = logging.getLogger(__name__)

JOURNAL_FILENAME = ".plantdx-journal"
__all__ = [
    "JOURNAL_FILENAME",
    "Journal",
    "PublishInterruptedError",
    "atomic_write",
    "locked",
    "recover",
    "repair",
]


class PublishInterruptedError(RepositoryError):
    """SIGTERM or SIGINT arrived while publishing: the change was rolled back."""


class Journal:
    """`with Journal(repo, "export of version 5") as j: ...; j.commit()` — leaving the block
    without `commit()` (an exception, a held signal) rolls everything back. Hold the
    repository's lock (`locked`) and call `recover` first."""

    def __init__(self, repo: Path, what: str) -> None:
        self.repo = Path(repo)
        self.what = what
        self.path = self.repo / JOURNAL_FILENAME
        self.records: list[dict[str, Any]] = []
        self.committed = False
        self._fd: int | None = None
        self._held: Held | None = None

    # -- the log ---------------------------------------------------------------------------
    def __enter__(self) -> Journal:
        if self.path.exists():
            raise RepositoryError(f"{self.path} is still there: recover the repository first")
        self._held = Held()
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            self._log({"op": "begin", "what": self.what, "pid": os.getpid(), "at": now})
            fsync_dir(self.repo)  # the journal itself is there before the first change
        except BaseException:
            self._close()
            self.path.unlink(missing_ok=True)
            self._held.release()
            raise
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if self.committed:
                finish(self.repo, self.records)
            else:
                undo(self.repo, self.records)
            self._close()
            self.path.unlink(missing_ok=True)
            fsync_dir(self.repo)
        finally:
            held, self._held = self._held, None
            if held is not None:
                held.release()  # raises SystemExit / KeyboardInterrupt for a held signal

    def _log(self, record: dict[str, Any]) -> None:
        assert self._fd is not None, "the journal is not open"
        os.write(self._fd, (json.dumps(record) + "\n").encode())
        os.fsync(self._fd)
        if record["op"] not in ("begin", "commit"):
            self.records.append(record)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _rel(self, path: Path) -> str:
        return str(Path(path).relative_to(self.repo))

    def check(self) -> None:
        """Raise if SIGTERM/SIGINT arrived: the caller's step is done, the rest is undone."""
        if self._held is not None and self._held.pending is not None and not self.committed:
            raise PublishInterruptedError(
                f"{self.what} was interrupted by signal {self._held.pending}; rolled back"
            )

    # -- changes ---------------------------------------------------------------------------
    def mkdir(self, path: Path) -> None:
        """Make `path` and any missing parents (inside the repository), each recorded."""
        missing = []
        while not path.exists():
            missing.append(path)
            path = path.parent
        for p in reversed(missing):
            self.check()
            self._log({"op": "mkdir", "path": self._rel(p)})
            p.mkdir()
            fsync_dir(p.parent)

    def stage(self, model_dir: Path) -> Path:
        """A hidden staging directory inside `model_dir` (Triton ignores non-numeric
        versions); removed when the change ends, whichever way."""
        self.check()
        path = model_dir / f"{STAGING_PREFIX}{secrets.token_hex(6)}"
        self._log({"op": "stage", "path": self._rel(path)})
        path.mkdir()
        return path

    def move_dir(self, src: Path, dest: Path) -> None:
        """Rename a finished (staged) directory into place; never over an existing one."""
        self.check()
        # rename(2) silently replaces an empty directory: check first (under the lock).
        if dest.exists():
            raise RepositoryError(f"{dest} already exists; a version is never overwritten")
        fsync_tree(src)
        self._log({"op": "move", "src": self._rel(src), "dest": self._rel(dest)})
        os.rename(src, dest)
        fsync_dir(dest.parent)
        if src.parent != dest.parent:
            fsync_dir(src.parent)

    def put_file(self, dest: Path, data: bytes) -> None:
        """Replace (or create) one file by rename; its old bytes stay until the end."""
        self.check()
        token = secrets.token_hex(4)
        new = dest.parent / f".{dest.name}.{token}.new"
        old = dest.parent / f".{dest.name}.{token}.old" if dest.is_file() else None
        self._log(
            {
                "op": "put",
                "path": self._rel(dest),
                "new": self._rel(new),
                "old": self._rel(old) if old else None,
            }
        )
        write_new(new, data)
        if old is not None:
            _keep_old(dest, old)
        os.replace(new, dest)
        fsync_dir(dest.parent)

    def commit(self) -> None:
        """The change is complete: from here on it is finished, never undone."""
        self.check()
        self._log({"op": "commit"})
        self.committed = True


def _keep_old(dest: Path, old: Path) -> None:
    try:
        os.link(dest, old)
    except OSError:  # a filesystem without hard links
        shutil.copy2(dest, old)
        with open(old, "rb") as fh:
            os.fsync(fh.fileno())
    fsync_dir(old.parent)


# ---------------------------------------------------------------------------------------------
# Undoing and finishing, in the process or on recovery.


def undo(repo: Path, records: list[dict[str, Any]]) -> list[str]:
    """Roll back `records`, newest first; every step is tried. Returns what could not be."""
    errors = []
    for rec in reversed(records):
        try:
            _undo_one(repo, rec)
        except OSError as exc:
            log.error("could not undo %s in %s: %s", rec, repo, exc)
            errors.append(f"{rec.get('op')} {rec.get('path') or rec.get('dest')}: {exc}")
    return errors


def _undo_one(repo: Path, rec: dict[str, Any]) -> None:
    op = rec["op"]
    if op == "put":
        dest, new = repo / rec["path"], repo / rec["new"]
        new.unlink(missing_ok=True)
        if rec["old"] is None:
            dest.unlink(missing_ok=True)
        else:
            old = repo / rec["old"]
            if old.exists():  # else the old file was never replaced
                os.replace(old, dest)
                old.unlink(missing_ok=True)  # replace() between two links of one file is a no-op
        fsync_dir(dest.parent)
    elif op == "move":
        dest = repo / rec["dest"]
        if dest.exists():
            shutil.rmtree(dest)
            fsync_dir(dest.parent)
    elif op == "stage":
        shutil.rmtree(repo / rec["path"], ignore_errors=True)
    elif op == "mkdir":
        path = repo / rec["path"]
        if path.is_dir():
            _remove_staging(path)
            try:
                path.rmdir()
            except OSError as exc:  # something not of this change is inside: leave it
                if exc.errno != errno.ENOTEMPTY:
                    raise
                log.warning("%s is not empty; left in place", path)
                return
            fsync_dir(path.parent)


def finish(repo: Path, records: list[dict[str, Any]]) -> None:
    """After the commit record: drop the old copies and the staging directories."""
    for rec in records:
        if rec["op"] == "put":
            (repo / rec["new"]).unlink(missing_ok=True)
            if rec["old"]:
                (repo / rec["old"]).unlink(missing_ok=True)
        elif rec["op"] == "stage":
            shutil.rmtree(repo / rec["path"], ignore_errors=True)
    for parent in {(repo / r.get("path", r.get("dest", ""))).parent for r in records}:
        if parent.is_dir():
            fsync_dir(parent)


def read_journal(repo: Path) -> list[dict[str, Any]] | None:
    """The records of a journal left in `repo` (None: there is none). A torn last line is a
    record whose change never started: it is ignored."""
    path = Path(repo) / JOURNAL_FILENAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            break
    return records


def recover(repo: Path) -> str | None:
    """Roll back (or complete, after its commit record) a change that was interrupted; hold the
    lock. Returns what was done, or None when there was nothing to do."""
    repo = Path(repo)
    _remove_stale_staging(repo)
    records = read_journal(repo)
    if records is None:
        return None
    begin = next((r for r in records if r.get("op") == "begin"), {})
    what = begin.get("what", "a change")
    changes = [r for r in records if r.get("op") not in ("begin", "commit")]
    if any(r.get("op") == "commit" for r in records):
        finish(repo, changes)
        done = f"completed the interrupted {what}"
    else:
        errors = undo(repo, changes)
        if errors:
            raise RepositoryError(
                f"could not roll back the interrupted {what} in {repo}: " + "; ".join(errors)
            )
        done = f"rolled back the interrupted {what}"
    (repo / JOURNAL_FILENAME).unlink(missing_ok=True)
    fsync_dir(repo)
    log.warning("%s: %s", repo, done)
    return done


def _remove_staging(model_dir: Path) -> None:
    for p in model_dir.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(p, ignore_errors=True)


def _remove_stale_staging(repo: Path) -> None:
    """Staging directories an interrupted export left (older ones had no journal)."""
    if repo.is_dir():
        for model_dir in repo.iterdir():
            if model_dir.is_dir() and not model_dir.name.startswith("."):
                _remove_staging(model_dir)


# ---------------------------------------------------------------------------------------------
# The lock.


@contextlib.contextmanager
def locked(repo: Path) -> Iterator[None]:
    """One change at a time per repository (flock on the directory itself: no lock file)."""
    fd = os.open(repo, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # some network filesystems have no flock
            log.warning("cannot lock %s (%s); do not run two exports into it at once", repo, exc)
        yield
    finally:
        os.close(fd)


def repair(repo: str | Path) -> str | None:
    """`plantdx repo validate --repair`: wait for the lock, then `recover`."""
    repo = Path(repo)
    if not repo.is_dir():
        raise RepositoryError(f"model repository {repo} does not exist")
    with locked(repo):
        return recover(repo)


def publish_state(repo: str | Path) -> str | None:
    """None when no change is pending; else "running" (a live process holds the lock) or
    "interrupted" (a journal is left and nobody holds the lock)."""
    repo = Path(repo)
    if not (repo / JOURNAL_FILENAME).exists():
        return None
    fd = os.open(repo, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return "running"
        except OSError:
            pass  # no flock here: judge by the journal alone
        return "interrupted" if (repo / JOURNAL_FILENAME).exists() else None
    finally:
        os.close(fd)


def publish_problems(repo: str | Path) -> list[str]:
    """What `plantdx repo validate` says about a pending change (empty: none)."""
    state = publish_state(repo)
    if state is None:
        return []
    what = next(
        (r.get("what") for r in read_journal(Path(repo)) or [] if r.get("op") == "begin"),
        "a change",
    )
    if state == "running":
        return [f"{repo}: {what} is in progress (another process holds the repository's lock)"]
    return [
        f"{repo}: {what} was interrupted and is half done; run `plantdx repo validate --repair "
        f"{repo}` (or the next export or pin) to roll it back or complete it"
    ]
