"""Writing files so that they survive a crash: fsync of files and of the directories whose
entries changed (a rename is durable only once its directory is)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory; nothing more to do there
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Every file under `root`, then every directory, deepest first."""
    dirs = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            fsync_file(Path(dirpath) / name)
        dirs += [Path(dirpath) / d for d in dirnames]
    for d in reversed(dirs):
        fsync_dir(d)


def write_new(path: Path, data: bytes) -> None:
    """Create `path` (it must not exist) with `data`, fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(dest: Path, data: bytes) -> None:
    """Replace `dest` by rename: readers see the old bytes or the new ones, never a mix, and
    the new ones survive a crash once this returns."""
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(4)}.tmp"
    try:
        write_new(tmp, data)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)
