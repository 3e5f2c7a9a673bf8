"""`plantdx drift`: captured photos against each version's reference; `plantdx drift rules`:
the references as a Prometheus rule file, for versions whose servers do not publish them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help=(
        "Drift: compare captured photos and answers with the reference each version was "
        "exported with (PSI per statistic), or write the references as Prometheus rules."
    ),
    invoke_without_command=True,
)


@app.callback()
def check(
    ctx: typer.Context,
    repository: Annotated[
        Path | None,
        typer.Option("--repository", help="The model repository (reference.json files)."),
    ] = None,
    capture: Annotated[
        Path | None, typer.Option("--capture", help="A capture folder (plantdx serve --capture).")
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Folder for one PNG per version and statistic.")
    ] = Path("drift-report"),
    no_plots: Annotated[bool, typer.Option("--no-plots", help="Write no PNG.")] = False,
    reasons: Annotated[
        str,
        typer.Option(
            "--reasons",
            help="Which captures count, by sidecar reason: sampled (default: the random sample), "
            "abstained, low_confidence; comma-separated.",
        ),
    ] = "sampled",
    fail_on_drift: Annotated[
        bool, typer.Option("--fail-on-drift", help="Exit with code 3 when any statistic drifted.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """`plantdx drift --repository REPO --capture DIR`: per version found in the capture, PSI of
    each image statistic, the confidence and the classes against the version's reference, the
    abstention share, and a verdict (ok / drift, the thresholds of the alerts)."""
    if ctx.invoked_subcommand is not None:
        return
    from plantdx.drift.offline import drift
    from plantdx.drift.report import DriftConfig, render_table

    cfg = DriftConfig(
        repository=str(repository or ""),
        capture=str(capture or ""),
        out=None if no_plots else str(out),
        reasons=tuple(r.strip() for r in reasons.split(",") if r.strip()),
    )
    report = drift(cfg)
    typer.echo(json.dumps(report.to_dict(), indent=2) if as_json else render_table(report))
    if fail_on_drift and report.drift:
        raise typer.Exit(3)


@app.command("rules")
def rules(
    repository: Annotated[Path, typer.Option("--repository", help="The model repository.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the rules here (default: print them).")
    ] = None,
    kubernetes: Annotated[
        bool, typer.Option("--kubernetes", help="A PrometheusRule manifest instead of a rule file.")
    ] = False,
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace",
            help="The servers' Kubernetes namespace, which the drift rules match on (default "
            "with --kubernetes: plantdx; none without).",
        ),
    ] = None,
) -> None:
    """Every version's reference shares as constant Prometheus series (plantdx_reference_share,
    plantdx_reference_abstention_share), for versions exported before their servers published
    them: versions exported now publish their own while loaded. Load it once beside the
    plantdx.drift rules."""
    from plantdx.drift.rules import rules_text

    text, missing = rules_text(repository, kubernetes=kubernetes, namespace=namespace)
    if out:
        out.write_text(text)
        typer.echo(f"wrote {out}", err=True)
    else:
        typer.echo(text, nl=False)
    if missing:
        typer.echo(f"versions without a reference (left out): {', '.join(missing)}", err=True)


def register(parent: typer.Typer) -> None:
    parent.add_typer(app, name="drift")
