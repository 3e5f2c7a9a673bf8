"""Which version a repository serves, written into the repository itself: preprocess and
classifier get the version policy `specific: [N]`, so every server started on it (every pod,
every restart) serves version N until the next export or pin changes the policy."""

from __future__ import annotations

from pathlib import Path

from plantdx.exceptions import RepositoryError

from .config import parse_pbtxt, to_pbtxt
from .journal import Journal, locked
from .layout import model_policy, served_versions, versions
from .names import CLASSIFIER, PREPROCESS
from .validate import validate_repository


def pin_served_version(repo: str | Path, version: int) -> None:
    """Make `version` the one version of preprocess and classifier that `repo` serves."""
    repo = Path(repo)
    with locked(repo):
        for name in (PREPROCESS, CLASSIFIER):
            if version not in versions(repo / name):
                raise RepositoryError(f"{repo} has no version {version} of {name}")
        journal = Journal()
        try:
            for name in (PREPROCESS, CLASSIFIER):
                path = repo / name / "config.pbtxt"
                cfg = parse_pbtxt(path.read_text())
                cfg.ClearField("version_policy")
                cfg.version_policy.specific.versions.append(int(version))
                journal.put_file(path, to_pbtxt(cfg).encode())
            problems = validate_repository(repo)
            if problems:
                raise RepositoryError(
                    f"serving version {version} would leave {repo} unable to load:\n  - "
                    + "\n  - ".join(problems)
                )
        except BaseException:
            journal.rollback()
            raise


def served_by_policy(repo: str | Path) -> list[int]:
    """The classifier versions a server started on `repo` now would load."""
    model_dir = Path(repo) / CLASSIFIER
    return served_versions(model_policy(model_dir), versions(model_dir))
