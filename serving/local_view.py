"""A view of a repository on a file system that serves one version of preprocess and
classifier: every model directory a symbolic link to the real one, except those two (and
classifier_cams, when the repository has it), which hold links to each version and their own
config.pbtxt pinned to the version (`plantdx serve --served-version`, and the folder view a
following server serves: view.py).

Every config the view writes has its instances sized for the cores this server may use
(`sized_config`: model_repository/instances.py, plantdx.cores), and so does every other model
whose config asks for it (the postprocess): such a model gets a folder of links and its own
config too, instead of a link. The repository is never written."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from plantdx.cores import usable_cores
from plantdx.exceptions import RepositoryError, ServerError
from plantdx.model_repository import policy
from plantdx.model_repository.instances import adapt_config_text, is_auto

VIEW_PREFIX = "plantdx-served-"  # views live in the temp directory
PINNED_MODELS = policy.PAIRED  # published together as version N
CONFIG = "config.pbtxt"


def pinned_models(repo: Path) -> tuple[str, ...]:
    """The models a view pins: the pair and the followers `repo` has (policy.FOLLOWERS)."""
    return policy.versioned_models(m for m in policy.FOLLOWERS if (repo / m / CONFIG).is_file())


def pin_config_text(text: str, version: int) -> str:
    """config.pbtxt text with its version policy replaced by `specific { versions: N }`."""
    try:
        return policy.pin_config_text(text, version)
    except RepositoryError as exc:
        raise ServerError(str(exc)) from None


def sized_config(text: str, model: str) -> str:
    """config.pbtxt text with its instances sized for this server's cores, when it asks for
    that (the `instances: auto` mark); else unchanged."""
    return adapt_config_text(text, usable_cores(), model)


def _sized(entry: Path) -> str | None:
    """The sized config of a model directory that asks to be sized, else None."""
    config = entry / CONFIG
    if not entry.is_dir() or not config.is_file():
        return None
    text = config.read_text()
    return sized_config(text, entry.name) if is_auto(text) else None


def _versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def build_view(repository: str | Path, version: int, dest: str | Path | None = None) -> Path:
    """A view of `repository` that serves only `version` of preprocess and classifier.

    Raises ServerError (naming the versions there are) when either lacks that version."""
    if "://" in str(repository):
        raise ServerError(
            f"a served version needs a repository on a file system, not {repository}: pin the "
            "repository itself instead (plantdx repo pin REPO N)"
        )
    repo = Path(repository).resolve()
    if not repo.is_dir():
        raise ServerError(f"model repository {repo} does not exist")
    from .server import refuse_half_published

    refuse_half_published(repo)  # the view links the repository: it must be whole
    for name in PINNED_MODELS:
        model_dir = repo / name
        if not (model_dir / CONFIG).is_file():
            raise ServerError(f"{repo} has no model {name} (no {name}/{CONFIG})")
        have = _versions(model_dir)
        if version not in have:
            raise ServerError(
                f"{repo} has no version {version} of {name} to serve (it has "
                f"{', '.join(map(str, have)) or 'none'})"
            )
    view = Path(dest) if dest else Path(tempfile.mkdtemp(prefix=VIEW_PREFIX))
    if view.exists():
        shutil.rmtree(view)
    view.mkdir(parents=True)
    models = pinned_models(repo)
    for entry in sorted(repo.iterdir()):
        sized = None if entry.name in models else _sized(entry)
        if entry.name not in models and sized is None:
            (view / entry.name).symlink_to(entry)
            continue
        (view / entry.name).mkdir()
        for item in sorted(entry.iterdir()):
            if item.name == CONFIG:
                text = sized or sized_config(pin_config_text(item.read_text(), version), entry.name)
                (view / entry.name / CONFIG).write_text(text)
            else:
                (view / entry.name / item.name).symlink_to(item)
    return view


def refresh_view(repository: str | Path, view: str | Path) -> None:
    """Link the versions published since `view` was built (a follower may switch to them)."""
    repo, view = Path(repository).resolve(), Path(view)
    for name in pinned_models(repo):
        if not (view / name).is_dir():
            continue
        for item in sorted((repo / name).iterdir()):
            if item.name != CONFIG and not (view / name / item.name).exists():
                (view / name / item.name).symlink_to(item)
