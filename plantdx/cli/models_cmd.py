"""`plantdx models`: model control on a running server (status, load, unload)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from .choices import Protocol

if TYPE_CHECKING:
    from plantdx.serving.control import ModelControl as ModelControlT

app = typer.Typer(
    help="Load, unload and inspect models on a running server "
    "(the architectures to train: `plantdx architectures`).",
    no_args_is_help=True,
)

DEFAULT_URL = "127.0.0.1:8000"
ADMIN_KEY_ENV = "PLANTDX_ADMIN_KEY"

# Options shared by every model-control command.
Url = Annotated[str, typer.Option("--url", help="Server address (HTTP, or gRPC with --protocol).")]
ProtocolOpt = Annotated[Protocol, typer.Option("--protocol", help="Wire protocol.")]
AdminKeyEnv = Annotated[
    str,
    typer.Option(
        "--admin-key-env",
        help="Environment variable holding the model-control key (never passed on the "
        "command line).",
    ),
]


def _control(url: str, protocol: Protocol, key_env: str) -> ModelControlT:
    import os

    from plantdx.serving.control import ModelControl

    return ModelControl(url, protocol=protocol.value, key=os.environ.get(key_env) or None)  # type: ignore[arg-type]


@app.command("status")
def status(
    url: Url = DEFAULT_URL,
    protocol: ProtocolOpt = Protocol.http,
    admin_key_env: AdminKeyEnv = ADMIN_KEY_ENV,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every model version the server knows, with its state (READY, UNAVAILABLE...) and why."""
    import json

    with _control(url, protocol, admin_key_env) as control:
        rows = control.status()
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    for r in rows:
        typer.echo(f"{r.name:12s} {r.version:>4s}  {r.state:12s} {r.reason}".rstrip())


@app.command("load")
def load(
    model: Annotated[
        str, typer.Argument(help="Model to load; the ensemble by default.")
    ] = "plantdx",
    version: Annotated[
        int | None,
        typer.Option("--version", help="Pin preprocess and classifier to this version (rollback)."),
    ] = None,
    url: Url = DEFAULT_URL,
    protocol: ProtocolOpt = Protocol.http,
    admin_key_env: AdminKeyEnv = ADMIN_KEY_ENV,
) -> None:
    """Load or hot-update MODEL from the repository; the old version serves until the new one
    is ready, and a version that fails to load leaves the old one serving."""
    with _control(url, protocol, admin_key_env) as control:
        for line in control.load(model, version=version):
            typer.echo(line)


@app.command("unload")
def unload(
    model: Annotated[str, typer.Argument(help="Model to unload.")],
    dependents: Annotated[
        bool, typer.Option("--with-dependents", help="Also unload the models an ensemble uses.")
    ] = False,
    url: Url = DEFAULT_URL,
    protocol: ProtocolOpt = Protocol.http,
    admin_key_env: AdminKeyEnv = ADMIN_KEY_ENV,
) -> None:
    """Unload MODEL; in-flight requests to it finish first."""
    with _control(url, protocol, admin_key_env) as control:
        for line in control.unload(model, dependents=dependents):
            typer.echo(line)
