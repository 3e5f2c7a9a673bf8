"""Which version a repository serves, written into the repository itself: preprocess and
classifier (and classifier_cams, when the repository has it) get the version policy
`specific: [N]`, so every server started on it (every pod, every restart) serves version N
until the next export or pin changes the policy."""

from __future__ import annotations

from pathlib import Path

from plantdx.exceptions import RepositoryError

from .config import parse_pbtxt, to_pbtxt
from .journal import Journal, locked, recover
from .layout import model_policy, served_versions, versions
from .names import CLASSIFIER, PREPROCESS
from .policy import FOLLOWERS, versioned_models
from .validate import validate_repository


def pinned_models(repo: Path) -> tuple[str, ...]:
    """The models a pin writes: preprocess, classifier and the followers the repository has."""
    present = [name for name in FOLLOWERS if (repo / name / "config.pbtxt").is_file()]
    return versioned_models(present)


def pin_served_version(repo: str | Path, version: int) -> None:
    """Make `version` the one version of preprocess and classifier that `repo` serves."""
    repo = Path(repo)
    if not repo.is_dir():
        raise RepositoryError(f"model repository {repo} does not exist")
    with locked(repo):
        recover(repo)  # an export or pin that was killed: rolled back or completed first
        for name in (PREPROCESS, CLASSIFIER):
            if version not in versions(repo / name):
                raise RepositoryError(f"{repo} has no version {version} of {name}")
        new = {}
        for name in pinned_models(repo):  # a follower without N: no explanations for N
            path = repo / name / "config.pbtxt"
            cfg = parse_pbtxt(path.read_text())
            cfg.ClearField("version_policy")
            cfg.version_policy.specific.versions.append(int(version))
            new[path] = to_pbtxt(cfg).encode()
        with Journal(repo, f"pin of version {version}") as journal:
            for path, data in new.items():
                journal.put_file(path, data)
            problems = validate_repository(repo)
            if problems:
                raise RepositoryError(
                    f"serving version {version} would leave {repo} unable to load:\n  - "
                    + "\n  - ".join(problems)
                )
            journal.commit()


def restore_configs(repo: str | Path, configs: dict[str, bytes]) -> None:
    """Put back preprocess and classifier configs saved before a change (`saved_configs`),
    through the journal: a failed promotion's undo of its pin."""
    repo = Path(repo)
    with locked(repo):
        recover(repo)
        with Journal(repo, "restoring the served version") as journal:
            for name, data in configs.items():
                path = repo / name / "config.pbtxt"
                if path.read_bytes() != data:
                    journal.put_file(path, data)
            journal.commit()


def saved_configs(repo: str | Path) -> dict[str, bytes]:
    """The configs a pin writes, as they are now (for `restore_configs`)."""
    return {
        name: (Path(repo) / name / "config.pbtxt").read_bytes()
        for name in pinned_models(Path(repo))
    }


def served_by_policy(repo: str | Path) -> list[int]:
    """The classifier versions a server started on `repo` now would load."""
    model_dir = Path(repo) / CLASSIFIER
    return served_versions(model_policy(model_dir), versions(model_dir))
