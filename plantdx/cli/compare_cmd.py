"""`plantdx compare` and `plantdx promote`: champion against challenger on the same photos."""

from __future__ import annotations

import json

import typer

from plantdx.exceptions import ConfigError

_DATA = typer.Option(
    ..., "--data", help="Labelled ImageFolder; repeat for several sources (judged separately)."
)
_PROTOCOL = typer.Option("http", "--protocol", help="http | grpc")
_KEY_ENV = typer.Option(
    "PLANTDX_ADMIN_KEY",
    "--admin-key-env",
    help="Environment variable holding the model-control key (loading versions side by side).",
)
_LIMIT = typer.Option(0, "--limit", min=0, help="At most this many photos per source (0: all).")
_CONCURRENCY = typer.Option(4, "--concurrency", min=1, help="Requests in flight (server path).")


def _versions(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--versions takes two version numbers, e.g. 3,4; got {text!r}") from None


def compare(
    sources: list[str] = typer.Argument(
        None, help="Two checkpoints, run directories or MLflow URIs (models:/plantdx@champion)."
    ),
    url: str = typer.Option(None, "--url", help="Compare two versions served by this server."),
    versions: str = typer.Option(None, "--versions", help="A,B: the server's versions to compare."),
    data: list[str] = _DATA,
    protocol: str = _PROTOCOL,
    admin_key_env: str = _KEY_ENV,
    limit: int = _LIMIT,
    concurrency: int = _CONCURRENCY,
    plot: str = typer.Option(None, "--plot", help="Write the comparison as a PNG here."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Two model versions on the same labelled photos: accuracy, coverage and selective accuracy
    per source, per-class deltas, an exact McNemar test on the paired answers, and latency."""
    from plantdx.promotion.compare import CompareConfig, format_table
    from plantdx.promotion.compare import compare as run

    cfg = CompareConfig(
        sources=list(sources or []),
        url=url,
        versions=_versions(versions),
        protocol=protocol,
        admin_key_env=admin_key_env,
        data=list(data),
        limit=limit,
        concurrency=concurrency,
        plot=plot,
    )
    result = run(cfg).to_dict()
    if plot:
        result["plot"] = plot
    typer.echo(json.dumps(result, indent=2) if as_json else format_table(result))


def promote(
    url: str = typer.Option("127.0.0.1:8000", "--url", help="The server to promote on."),
    repository: str = typer.Option(..., "--repository", help="The server's model repository."),
    candidate: int = typer.Option(..., "--candidate", help="The version to promote."),
    data: list[str] = _DATA,
    dry_run: bool = typer.Option(False, "--dry-run", help="Compare and judge; change nothing."),
    metric: str = typer.Option(
        "mean_source_accuracy",
        "--metric",
        help="What must improve: mean_source_accuracy | accuracy | selective_accuracy.",
    ),
    min_gain: float = typer.Option(0.0, "--min-gain", help="By more than this."),
    alpha: float = typer.Option(
        0.05, "--alpha", help="A source drop with McNemar p below this fails the gate."
    ),
    max_drop: float = typer.Option(
        0.05, "--max-drop", help="A source accuracy drop above this fails the gate (any p)."
    ),
    registered_model: str = typer.Option(
        "plantdx", "--registered-model", help="MLflow registered model whose alias moves."
    ),
    alias: str = typer.Option("champion", "--alias", help="The MLflow alias to move."),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="Do not touch MLflow."),
    protocol: str = _PROTOCOL,
    admin_key_env: str = _KEY_ENV,
    limit: int = _LIMIT,
    concurrency: int = _CONCURRENCY,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Serve and register the candidate as champion, only if the gate passes on --data."""
    from plantdx.promotion.compare import format_table
    from plantdx.promotion.gate import Gate
    from plantdx.promotion.promote import PromoteConfig, PromotionRefusedError
    from plantdx.promotion.promote import promote as run

    cfg = PromoteConfig(
        url=url,
        protocol=protocol,
        repository=repository,
        candidate=candidate,
        data=list(data),
        dry_run=dry_run,
        gate=Gate(metric=metric, min_gain=min_gain, alpha=alpha, max_drop=max_drop),  # type: ignore[arg-type]
        limit=limit,
        concurrency=concurrency,
        admin_key_env=admin_key_env,
        registered_model=registered_model,
        alias=alias,
        mlflow=not no_mlflow,
    )
    try:
        result = run(cfg)
    except PromotionRefusedError as exc:
        _show(getattr(exc, "result", {}), as_json, format_table)
        raise
    _show(result, as_json, format_table)


def _show(result: dict, as_json: bool, format_table: object) -> None:
    if not result:
        return
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    assert callable(format_table)
    typer.echo(format_table(result["comparison"]))
    gate = result["gate"]
    verdict = "PASSED" if gate["passed"] else "FAILED"
    typer.echo(f"gate {verdict}: {gate['rule']}")
    for reason in gate["reasons"]:
        typer.echo(f"  - {reason}")
    for step in result.get("steps", []):
        typer.echo(("" if result.get("dry_run") else "done: ") + step)


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
    app.command("promote")(promote)
