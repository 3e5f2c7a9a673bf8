"""`plantdx repo`: inspect and validate a Triton model repository."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Inspect and validate a Triton model repository.", no_args_is_help=True)


@app.command("list")
def list_repo(repository: Path = typer.Argument(..., help="Model repository directory.")) -> None:
    """Models, versions, precision and provenance."""
    from plantdx.model_repository.repository import list_repository

    for v in list_repository(repository):
        prov = v.provenance
        detail = ""
        if prov:
            acc = prov.get("metrics", {}).get("test_acc")
            detail = (
                f"  {prov.get('model_name', '?')} {prov.get('format', '?')}/{prov.get('precision', '?')}"
                f"  exported {prov.get('exported_at', '?')}"
                + (f"  test_acc {acc:.4f}" if isinstance(acc, float) else "")
                + f"  sha256 {str(prov.get('checkpoint_sha256', ''))[:12]}"
            )
        typer.echo(f"{v.model:12s} {v.version:3d}{detail}")


@app.command()
def validate(repository: Path = typer.Argument(..., help="Model repository directory.")) -> None:
    """Check configs, files, labels and ensemble wiring; non-zero exit with the reasons."""
    from plantdx.model_repository.repository import validate_repository

    problems = validate_repository(repository)
    if problems:
        for p in problems:
            typer.secho(f"  - {p}", fg=typer.colors.RED, err=True)
        typer.secho(f"{repository}: {len(problems)} problem(s)", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    typer.echo(f"{repository}: ok")
