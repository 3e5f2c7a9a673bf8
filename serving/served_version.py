"""The served model version: the repository's, with one override for canaries.

**Precedence.** A server serves the version its repository asks for (model_repository/
policy.py: the highest version both preprocess's and classifier's version policies serve),
and follows it while running (serving/follow.py: `--poll-secs`). `--served-version` /
PLANTDX_SERVED_VERSION changes that in one of two ways:

- `N@S` (what the canary component sets): serve N *in place of* S, that is only while the
  repository asks for S. A promotion or roll-back written into the repository (`plantdx repo
  pin`, `plantdx promote`) asks for something else, and then the repository wins: on the
  running server within the poll interval and on every restart. The override never outlives
  the version it replaced.
- `N`: serve N whatever the repository asks (an explicit override, for a deployment that must
  hold a version); a server whose repository asks for another version logs it, and `plantdx
  models status` shows both.
- empty: the repository's version.

How a pinned start works: the server is started on a *view* of the repository, built under
/tmp before Triton starts. Every model directory of the view is a symbolic link to the real one,
except `preprocess` and `classifier`, whose directories hold links to each version and to every
other file, and a copy of config.pbtxt whose `version_policy` is `specific { versions: N }`.
Triton therefore loads version N at startup with the repository's own startup models
(--load-model=plantdx), and its HTTP port, and so the pod's readiness, comes up only once
version N is loaded: there is no moment at which another version answers. The repository itself
is never written (it is a read-only volume in a pod). A view needs a repository on a file
system; an s3:// repository is pinned in the repository itself (`plantdx repo pin`).

Only the standard library: this runs in the serving image, which has no protobuf.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from plantdx.exceptions import RepositoryError, ServerError

# Re-exported: the CLI and tests reach the view through this module.
from .local_view import PINNED_MODELS
from .local_view import VIEW_PREFIX as VIEW_PREFIX
from .local_view import build_view as build_view
from .local_view import pin_config_text as pin_config_text

if TYPE_CHECKING:
    from .server import TritonServer

log = logging.getLogger("plantdx.supervise")

ENV_VAR = "PLANTDX_SERVED_VERSION"


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


@dataclass(frozen=True)
class ServedSpec:
    """`N`: serve N whatever the repository asks (an override, logged while they differ);
    `N@S`: serve N in place of S, that is only while the repository asks for S (a canary: a
    promotion or roll-back written into the repository wins, on the running pod and after
    every restart)."""

    version: int
    over: int | None = None

    def target(self, asked: int) -> int:
        """The version to serve when the repository asks for `asked`."""
        if self.over is not None and asked != self.over:
            return asked
        return self.version

    def __str__(self) -> str:
        return f"{self.version}" + (f"@{self.over}" if self.over is not None else "")


def parse_spec(value: str | int | None) -> ServedSpec | None:
    """None for unset or empty (follow the repository's policy); else `N` or `N@S`."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    version, at, over = text.partition("@")
    n = parse_served_version(version)
    s = parse_served_version(over) if at else None
    if n is None or (at and s is None):
        raise ServerError(f"the served version must be N or N@S, not {text!r}")
    return ServedSpec(n, s)


def spec_from_env(environ: dict[str, str] | None = None) -> ServedSpec | None:
    return parse_spec((os.environ if environ is None else environ).get(ENV_VAR))


def start_version(spec: ServedSpec | None, repository: str | Path) -> int | None:
    """The version a server starting now pins (None: the repository's own policy)."""
    if spec is None:
        return None
    if spec.over is None:
        return spec.version
    from plantdx.model_repository.asked import asked_version

    try:
        asked = asked_version(repository).version
    except RepositoryError as exc:
        raise ServerError(f"cannot read which version {repository} asks for: {exc}") from None
    target = spec.target(asked)
    if target != spec.version:
        log.info(
            "%s=%s: the repository asks for %s, not %s: serving the repository's version",
            ENV_VAR,
            spec,
            asked,
            spec.over,
        )
        return None
    return target


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
    """(version, command line) for the supervisor: the option, else the environment (`N` or
    `N@S`, see ServedSpec); with a version to pin at start, the command line serves a fresh
    view of its repository."""
    spec = parse_spec(option) if option is not None else spec_from_env()
    version = start_version(spec, repository_of(command[1:]))
    if version is None:
        return None, command
    view = build_view(repository_of(command[1:]), version)
    log.info("serving version %s of %s only (view %s)", version, " and ".join(PINNED_MODELS), view)
    return version, [command[0], *with_repository(command[1:], view)]


def followed_command(option: str | None, command: list[str]) -> tuple[int | None, list[str]]:
    """(pinned version or None, command line) for a supervisor that follows the repository:
    the command line always serves a fresh view (serving/view.py) of the repository's version,
    or of the override's when it applies."""
    from plantdx.model_repository.asked import asked_version

    from . import view as views

    spec = parse_spec(option) if option is not None else spec_from_env()
    repository = repository_of(command[1:])
    version = start_version(spec, repository)
    try:
        start = version if version is not None else asked_version(repository).version
        view = views.build(repository, start)
    except RepositoryError as exc:
        raise ServerError(f"cannot serve {repository}: {exc}") from None
    what = "only" if version is not None else "as the repository asks"
    log.info(
        "serving version %s of %s %s (view %s)", start, " and ".join(PINNED_MODELS), what, view
    )
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
