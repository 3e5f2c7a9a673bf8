"""What a server start checks and loads: a repository that an export or pin was killed in is
refused, the ports must be free, the ensembles the repository has are loaded; a failed start is
explained by the lines of its log that say why; a start that crashed is tried once more."""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from plantdx.exceptions import ServerError

from .procs import port_free


def refuse_half_published(repository: Path, wait_s: float = 60.0) -> None:
    """A repository that an export or pin was killed in may hold preprocess N beside
    classifier N-1: refuse it until it is repaired. One being published now is waited for."""
    from plantdx.model_repository.journal import publish_problems, publish_state

    deadline = time.monotonic() + wait_s
    while publish_state(repository) == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
    problems = publish_problems(repository)
    if problems:
        raise ServerError(f"not serving {repository}: {problems[0]}")


def default_models(repository: str | Path) -> list[str]:
    """The models a server loads at start: the ensembles the repository has (plantdx first)."""
    if str(repository).startswith("s3://"):
        from plantdx.model_repository.s3 import S3Location

        explain = "plantdx_explain" in S3Location.parse(str(repository)).folders()
    else:
        explain = (Path(repository) / "plantdx_explain" / "config.pbtxt").is_file()
    return ["plantdx", *(["plantdx_explain"] if explain else [])]


def require_free_ports(host: str, ports: Mapping[str, int]) -> None:
    """Refuse to start when any of `ports` (name → port) is in use on `host`."""
    for name, port in ports.items():
        if not port_free(host, port):
            raise ServerError(
                f"{name} port {port} on {host} is already in use: stop whatever holds "
                f"it or choose another port (--{name.lower()}-port)"
            )


def log_tail(path: Path | None, secret: str, n: int = 8) -> str:
    """Triton's error lines (E<date> ...), which say why, and the last `n` lines, which say where
    it stopped, with `secret` masked; empty without a log."""
    if not path or not path.is_file():
        return ""
    lines = path.read_text(errors="replace").splitlines()
    errors = [i for i, line in enumerate(lines) if line[:1] == "E" and line[1:5].isdigit()]
    keep = sorted(set(errors[-8:]) | set(range(max(0, len(lines) - n), len(lines))))
    text = "\n".join(lines[i].replace(secret, "***") if secret else lines[i] for i in keep)
    return "\nlast lines of the server log (and its errors):\n" + text


# A start that dies of one of these signals is tried once more (TritonServer.start): the pip
# wheel's Triton 2.51 has been seen to abort in its gRPC event engine before loading anything.
CRASH_SIGNALS = frozenset({signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS})
START_ATTEMPTS = 2


def crashed(returncode: int | None) -> bool:
    """Whether a process's exit status says it died of a crash signal."""
    return returncode is not None and -returncode in CRASH_SIGNALS


def http_status(url: str, timeout: float = 2.0) -> int:
    """The HTTP status of a GET, or 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0
