"""`plantdx models`: model control on a running server (status, load, unload)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from plantdx.choices import Protocol

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

    return ModelControl(url, protocol=protocol, key=os.environ.get(key_env) or None)


@app.command("status")
def status(
    url: Url = DEFAULT_URL,
    protocol: ProtocolOpt = "http",
    admin_key_env: AdminKeyEnv = ADMIN_KEY_ENV,
    repository: Annotated[
        str | None,
        typer.Option(
            "--repository",
            help="The repository the server serves (folder or s3://): which version it asks "
            "for. Default: what the server's repository follower on this machine read last.",
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print {served_version, repository_version, repository, models: [...]}.",
        ),
    ] = False,
) -> None:
    """Which version the server serves and which its repository asks for, then every model
    version the server knows, with its state (READY, UNAVAILABLE...) and why."""
    import json

    with _control(url, protocol, admin_key_env) as control:
        rows = control.status()
        served = control.served_version()
    doc = {"url": url, "served_version": served, **_asked(url, repository)}
    doc["models"] = [r.to_dict() for r in rows]
    if as_json:
        typer.echo(json.dumps(doc, indent=2))
        return
    asked = doc["repository_version"]
    typer.echo(
        f"serves version {served if served is not None else '-'}; "
        + (
            f"{doc['repository']} asks for {asked}"
            if asked is not None
            else "the repository's version is unknown (--repository REPO)"
        )
        + (f" (override {doc['override']})" if doc.get("override") else "")
    )
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
    protocol: ProtocolOpt = "http",
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
    protocol: ProtocolOpt = "http",
    admin_key_env: AdminKeyEnv = ADMIN_KEY_ENV,
) -> None:
    """Unload MODEL; in-flight requests to it finish first."""
    with _control(url, protocol, admin_key_env) as control:
        for line in control.unload(model, dependents=dependents):
            typer.echo(line)


def _asked(url: str, repository: str | None) -> dict[str, object]:
    """repository_version (and where it was read) for `models status`."""
    from plantdx.addresses import port_of

    if repository:
        from plantdx.model_repository.asked import asked_version

        return {"repository": repository, "repository_version": asked_version(repository).version}
    from plantdx.serving.follow import read_state

    state = read_state(port_of(url.split("://", 1)[-1])) or {}
    return {
        "repository": state.get("repository"),
        "repository_version": state.get("repository_version"),
        "override": state.get("override"),
    }
