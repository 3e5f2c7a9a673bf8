"""`plantdx bench kill-publish`: the kill test of publishing (plantdx.bench.publish_kill)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer


def kill_publish(
    runs: Annotated[int, typer.Option("--runs", min=1, help="Killed commands in all.")] = 50,
    seed: Annotated[int, typer.Option("--seed", help="Run i uses seed SEED + i.")] = 0,
    work: Annotated[
        Path | None,
        typer.Option(
            "--work",
            help="An empty folder for the repository and the log (default: "
            "a temporary one, removed at the end).",
        ),
    ] = None,
    export_share: Annotated[
        float, typer.Option("--export-share", min=0.0, max=1.0, help="Share of exports.")
    ] = 0.5,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write the report, every run included, as JSON.")
    ] = None,
) -> None:
    """SIGKILL `plantdx export` and `plantdx repo pin` at random moments; after each, `plantdx
    repo validate` (with `--repair` when it fails) must pass and a fresh Triton server must
    serve one version whose preprocess, classifier and decision rule agree.

    Exits 1 when any run fails. Each run takes a few seconds (tiny checkpoints).
    """
    from plantdx.bench.publish_kill import KillRun, run_kill_test

    def line(r: KillRun) -> None:
        left = "no journal" if r.journal_records is None else f"{r.journal_records} change(s)"
        left += ", committed" if r.committed else ""
        typer.echo(
            f"run {r.run:3d} seed {r.seed}: {r.command} {r.target} killed "
            f"{'' if r.killed else 'after exit '}{r.moment} +{r.delay_s:.3f}s; left {left}; "
            f"validate {'ok' if r.validate_rc == 0 else 'failed'}"
            f"{'; ' + r.repair if r.repair else ''}; serves {r.served} "
            f"({'consistent' if r.consistent else 'INCONSISTENT: ' + '; '.join(r.problems)})"
        )

    def go(folder: Path) -> dict[str, Any]:
        return run_kill_test(folder, runs=runs, seed=seed, export_share=export_share, on_run=line)

    if work is None:
        with tempfile.TemporaryDirectory(prefix="plantdx-kill-") as tmp:
            report = go(Path(tmp))
    else:
        report = go(work)
    if out:
        out.write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: v for k, v in report.items() if k not in ("results", "seeds")}
    typer.echo(json.dumps(summary, indent=2))
    if not report["passed"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("kill-publish")(kill_publish)
