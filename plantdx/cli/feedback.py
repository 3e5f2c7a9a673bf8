"""`plantdx feedback export|purge`: captured photos to label, and removing old captures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Photos captured by `plantdx serve --capture`: export them to label, purge old ones.",
    no_args_is_help=True,
)


@app.command("export")
def export_cmd(
    capture: Annotated[str, typer.Argument(help="Capture folder or s3://BUCKET/PREFIX.")],
    out: Annotated[
        Path, typer.Option("--out", help="ImageFolder to write (created; re-runs add).")
    ],
) -> None:
    """One folder per predicted class and uncertain/, duplicates removed, manifest beside.

    Label by moving photos into their true class folders; empty uncertain/ into real classes
    (or delete it) before `plantdx train --data OUT`."""
    from plantdx.capture.feedback import export_feedback

    result = export_feedback(capture, out)
    folders = ", ".join(f"{k} {v}" for k, v in sorted(result.by_folder.items())) or "none"
    typer.echo(
        f"{out}: {result.added} new photo(s) ({folders}); {result.duplicates} duplicate "
        f"capture(s) left out; {result.skipped} unreadable"
        + (
            f"; {result.refused} refused (invalid sidecar or path, see the log)"
            if result.refused
            else ""
        )
    )


@app.command("purge")
def purge_cmd(
    capture: Annotated[str, typer.Argument(help="Capture folder or s3://BUCKET/PREFIX.")],
    older_than: Annotated[
        float,
        typer.Option(
            "--older-than", help="Delete the days (UTC) that ended more than DAYS days ago."
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would go; delete nothing.")
    ] = False,
) -> None:
    """Delete old captured photos and their sidecars."""
    from plantdx.capture.feedback import purge

    keys = purge(capture, older_than, dry_run=dry_run)
    days = sorted({k.split("/", 1)[0] for k in keys})
    verb = "would delete" if dry_run else "deleted"
    typer.echo(
        f"{verb} {len(keys)} file(s) from {len(days)} day(s){': ' if days else ''}"
        + ", ".join(days)
    )
