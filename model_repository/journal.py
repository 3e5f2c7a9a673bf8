"""Changes to a live model repository, each with its undo: a failed export undoes all of them."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from plantdx.exceptions import RepositoryError

log = logging.getLogger(__name__)


class Journal:
    """Every change made to the live repository, so that a failure can undo all of them."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def mkdir(self, path: Path) -> None:
        missing = []
        while not path.exists():
            missing.append(path)
            path = path.parent
        for p in reversed(missing):
            p.mkdir()
            self._undo.append(p.rmdir)

    def move_dir(self, src: Path, dest: Path) -> None:
        # rename(2) silently replaces an empty directory: check first (under the repository lock).
        if dest.exists():
            raise RepositoryError(f"{dest} already exists; a version is never overwritten")
        os.rename(src, dest)
        self._undo.append(lambda: shutil.rmtree(dest))

    def put_file(self, dest: Path, data: bytes) -> None:
        """Replace (or create) one file by rename; the old bytes are kept for the undo."""
        old = dest.read_bytes() if dest.is_file() else None
        atomic_write(dest, data)
        if old is None:
            self._undo.append(dest.unlink)
        else:
            self._undo.append(lambda: atomic_write(dest, old))

    def rollback(self) -> None:
        for undo in reversed(self._undo):
            try:
                undo()
            except OSError as exc:  # keep undoing the rest
                log.error("could not undo a repository change: %s", exc)
        self._undo.clear()


def atomic_write(dest: Path, data: bytes) -> None:
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(4)}.tmp"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(repo: Path) -> Iterator[None]:
    """One export at a time per repository (flock on the directory itself: no lock file)."""
    fd = os.open(repo, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # some network filesystems have no flock
            log.warning("cannot lock %s (%s); do not run two exports into it at once", repo, exc)
        yield
    finally:
        os.close(fd)
