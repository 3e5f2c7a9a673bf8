"""A model repository wherever it is, for the commands that change which version it serves and
record decisions in it (`plantdx promote`): a folder, changed through the journal (served.py),
or `s3://...`, changed through the S3 API (s3.py), with nothing written on this machine. Every
server following the repository (`plantdx serve`, the container supervisor) moves by itself
within its poll interval.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from plantdx.exceptions import RepositoryError

from .journal import atomic_write, locked
from .layout import read_json, versions
from .names import CLASSIFIER
from .policy import CONFIG


class FolderRepository:
    """A repository on this machine's file system."""

    is_remote = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = str(path)

    def check(self) -> None:
        if not (self.path / CLASSIFIER).is_dir():
            raise RepositoryError(
                f"{self.path} is not a plantdx model repository (no {CLASSIFIER}/)"
            )

    def versions(self, model: str) -> list[int]:
        return versions(self.path / model)

    def saved_configs(self) -> dict[str, bytes]:
        from .served import saved_configs

        return saved_configs(self.path)

    def pin(self, version: int) -> None:
        from .served import pin_served_version

        pin_served_version(self.path, version)

    def restore_configs(self, configs: dict[str, bytes]) -> None:
        from .served import restore_configs

        restore_configs(self.path, configs)

    def version_json(self, version: int, filename: str) -> dict[str, Any]:
        """classifier/N/FILENAME ({} when absent)."""
        return read_json(self.path / CLASSIFIER / str(version) / filename)

    def append_record(self, version: int, filename: str, doc: dict[str, Any]) -> str:
        """Append `doc` to the JSON list classifier/N/FILENAME; returns where it is."""
        path = self.path / CLASSIFIER / str(version) / filename
        with locked(self.path):
            history = _history(path.read_bytes() if path.is_file() else None)
            history.append(doc)
            atomic_write(path, _dump(history))
        return str(path)


class S3Repository:
    """A repository in a bucket (`s3://[HOST:PORT/]BUCKET/PREFIX`, s3.py)."""

    is_remote = True

    def __init__(self, url: str) -> None:
        from .s3 import S3Location

        self.location = S3Location.parse(url)
        self.url = url

    def check(self) -> None:
        if not self.location.versions(CLASSIFIER):
            raise RepositoryError(
                f"{self.url} is not a plantdx model repository (no version of {CLASSIFIER})"
            )

    def versions(self, model: str) -> list[int]:
        return self.location.versions(model)

    def saved_configs(self) -> dict[str, bytes]:
        return {name: self.location.get(name, CONFIG) for name in self.location.pinned_models()}

    def pin(self, version: int) -> None:
        self.location.pin(version)

    def restore_configs(self, configs: dict[str, bytes]) -> None:
        for name, data in configs.items():
            if self.location.get(name, CONFIG) != data:
                self.location.put(data, name, CONFIG)

    def version_json(self, version: int, filename: str) -> dict[str, Any]:
        from .s3 import S3NotFoundError

        try:
            doc = json.loads(self.location.get(CLASSIFIER, str(version), filename))
        except S3NotFoundError:
            return {}
        except ValueError as exc:
            raise RepositoryError(f"{self.url}: {CLASSIFIER}/{version}/{filename}: {exc}") from None
        return doc if isinstance(doc, dict) else {}

    def append_record(self, version: int, filename: str, doc: dict[str, Any]) -> str:
        from .s3 import S3NotFoundError

        parts = (CLASSIFIER, str(version), filename)
        try:
            old: bytes | None = self.location.get(*parts)
        except S3NotFoundError:
            old = None
        history = _history(old)
        history.append(doc)
        self.location.put(_dump(history), *parts)
        return f"{self.url.rstrip('/')}/{'/'.join(parts)}"


Repository = FolderRepository | S3Repository


def open_repository(where: str | Path) -> Repository:
    """The repository at `where`: `s3://...` or a folder."""
    text = str(where)
    if not text:
        raise RepositoryError("no model repository given (--repository DIR or s3://...)")
    return S3Repository(text) if text.startswith("s3://") else FolderRepository(text)


def _history(data: bytes | None) -> list[Any]:
    """A record file's entries: a list (one older format held a single object)."""
    if not data:
        return []
    with contextlib.suppress(ValueError):
        loaded = json.loads(data)
        return loaded if isinstance(loaded, list) else [loaded]
    return []


def _dump(history: list[Any]) -> bytes:
    return (json.dumps(history, indent=2, default=str) + "\n").encode()
