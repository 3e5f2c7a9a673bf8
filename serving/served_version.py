"""The served model version as a property of the deployment, not of one server's history.

`plantdx serve --served-version N` and `python3 -m plantdx.serving.supervise --served-version N`
(or the environment variable PLANTDX_SERVED_VERSION=N, empty for "what the repository's policy
says") make a server load version N of `preprocess` and `classifier`, published together, and
nothing else, whatever the repository's latest version is. Every pod of a Deployment (or an
Argo Rollout) started with the same value serves the same version, after every restart.

How: the server is started on a *view* of the repository, built under /tmp before Triton starts.
Every model directory of the view is a symbolic link to the real one, except `preprocess` and
`classifier`, whose directories hold links to each version and to every other file, and a copy
of config.pbtxt whose `version_policy` is `specific { versions: N }`. Triton therefore loads
version N at startup with the repository's own startup models (--load-model=plantdx), and its
HTTP port, and so the pod's readiness, comes up only once version N is loaded: there is no
moment at which another version answers. The repository itself is never written (it is a
read-only volume in a pod). This needs a repository on a file system; an s3:// repository is
pinned in the repository itself instead (`plantdx repo pin`, or `plantdx promote`).

Only the standard library: this runs in the serving image, which has no protobuf.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from plantdx.exceptions import ServerError

if TYPE_CHECKING:
    from .server import TritonServer

log = logging.getLogger("plantdx.supervise")

ENV_VAR = "PLANTDX_SERVED_VERSION"
PINNED_MODELS = ("preprocess", "classifier")  # published together as version N
CONFIG = "config.pbtxt"
VIEW_PREFIX = "plantdx-served-"  # views live in the temp directory
_FIELD = re.compile(r"\bversion_policy\s*:?\s*\{")


def parse_served_version(value: str | int | None) -> int | None:
    """None for unset or empty (follow the repository's policy); else a positive version."""
    if value is None:
        return None
    text = str(value).strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ServerError(f"the served version must be a positive integer, not {text!r}")
    return int(text)


def from_env(environ: dict[str, str] | None = None) -> int | None:
    return parse_served_version((os.environ if environ is None else environ).get(ENV_VAR))


def _top_level_spans(text: str) -> list[tuple[int, int]]:
    """Spans of every top-level `version_policy { ... }` field (comments and strings aware)."""
    spans, depth, i, start = [], 0, 0, -1
    while i < len(text):
        ch = text[i]
        if ch == "#":  # a comment runs to the end of the line
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        if ch in "\"'":
            end = i + 1
            while end < len(text) and text[end] != ch:
                end += 2 if text[end] == "\\" else 1
            i = end + 1
            continue
        if depth == 0 and start < 0:
            m = _FIELD.match(text, i)
            if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
                start, i, depth = i, m.end(), 1
                continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0 and start >= 0:
                spans.append((start, i + 1))
                start = -1
            if depth < 0:
                raise ServerError("config.pbtxt has an unbalanced '}'")
        i += 1
    if depth != 0:
        raise ServerError("config.pbtxt has an unbalanced '{'")
    return spans


def pin_config_text(text: str, version: int) -> str:
    """config.pbtxt text with its version policy replaced by `specific { versions: N }`."""
    for start, end in reversed(_top_level_spans(text)):
        text = text[:start] + text[end:]
    return (
        text.rstrip()
        + f"\nversion_policy {{\n  specific {{\n    versions: {int(version)}\n  }}\n}}\n"
    )


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
    for entry in sorted(repo.iterdir()):
        if entry.name not in PINNED_MODELS:
            (view / entry.name).symlink_to(entry)
            continue
        (view / entry.name).mkdir()
        for item in sorted(entry.iterdir()):
            if item.name == CONFIG:
                pinned = pin_config_text(item.read_text(), version)
                (view / entry.name / CONFIG).write_text(pinned)
            else:
                (view / entry.name / item.name).symlink_to(item)
    return view


def with_repository(argv: Sequence[str], repository: str | Path) -> list[str]:
    """A tritonserver command line with its --model-repository replaced (both spellings)."""
    out, i, seen = [], 0, False
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--model-repository="):
            out.append(f"--model-repository={repository}")
            seen = True
        elif arg == "--model-repository" and i + 1 < len(argv):
            out += [arg, str(repository)]
            seen, i = True, i + 1
        else:
            out.append(arg)
        i += 1
    if not seen:
        raise ServerError("the command line has no --model-repository to serve a version of")
    return out


def repository_of(argv: Sequence[str]) -> str:
    """The (last) --model-repository of a tritonserver command line."""
    found = None
    for i, arg in enumerate(argv):
        if arg.startswith("--model-repository="):
            found = arg.split("=", 1)[1]
        elif arg == "--model-repository" and i + 1 < len(argv):
            found = argv[i + 1]
    if found is None:
        raise ServerError("the command line has no --model-repository to serve a version of")
    return found


def pinned_command(option: str | None, command: list[str]) -> tuple[int | None, list[str]]:
    """(version, command line) for the supervisor: the option, else the environment; with a
    version, the command line serves a fresh view of its repository."""
    version = parse_served_version(option) if option is not None else from_env()
    if version is None:
        return None, command
    view = build_view(repository_of(command[1:]), version)
    log.info("serving version %s of %s only (view %s)", version, " and ".join(PINNED_MODELS), view)
    return version, [command[0], *with_repository(command[1:], view)]


def remove_view(command: Sequence[str]) -> None:
    """Remove the view a pinned command line serves (nothing for any other command line)."""
    try:
        repo = Path(repository_of(command[1:]))
    except ServerError:
        return
    if repo.name.startswith(VIEW_PREFIX) and repo.parent == Path(tempfile.gettempdir()):
        shutil.rmtree(repo, ignore_errors=True)


def check_served(server: TritonServer, version: int) -> None:
    """Raise ServerError unless exactly `version` of preprocess and classifier is READY."""
    ready = server._ready_versions()
    if ready is None:
        raise ServerError("could not read the server's model index to check the served version")
    for name in PINNED_MODELS:
        got = sorted(int(v) for m, v in ready if m == name and v.isdigit())
        if got != [version]:
            raise ServerError(
                f"{name} serves version(s) {got or 'none'}, not only version {version}"
            )
