"""The local view a following server serves, so that the follower decides when Triton sees a
change of version policy.

Triton 2.51 re-reads an ensemble's composing models from its repository whenever the ensemble
is loaded, and reloads those whose files changed: a server serving the repository itself would
jump to a newly pinned version in one uncontrolled step (the old version unloaded under an
ensemble still pinned to it: failed requests). So a following server serves a view under /tmp:

- a folder repository: every model directory a symbolic link to the real one, except
  `preprocess` and `classifier`, which hold links to each version and their own config.pbtxt;
- an `s3://` repository: a copy (a mirror) of the repository, `preprocess` and `classifier`
  with the version served and every newer one (candidates a comparison or a canary loads
  beside it), older ones downloaded when a switch needs them.

`add_new_versions` keeps the view current between switches (the follower calls it at every
look): a folder view links the versions published since it was built, an `s3://` view mirrors
the new ones, so `plantdx compare --url` and `plantdx promote` can load a candidate beside the
served version.

`write_versions` rewrites the two configs from the repository's own text with `specific {
versions: ... }`, step by step as the follower switches (follow.py); the repository is never
written. Models other than preprocess and classifier are read once, at start. Every config the
view writes or mirrors is sized for this server's cores when it asks for that
(local_view.sized_config, model_repository/instances.py).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from plantdx.model_repository.policy import (
    CONFIG,
    FOLLOWERS,
    PAIRED,
    pin_config_text,
    versioned_models,
)

from .local_view import VIEW_PREFIX, build_view, refresh_view, sized_config


def is_s3(location: str | Path) -> bool:
    return str(location).startswith("s3://")


def build(location: str | Path, version: int) -> Path:
    """A fresh view of `location` serving `version` of preprocess and classifier (an s3://
    view also holds every newer version)."""
    if not is_s3(location):
        return build_view(location, version)
    from plantdx.model_repository.s3 import S3Location

    source = S3Location.parse(str(location))
    view = Path(tempfile.mkdtemp(prefix=VIEW_PREFIX))
    try:
        pinned = source.pinned_models()
        for key in source.objects():
            head = key.split("/", 2)
            versioned = head[0] in pinned and len(head) > 2 and head[1].isdigit()
            if versioned and int(head[1]) <= version:
                continue  # the one served: below; older ones: when a switch needs them
            if ".." in head or not key:
                continue
            path = view / key
            if key.endswith("/"):  # a folder marker (an ensemble's empty version folder)
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            data = source.get(key)
            if len(head) == 2 and head[1] == CONFIG:  # a model's config: sized for this server
                data = sized_config(data.decode(), head[0]).encode()
            path.write_bytes(data)
        for model in (p for p in view.iterdir() if p.is_dir()):  # S3 holds no empty folder:
            bare = not any(p.is_dir() and p.name.isdigit() for p in model.iterdir())
            if (model / CONFIG).is_file() and model.name not in pinned and bare:
                (model / "1").mkdir()  # an ensemble's (empty) version folder
        add_version(location, view, version)
        write_versions(location, view, [version])
    except BaseException:
        shutil.rmtree(view, ignore_errors=True)
        raise
    return view


def add_version(location: str | Path, view: Path, version: int) -> None:
    """Make `version` of preprocess and classifier available in the view."""
    if not is_s3(location):
        refresh_view(location, view)
        return
    from plantdx.model_repository.s3 import S3Location

    source = S3Location.parse(str(location))
    for name in pinned(view):
        if not (view / name / str(version)).is_dir():
            # Downloaded beside the view, then renamed in: Triton never sees half a version.
            staging = Path(tempfile.mkdtemp(prefix=".plantdx-download-", dir=view.parent))
            try:
                found = source.download(staging, name, str(version))
                if not found and name not in PAIRED:
                    continue  # a follower without this version: no explanations for it
                (staging / name / str(version)).mkdir(parents=True, exist_ok=True)  # empty
                (staging / name / str(version)).rename(view / name / str(version))
            finally:
                shutil.rmtree(staging, ignore_errors=True)


def pinned(view: Path) -> tuple[str, ...]:
    """The models the view pins: the pair and the followers it holds with configs of its own
    (policy.FOLLOWERS; never one linked to the repository, whose config is not the view's)."""
    own = [m for m in FOLLOWERS if not (view / m).is_symlink() and (view / m / CONFIG).is_file()]
    return versioned_models(own)


def add_new_versions(
    location: str | Path, view: Path, available: dict[str, list[int]] | None, served: int
) -> list[int]:
    """Make the versions published since the view was built loadable in it (a folder view: all
    of them, by link; an `s3://` view: those newer than `served`, downloaded). `available` is
    what the repository holds per paired model (model_repository.policy.Asked). Returns the
    versions added to an `s3://` view."""
    if not is_s3(location):
        refresh_view(location, view)
        return []
    if not available:
        return []
    common = set.intersection(*(set(available.get(name, [])) for name in PAIRED))
    added = []
    for version in sorted(v for v in common if v > served):
        if not all((view / name / str(version)).is_dir() for name in PAIRED):
            add_version(location, view, version)
            added.append(version)
    return added


def write_versions(location: str | Path, view: Path, versions: list[int]) -> None:
    """The view's preprocess and classifier configs (and its followers'): the repository's,
    serving `versions`."""
    names = pinned(view)
    if is_s3(location):
        from plantdx.model_repository.s3 import S3Location

        source = S3Location.parse(str(location))
        texts = {name: source.get(name, CONFIG).decode() for name in names}
    else:
        repo = Path(location)
        texts = {name: (repo / name / CONFIG).read_text() for name in names}
    for name in names:
        path = view / name / CONFIG
        tmp = path.with_name(CONFIG + ".tmp")
        tmp.write_text(sized_config(pin_config_text(texts[name], versions), name))
        tmp.replace(path)


def drop_versions(location: str | Path, view: Path, keep: list[int]) -> None:
    """Remove the mirrored versions older than those served, `keep` (an s3:// view only; links
    stay): newer ones stay for comparisons and canaries."""
    if not is_s3(location):
        return
    for name in pinned(view):
        for entry in (view / name).iterdir():
            if entry.is_dir() and entry.name.isdigit() and int(entry.name) < min(keep):
                shutil.rmtree(entry, ignore_errors=True)
