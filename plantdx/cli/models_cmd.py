"""`plantdx models`: the architectures this plantdx can train, and server model control."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from plantdx.serving.control import ModelControl as ModelControlT

app = typer.Typer(
    help="List architectures; load, unload and inspect models on a server.", no_args_is_help=True
)


@app.command("list")
def list_models() -> None:
    """Architectures available to `plantdx train --model`."""
    from plantdx.models import get_spec
    from plantdx.models import list_models as names

    for name in names():
        spec = get_spec(name)
        typer.echo(f"{name:20s} {spec.default_image_size:4d} px  {spec.description}")


# -- model control on a running server ------------------------------------------------------

_URL = typer.Option(
    "127.0.0.1:8000", "--url", help="Server address (HTTP, or gRPC with --protocol)."
)
_PROTOCOL = typer.Option("http", "--protocol", help="http or grpc.")
_KEY_ENV = typer.Option(
    "PLANTDX_ADMIN_KEY",
    "--admin-key-env",
    help="Environment variable holding the model-control key (never passed on the command line).",
)


def _control(url: str, protocol: str, key_env: str) -> ModelControlT:
    import os

    from plantdx.exceptions import ConfigError
    from plantdx.serving.control import ModelControl

    if protocol not in ("http", "grpc"):
        raise ConfigError(f"--protocol must be http or grpc, not {protocol!r}")
    return ModelControl(url, protocol=protocol, key=os.environ.get(key_env) or None)  # type: ignore[arg-type]


@app.command("status")
def status(
    url: str = _URL,
    protocol: str = _PROTOCOL,
    admin_key_env: str = _KEY_ENV,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
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
    model: str = typer.Argument("plantdx", help="Model to load; the ensemble by default."),
    version: int = typer.Option(
        None, "--version", help="Pin preprocess and classifier to this version (rollback)."
    ),
    url: str = _URL,
    protocol: str = _PROTOCOL,
    admin_key_env: str = _KEY_ENV,
) -> None:
    """Load or hot-update MODEL from the repository; the old version serves until the new one
    is ready, and a version that fails to load leaves the old one serving."""
    with _control(url, protocol, admin_key_env) as control:
        for line in control.load(model, version=version):
            typer.echo(line)


@app.command("unload")
def unload(
    model: str = typer.Argument(..., help="Model to unload."),
    dependents: bool = typer.Option(
        False, "--with-dependents", help="Also unload the models an ensemble uses."
    ),
    url: str = _URL,
    protocol: str = _PROTOCOL,
    admin_key_env: str = _KEY_ENV,
) -> None:
    """Unload MODEL; in-flight requests to it finish first."""
    with _control(url, protocol, admin_key_env) as control:
        for line in control.unload(model, dependents=dependents):
            typer.echo(line)
