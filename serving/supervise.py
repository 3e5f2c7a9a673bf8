"""Run a tritonserver command line under supervision: the container entrypoint of plantdx.

    python3 -m plantdx.serving.supervise [--startup-timeout S] [--served-version N] \
        [--admin-key-file FILE] -- tritonserver FLAGS...

Triton 2.51 on its own leaves two gaps a deployment would meet:

- a Python-backend stub that dies (OOM-killed, crashed) is not restarted, and Triton stays
  live and ready while every request to that model fails "Stub process is not healthy";
- SIGTERM stops every model's scheduler at once, so requests already inside the ensemble fail.

This wrapper runs Triton with the flags as given (the NGC image's own binary and backends, any
repository location) and adds what `plantdx serve` adds locally: the stub watchdog, which
reloads a model whose stub died, and on SIGTERM a drain (the startup models are unloaded, the
requests inside them finish) before Triton is stopped. It needs only the standard library and
the plantdx package, so it runs in the serving image. Its exit code is Triton's.

Every API but inference, health, metadata and statistics is restricted to requests with the
header `plantdx-key` (serving/admin_key.py): the categories the flags leave open are restricted
by the supervisor, with the key the flags already use, else the one in `--admin-key-file`
(default: the file named by PLANTDX_ADMIN_KEY_FILE; a mounted Secret), else one made for this
run and written to a 0600 file whose path is logged. The key is then in no container spec:
only in Triton's own command line, which Triton 2.51 requires. Triton and its Python-backend
stubs run with an allow-listed environment (serving/stub_env.py): no admin key, and cloud
credentials only where the repository or the capture is in that cloud.

The repository decides which version is served: Triton loads what its version policy asks for
at start, and with `--model-control-mode=explicit` the supervisor reads the policy again every
`--poll-secs` seconds (default $PLANTDX_POLL_SECS, else 2; 0: off) and switches the running
server to the version it asks for, by model control, without a restart or a failed request
(serving/follow.py). `plantdx repo pin REPO N` and `plantdx promote` write the policy, so every
pod follows. `--served-version` (default: the environment variable PLANTDX_SERVED_VERSION)
overrides it: `N@S` serves N only while the repository asks for S (the canary component's
form: a promotion or roll-back in the repository wins), `N` serves N whatever it asks
(serving/served_version.py); a pinned start is ready only once N is loaded.

Explanations: when the repository has `plantdx_explain` and the command line does not load it,
the supervisor loads it once Triton is ready (explicit model control), and a failure leaves
`plantdx` serving: a version exported without class-activation maps has no explanations.

Instances: the view the supervisor serves sizes each model that the repository exported with
sized instances for the cores the container may use (its CPU limit, read from its cgroup;
PLANTDX_CORES replaces that): model_repository/instances.py has the rule.

Capture for relabelling is configured by environment variables, which Triton's stubs inherit:
PLANTDX_CAPTURE (a folder or s3://BUCKET/PREFIX; unset: off), PLANTDX_CAPTURE_RATE,
PLANTDX_CAPTURE_LOW_CONFIDENCE, PLANTDX_CAPTURE_MAX_MB, PLANTDX_CAPTURE_MAX_PER_S,
PLANTDX_CAPTURE_STRIP_EXIF (1/0), PLANTDX_S3_ENDPOINT; they are checked before Triton starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from plantdx.capture import CaptureSettings
from plantdx.exceptions import ConfigError, PlantDxError, ServerError
from plantdx.model_repository.names import EXPLAIN_ENSEMBLE

from . import admin_key as keys
from . import served_version
from .flags import parse_flags
from .follow import DEFAULT_POLL_S, Follower
from .repository_api import CallError, RepositoryApi
from .server import TritonServer
from .startup import default_models

log = logging.getLogger("plantdx.supervise")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m plantdx.serving.supervise",
        description="tritonserver with a stub watchdog and a draining shutdown",
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=900.0,
        help="seconds to wait for the startup models (downloads, TensorRT engines)",
    )
    parser.add_argument(
        "--served-version",
        default=None,
        help="serve only this version of preprocess and classifier (default: "
        f"${served_version.ENV_VAR}; empty: the repository's version policy)",
    )
    parser.add_argument(
        "--poll-secs",
        type=float,
        default=float(os.environ.get("PLANTDX_POLL_SECS") or DEFAULT_POLL_S),
        help="read the repository's version policy this often and switch to the version it "
        "asks for by explicit model control, without a restart (default: $PLANTDX_POLL_SECS, "
        f"else {DEFAULT_POLL_S:g}; 0: only at start)",
    )
    parser.add_argument(
        "--admin-key-file",
        default=os.environ.get(keys.ENV_KEY_FILE) or None,
        help="file holding the key of the restricted APIs (default: $"
        f"{keys.ENV_KEY_FILE}; none: a key made for this run, kept in a 0600 file)",
    )
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, help="-- then the tritonserver binary and its flags"
    )
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or command[0].startswith("-"):
        parser.error("give the server's command line after --, e.g. -- tritonserver --model-...")
    logging.basicConfig(level=logging.INFO, format="plantdx-supervise: %(message)s")
    try:
        capture = CaptureSettings.from_env()
    except PlantDxError as exc:
        log.error("%s", exc)
        return 2
    if capture is not None:
        log.info("%s", capture.describe())
    try:
        key = keys.read_key_file(args.admin_key_file) if args.admin_key_file else None
        keys.resolve_key(parse_flags(command[1:]), key)  # a conflict is refused before any view
        spec = (
            served_version.parse_spec(args.served_version)
            if args.served_version is not None
            else served_version.spec_from_env()
        )
        repository = served_version.repository_of(command[1:])
        following = args.poll_secs > 0 and "explicit" in parse_flags(command[1:]).get(
            "--model-control-mode", []
        )
        make = served_version.followed_command if following else served_version.pinned_command
        pinned, command = make(args.served_version, command)
    except (ServerError, ConfigError) as exc:  # ConfigError: a PLANTDX_CORES that is no count
        log.error("%s", exc)
        return 2
    try:
        server = TritonServer.wrapping(command[0], command[1:], admin_key=key)
        served = served_version.repository_of(command[1:])  # the view, when there is one
        follow = None
        if following:
            view = Path(served)
            follow = {"location": repository, "poll_s": args.poll_secs, "spec": spec, "view": view}
        return _run(server, args.startup_timeout, pinned, follow, served)
    except ServerError as exc:
        log.error("%s", exc)
        return 2
    finally:
        served_version.remove_view(command)


def _run(
    server: TritonServer,
    startup_timeout: float,
    pinned: int | None,
    follow: dict[str, Any] | None = None,
    served: str | None = None,
) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: draining, then stopping Triton", signal.Signals(signum).name)
        stop.set()
        server.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    wait_for = server.load_models[0] if len(server.load_models) == 1 else None
    try:
        server.start(timeout_s=startup_timeout, wait_for=wait_for)
        if pinned is not None:
            served_version.check_served(server, pinned)
    except ServerError as exc:
        log.error("%s", exc)
        if server.is_alive():
            server.stop()
        return 0 if stop.is_set() else 1
    if server.key_file is not None:
        log.info("no admin key given: this run's key is in %s (0600)", server.key_file)
    log.info(
        "Triton is ready (pid %s); watching its Python-backend stubs%s",
        server.pid,
        ""
        if server.model_control == "explicit"
        else " is off: needs --model-control-mode=explicit",
    )
    if served is not None:
        load_explanations(server, served)
    follower = None
    if follow is not None:
        api = RepositoryApi(server.http_url, server.admin_key, timeout_s=300.0)
        follower = Follower(api, http_port=server.http_port, alive=server.is_alive, **follow)
        follower.start()
        log.info(
            "following %s's version policy (read every %g s)", follow["location"], follow["poll_s"]
        )
    while not stop.is_set() and server.is_alive():
        stop.wait(1.0)
    if follower is not None:
        follower.stop()
    if not server.is_alive():
        code = server.stop()
        log.error("tritonserver exited on its own with code %s", code)
        return code if code else 1
    code = server.stop()
    log.info("stopped; tritonserver exit code %s", code)
    return code or 0


def load_explanations(server: TritonServer, repository: str) -> bool:
    """Load `plantdx_explain` when `repository` has it and the command line left it out; True
    when it is loaded. A failure is logged: `plantdx` serves on without explanations."""
    if server.model_control != "explicit" or EXPLAIN_ENSEMBLE in server.load_models:
        return EXPLAIN_ENSEMBLE in server.load_models
    try:
        if EXPLAIN_ENSEMBLE not in default_models(repository):
            return False
        RepositoryApi(server.http_url, server.admin_key, timeout_s=300.0).load(EXPLAIN_ENSEMBLE)
    except (*CallError, PlantDxError) as exc:
        log.warning("%s did not load (no explanations): %s", EXPLAIN_ENSEMBLE, exc)
        return False
    log.info("loaded %s (explanations)", EXPLAIN_ENSEMBLE)
    return True


if __name__ == "__main__":
    sys.exit(main())
