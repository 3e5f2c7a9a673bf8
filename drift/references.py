"""The drift references of a model repository's versions (`classifier/N/reference.json`)."""

from __future__ import annotations

from pathlib import Path

from plantdx.exceptions import RepositoryError
from plantdx.model_repository.names import CLASSIFIER, PREPROCESS
from plantdx.model_repository.repository import versions
from plantdx.preprocessing import META_FILENAME, PreprocessMeta
from plantdx.reference import REFERENCE_FILENAME, Reference


def reference_path(repo: Path, version: str | int) -> Path:
    return Path(repo) / CLASSIFIER / str(version) / REFERENCE_FILENAME


def repository_references(repo: str | Path) -> dict[str, Reference | None]:
    """version → its reference (None for a version exported without one)."""
    root = Path(repo)
    found = versions(root / CLASSIFIER)
    if not found:
        raise RepositoryError(f"{root} holds no classifier version (is it a model repository?)")
    out: dict[str, Reference | None] = {}
    for v in found:
        path = reference_path(root, v)
        out[str(v)] = Reference.load(path) if path.is_file() else None
    return out


def preprocess_meta(repo: str | Path, version: str) -> PreprocessMeta:
    """The preprocessing a version serves with: its photos' statistics are computed after it."""
    for model in (PREPROCESS, CLASSIFIER):
        path = Path(repo) / model / version / META_FILENAME
        if path.is_file():
            return PreprocessMeta.load(path)
    raise RepositoryError(f"version {version} of {repo} has no {META_FILENAME}")
