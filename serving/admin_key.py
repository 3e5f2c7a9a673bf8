"""The admin key: which of Triton's APIs it guards, the flags that say so, and where a key made
for one run is kept.

Triton 2.51 restricts an API category to requests carrying a header with a given value
(`--http-restricted-api` / `--grpc-restricted-protocol` `<categories>:<header>=<value>`;
categories health, metadata, inference, shared-memory, model-config, model-repository,
statistics, trace, logging, each in at most one flag). plantdx restricts every category that
can change the server or read its internals: loading models (a load may carry files, so an
open one runs any code), system shared memory (registering regions, the way into the Python
backend's own shared memory), trace and log settings (they name files the server writes), and
model configs. Health, metadata and inference stay open: they are the product. Statistics stay
open too: they are the counters the metrics port publishes anyway.

Triton reads the key only from its command line (2.51 has no file or environment form), so
it is visible in that process's /proc/PID/cmdline to the same user and to root. `plantdx serve`
and the supervisor take it from the environment or a file and add the flags themselves, so it
appears in no shell history, container spec or `docker inspect` output.

With no key given, one is made per run and written to a file only this user can read
(`key_file(port)`, one per port the server listens on, removed when the server stops), where
`plantdx models`, `plantdx promote` and the launcher find it for a server on this machine.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from plantdx.exceptions import ServerError
from plantdx.model_repository.names import ADMIN_HEADER

log = logging.getLogger(__name__)

HTTP_FLAG = "--http-restricted-api"
GRPC_FLAG = "--grpc-restricted-protocol"
RESTRICTED = ("model-repository", "model-config", "shared-memory", "trace", "logging")
# What the launcher and the supervisor call with the key: drain, reload, index, configs.
SUPERVISOR_NEEDS = ("model-repository", "model-config")
ENV_KEY_FILE = "PLANTDX_ADMIN_KEY_FILE"


def new_key() -> str:
    return secrets.token_urlsafe(32)


def parse_restrictions(values: Iterable[str]) -> dict[str, tuple[str, str]]:
    """category → (header, value) from the values of one restriction flag, in any order:
    `model-repository,shared-memory:plantdx-key=K` restricts both categories."""
    out: dict[str, tuple[str, str]] = {}
    for value in values:
        categories, colon, setting = value.partition(":")
        header, eq, key = setting.partition("=")
        if not (colon and eq and categories and header):
            raise ServerError(
                f"restriction {value.split('=', 1)[0]}=... is not CATEGORIES:HEADER=VALUE"
            )
        for category in categories.split(","):
            out[category.strip()] = (header.strip(), key)
    return out


def restriction_flags(
    key: str, given_http: Sequence[str] = (), given_grpc: Sequence[str] = ()
) -> list[str]:
    """The flags restricting every category of RESTRICTED that the given flag values leave open."""
    flags = []
    for flag, given in ((HTTP_FLAG, given_http), (GRPC_FLAG, given_grpc)):
        done = parse_restrictions(given)
        missing = [c for c in RESTRICTED if c not in done]
        if missing:
            flags.append(f"{flag}={','.join(missing)}:{ADMIN_HEADER}={key}")
    return flags


def supervisor_key(http: dict[str, tuple[str, str]]) -> str | None:
    """The key the launcher must send for SUPERVISOR_NEEDS, from the HTTP restrictions; None when
    none of them is restricted. Refused when they need different headers or keys."""
    found = {http[c] for c in SUPERVISOR_NEEDS if c in http}
    if not found:
        return None
    if len(found) > 1:
        raise ServerError(
            f"{HTTP_FLAG} restricts {' and '.join(SUPERVISOR_NEEDS)} with different headers or "
            "keys; the supervisor sends one key for the drain and the stub restarts"
        )
    ((header, key),) = found
    if header != ADMIN_HEADER:
        raise ServerError(
            f"{HTTP_FLAG} names header {header!r}; the supervisor sends {ADMIN_HEADER!r} for the "
            "drain and stub restarts"
        )
    return key


def read_key_file(path: str | Path) -> str:
    try:
        key = Path(path).read_text().strip()
    except OSError as exc:
        raise ServerError(f"cannot read the admin key file {path}: {exc.strerror}") from None
    if not key or any(c.isspace() for c in key):
        raise ServerError(f"the admin key file {path} must hold one key (no spaces)")
    return key


# -- keys made for one run ----------------------------------------------------------------------
def key_dir() -> Path:
    """This user's private folder for run keys ($XDG_RUNTIME_DIR/plantdx, else
    /tmp/plantdx-UID), made 0700 and refused when someone else owns it or can open it."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime and Path(runtime).is_dir() else Path(tempfile.gettempdir())
    path = base / ("plantdx" if runtime else f"plantdx-{os.getuid()}")
    try:
        path.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ServerError(f"cannot create the key folder {path}: {exc.strerror}") from None
    _check_private(path, directory=True)
    return path


def _check_private(path: Path, *, directory: bool) -> None:
    st = path.lstat()
    kind_ok = stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)
    if not kind_ok or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise ServerError(
            f"{path} is not private to this user (owner {st.st_uid}, mode "
            f"{stat.S_IMODE(st.st_mode):o}): remove it and start again"
        )


def key_file(port: int) -> Path:
    return key_dir() / f"admin-key.{int(port)}"


def write_key_files(key: str, ports: Iterable[int]) -> list[Path]:
    """The key in a 0600 file per port (written under a temporary name, then renamed)."""
    paths = []
    for port in ports:
        path = key_file(port)
        fd, tmp = tempfile.mkstemp(prefix=".admin-key.", dir=path.parent)  # 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(key + "\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        paths.append(path)
    return paths


def remove_key_files(paths: Iterable[Path], key: str) -> None:
    """Remove the files, unless another run has replaced one with its own key since."""
    for path in paths:
        try:
            if path.read_text().strip() == key:
                path.unlink()
        except OSError:
            pass


def find_key(port: int | None) -> str | None:
    """The key a server on this machine made for `port`; None when there is none to trust."""
    if port is None:
        return None
    try:
        path = key_file(port)
        if not path.exists():
            return None
        _check_private(path, directory=False)
        return read_key_file(path)
    except ServerError as exc:
        log.warning("not using the run key for port %s: %s", port, exc)
        return None


def resolve_key(flags: Mapping[str, Sequence[str]], key: str | None) -> tuple[str, bool]:
    """The key a server runs with, and whether it was made here: the one its command line
    already restricts model control with, else `key`, else a new one."""
    found = supervisor_key(parse_restrictions(flags.get(HTTP_FLAG, [])))
    if found and key and found != key:
        raise ServerError(
            f"the command line's {HTTP_FLAG} and the admin key given apart name different keys"
        )
    if found or key:
        return str(found or key), False
    return new_key(), True
