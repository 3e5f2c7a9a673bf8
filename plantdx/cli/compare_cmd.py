"""`plantdx compare` and `plantdx promote`: champion against challenger on the same photos."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from plantdx.choices import GateMetric, Protocol
from plantdx.exceptions import ConfigError

# Options shared by compare and promote.
Data = Annotated[
    list[str],
    typer.Option(
        "--data", help="Labelled ImageFolder; repeat for several sources (judged separately)."
    ),
]
ProtocolOpt = Annotated[Protocol, typer.Option("--protocol", help="Wire protocol.")]
AdminKeyEnv = Annotated[
    str,
    typer.Option(
        "--admin-key-env",
        help="Environment variable holding the model-control key (loading versions side by side).",
    ),
]
Limit = Annotated[
    int, typer.Option("--limit", min=0, help="At most this many photos per source (0: all).")
]
Concurrency = Annotated[
    int, typer.Option("--concurrency", min=1, help="Requests in flight (server path).")
]
ADMIN_KEY_ENV = "PLANTDX_ADMIN_KEY"


def _versions(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--versions takes two version numbers, e.g. 3,4; got {text!r}") from None


def compare(
    data: Data,
    sources: Annotated[
        list[str] | None,
        typer.Argument(
            help="Two checkpoints, run directories or MLflow URIs (models:/plantdx@champion)."
        ),
    ] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="Compare two versions served by this server.")
    ] = None,
    versions: Annotated[
        str | None, typer.Option("--versions", help="A,B: the server's versions to compare.")
    ] = None,
    protocol: ProtocolOpt = "http",
    admin_key_env: AdminKeyEnv = ADMIN_KEY_ENV,
    limit: Limit = 0,
    concurrency: Concurrency = 4,
    plot: Annotated[
        str | None, typer.Option("--plot", help="Write the comparison as a PNG here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
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
    repository: Annotated[
        str,
        typer.Option(
            "--repository",
            help="The server's model repository: a folder, or s3://... (then only the "
            "repository is written; the servers following it switch by themselves).",
        ),
    ],
    candidate: Annotated[int, typer.Option("--candidate", help="The version to promote.")],
    data: Data,
    url: Annotated[str, typer.Option("--url", help="The server to promote on.")] = "127.0.0.1:8000",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Compare and judge; change nothing.")
    ] = False,
    metric: Annotated[
        GateMetric, typer.Option("--metric", help="What must improve.")
    ] = "mean_source_accuracy",
    min_gain: Annotated[float, typer.Option("--min-gain", help="By more than this.")] = 0.0,
    alpha: Annotated[
        float,
        typer.Option("--alpha", help="A source drop with McNemar p below this fails the gate."),
    ] = 0.05,
    max_drop: Annotated[
        float,
        typer.Option(
            "--max-drop", help="A source accuracy drop above this fails the gate (any p)."
        ),
    ] = 0.05,
    registered_model: Annotated[
        str, typer.Option("--registered-model", help="MLflow registered model whose alias moves.")
    ] = "plantdx",
    alias: Annotated[str, typer.Option("--alias", help="The MLflow alias to move.")] = "champion",
    no_mlflow: Annotated[bool, typer.Option("--no-mlflow", help="Do not touch MLflow.")] = False,
    protocol: ProtocolOpt = "http",
    admin_key_env: AdminKeyEnv = ADMIN_KEY_ENV,
    limit: Limit = 0,
    concurrency: Concurrency = 4,
    wait_secs: Annotated[
        float,
        typer.Option(
            "--wait-secs",
            help="With an s3:// repository: how long to watch the --url server switch to the "
            "candidate by itself (the result's `followed`).",
        ),
    ] = 60.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Serve and register the candidate as champion, only if the gate passes on --data."""
    from plantdx.promotion.compare import format_table
    from plantdx.promotion.gate import Gate
    from plantdx.promotion.promote import (
        PromoteConfig,
        PromotionRefusedError,
        PromotionUnrecordedError,
    )
    from plantdx.promotion.promote import promote as run

    cfg = PromoteConfig(
        url=url,
        protocol=protocol,
        repository=repository,
        candidate=candidate,
        data=list(data),
        dry_run=dry_run,
        gate=Gate(metric=metric, min_gain=min_gain, alpha=alpha, max_drop=max_drop),
        limit=limit,
        concurrency=concurrency,
        admin_key_env=admin_key_env,
        registered_model=registered_model,
        alias=alias,
        mlflow=not no_mlflow,
        wait_s=wait_secs,
    )
    try:
        result = run(cfg)
    except (PromotionRefusedError, PromotionUnrecordedError) as exc:
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
    if result.get("followed") is False:
        typer.echo(
            "note: the server compared through did not serve the candidate in time; is it "
            "following the repository (plantdx models status --url ... --json)?"
        )


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
    app.command("promote")(promote)
