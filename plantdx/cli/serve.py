"""`plantdx serve`: the Triton server on a model repository, in the foreground."""

from __future__ import annotations

import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer


def serve(
    repository: Annotated[
        str,
        typer.Option(
            "--repository",
            help="Triton model repository: a folder or s3://[HOST:PORT/]BUCKET/PATH.",
        ),
    ],
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on. Off loopback only with an admin key in --admin-key-env, "
            "and behind a gateway that passes only inference (README, Security).",
        ),
    ] = "127.0.0.1",
    http_port: Annotated[int, typer.Option("--http-port")] = 8000,
    grpc_port: Annotated[int, typer.Option("--grpc-port")] = 8001,
    metrics_port: Annotated[int, typer.Option("--metrics-port")] = 8002,
    log_file: Annotated[
        Path | None, typer.Option("--log-file", help="Write Triton's log here.")
    ] = None,
    admin_key_env: Annotated[
        str,
        typer.Option(
            "--admin-key-env",
            help="Environment variable holding the key that protects every API but inference, "
            "health and metadata (unset: a key made for this run, kept in a 0600 file).",
        ),
    ] = "PLANTDX_ADMIN_KEY",
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for readiness.")
    ] = 180,
    response_cache: Annotated[
        bool,
        typer.Option(
            "--response-cache/--no-response-cache",
            help="Triton's response cache (answers repeated images without running the model); "
            "turn it off to benchmark real work.",
        ),
    ] = True,
    served_version: Annotated[
        str | None,
        typer.Option(
            "--served-version",
            envvar="PLANTDX_SERVED_VERSION",
            help="N: serve only version N of preprocess and classifier, whatever the repository "
            "asks; N@S: serve N in place of S, only while the repository asks for S (a canary; a "
            "promotion or roll-back in the repository wins). Empty: the repository's version.",
        ),
    ] = None,
    poll_secs: Annotated[
        float,
        typer.Option(
            "--poll-secs",
            envvar="PLANTDX_POLL_SECS",
            help="Read the repository's version policy this often and switch to the version it "
            "asks for without a restart (0: only at start).",
        ),
    ] = 2.0,
    cores: Annotated[
        int | None,
        typer.Option(
            "--cores",
            envvar="PLANTDX_CORES",
            min=1,
            help="Size the server for this many cores: the instances of each model a repository "
            "exported with sized instances gets, and the classifier's onnxruntime threads "
            "(default: the cores this process may use, a cgroup's CPU limit included).",
        ),
    ] = None,
    capture: Annotated[
        str | None,
        typer.Option(
            "--capture",
            help="Keep served photos for relabelling in this folder or s3://BUCKET/PREFIX "
            "(off by default; README: capture for relabelling).",
        ),
    ] = None,
    capture_rate: Annotated[
        float, typer.Option("--capture-rate", help="Share of ordinary answers captured (0..1).")
    ] = 0.01,
    capture_low_confidence: Annotated[
        float,
        typer.Option(
            "--capture-low-confidence",
            help="Answers whose top-1 probability is under this are always captured (as are "
            "abstained ones).",
        ),
    ] = 0.5,
    capture_max_mb: Annotated[
        float,
        typer.Option("--capture-max-mb", help="Size cap of the capture (what is there counts)."),
    ] = 1024.0,
    capture_max_per_s: Annotated[
        float,
        typer.Option(
            "--capture-max-per-s", help="At most this many captures per second (0: no cap)."
        ),
    ] = 20.0,
    capture_strip_exif: Annotated[
        bool,
        typer.Option(
            "--capture-strip-exif/--capture-keep-exif",
            help="Remove EXIF (GPS, camera), XMP and comments from captured photos.",
        ),
    ] = True,
) -> None:
    """Run Triton on REPOSITORY until Ctrl-C or SIGTERM; the server never outlives this command."""
    from plantdx.addresses import is_loopback
    from plantdx.capture import CaptureSettings
    from plantdx.capture.settings import ENV_DESTINATION
    from plantdx.exceptions import ConfigError, ServerError
    from plantdx.model_repository.names import ADMIN_HEADER
    from plantdx.serving import TritonServer
    from plantdx.serving.server import RESPONSE_CACHE_BYTES

    key = os.environ.get(admin_key_env) or None
    if key is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to listen on {host or 'every address'} without an admin key: the model "
            f"control API would be reachable from the network. Set ${admin_key_env} (for "
            "example `export PLANTDX_ADMIN_KEY=$(openssl rand -hex 32)`), put a gateway that "
            "passes only inference in front (README, Security), or keep --host 127.0.0.1"
        )
    settings = None
    if capture:
        settings = CaptureSettings(
            destination=capture,
            rate=capture_rate,
            low_confidence=capture_low_confidence,
            max_mb=capture_max_mb,
            max_per_s=capture_max_per_s,
            strip_exif=capture_strip_exif,
        ).resolved()
    from plantdx.serving.follow import Follower
    from plantdx.serving.repository_api import RepositoryApi
    from plantdx.serving.served_version import build_view, check_served, parse_spec, start_version

    if poll_secs < 0:
        raise ConfigError("--poll-secs must be 0 (off) or positive")
    from plantdx.cores import CORES_ENV, usable_cores
    from plantdx.model_repository.instances import plan_for

    if cores is not None:  # read by the view's configs and by the stubs (plantdx.cores)
        os.environ[CORES_ENV] = str(cores)
    plan = plan_for(usable_cores())
    spec = parse_spec(served_version)
    pinned = start_version(spec, repository)
    view = None
    if poll_secs > 0:  # a view the follower controls (serving/view.py)
        from plantdx.model_repository.asked import asked_version
        from plantdx.serving import view as views

        view = views.build(repository, pinned or asked_version(repository).version)
    elif pinned is not None:
        view = build_view(repository, pinned)
    server = TritonServer(
        repository=view or repository,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        admin_key=key,
        log_file=log_file,
        env=settings.to_env() if settings else {ENV_DESTINATION: ""},  # off unless asked
        response_cache_bytes=RESPONSE_CACHE_BYTES if response_cache else 0,
    )
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()
        server.request_stop()  # also while starting: loading models can take minutes

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    typer.echo(f"starting Triton on {repository} ...", err=True)
    try:
        server.start(timeout_s=timeout)
        if pinned is not None:
            check_served(server, pinned)
    except ServerError:
        server.stop()
        if view is not None:
            shutil.rmtree(view, ignore_errors=True)
        if stop.is_set():
            typer.echo("stopped before the server was ready", err=True)
            raise typer.Exit(130) from None
        raise
    follower = None
    if poll_secs > 0:
        import logging

        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("plantdx-follow: %(message)s"))
        logging.getLogger("plantdx.follow").addHandler(handler)
        logging.getLogger("plantdx.follow").setLevel(logging.INFO)
        follower = Follower(
            RepositoryApi(server.http_url, server.admin_key, timeout_s=300.0),
            repository,
            poll_s=poll_secs,
            spec=spec,
            http_port=http_port,
            alive=server.is_alive,
            view=view,
        ).start()
    typer.echo(
        f"plantdx is ready\n  HTTP     http://{server.http_url}\n  gRPC     {server.grpc_url}"
    )
    typer.echo(f"  metrics  {server.metrics_url}")
    if view is not None:  # sized configs are those of a view (model_repository/instances.py)
        typer.echo(f"  sized    for {plan.describe()} (where the repository asks for it)")
    if pinned is not None:
        typer.echo(f"  serving  version {pinned} only (--served-version {spec})")
    if follower is not None:
        typer.echo(f"  follows  {repository}'s version policy (read every {poll_secs:g} s)")
    if settings:
        typer.echo(f"  {settings.describe()}")
    if server.key_file is not None:
        typer.echo(
            f"  admin APIs: restricted; this run's key is in {server.key_file} (0600, removed "
            "at stop; plantdx models/promote on this machine read it)"
        )
    else:
        typer.echo(f"  admin APIs: restricted; send header {ADMIN_HEADER} from ${admin_key_env}")
    typer.echo("Ctrl-C to stop")
    try:
        while not stop.is_set():
            if not server.is_alive():
                typer.secho("tritonserver exited unexpectedly", fg=typer.colors.RED, err=True)
                raise typer.Exit(1)
            stop.wait(1.0)
    finally:
        typer.echo("stopping (finishing in-flight requests) ...", err=True)
        if follower is not None:
            follower.stop()
        server.stop()
        if view is not None:
            shutil.rmtree(view, ignore_errors=True)


def register(app: typer.Typer) -> None:
    app.command(help=serve.__doc__)(serve)
