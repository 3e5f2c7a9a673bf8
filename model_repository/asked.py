"""The version a repository asks to be served, wherever it is: a folder or s3:// (policy.py
reads the text, s3.py the bucket). Standard library only: the serving image reads it."""

from __future__ import annotations

from pathlib import Path

from plantdx.exceptions import RepositoryError

from .policy import CONFIG, PAIRED, Asked, asked_from


def _local_versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def asked_version(location: str | Path) -> Asked:
    """The version the repository at `location` (a folder or s3://...) asks for now."""
    text = str(location)
    if text.startswith("s3://"):
        from .s3 import S3Location

        return S3Location.parse(text).asked()
    repo = Path(text)
    configs, available = {}, {}
    for name in PAIRED:
        path = repo / name / CONFIG
        if not path.is_file():
            raise RepositoryError(f"{repo} has no model {name} (no {name}/{CONFIG})")
        configs[name] = path.read_text()
        available[name] = _local_versions(repo / name)
    return asked_from(configs, available, str(repo))
