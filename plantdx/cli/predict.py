"""`plantdx predict`: classify files, folders and globs through a running server."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import typer

from plantdx.data import IMAGE_SUFFIXES


def expand_inputs(items: list[str]) -> list[Path]:
    """Files as given, folders recursively (images only), globs expanded; order kept."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
        elif any(ch in item for ch in "*?["):
            out += sorted(Path(f) for f in glob.glob(item, recursive=True) if Path(f).is_file())
        else:
            out.append(p)
    return out


def predict(
    images: list[str] = typer.Argument(..., help="Image files, folders or globs."),
    url: str = typer.Option("localhost:8000", "--url", help="Server address (HTTP or gRPC port)."),
    protocol: str = typer.Option("http", "--protocol", help="http | grpc"),
    top_k: int = typer.Option(3, "--top-k", help="Classes to show per image."),
    concurrency: int = typer.Option(4, "--concurrency", help="Requests in flight."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds per request."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """Classify leaf photos; exits non-zero when any image failed, with a reason per file."""
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    from plantdx.client import PlantDxClient, PredictOutcome

    paths = expand_inputs(images)
    if not paths:
        raise typer.BadParameter("no image files matched")
    outcomes: list[PredictOutcome] = []
    with PlantDxClient(url, protocol, timeout=timeout) as client:  # type: ignore[arg-type]
        if len(paths) <= 8 or as_json:
            outcomes = client.predict_many(paths, concurrency=concurrency, top_k=top_k)
        else:
            batch = max(concurrency * 4, 16)
            chunks = [paths[i : i + batch] for i in range(0, len(paths), batch)]
            for chunk in track(
                chunks, description=f"classifying {len(paths)} images", console=Console(stderr=True)
            ):
                outcomes += client.predict_many(chunk, concurrency=concurrency, top_k=top_k)
    failed = [o for o in outcomes if o.error]
    if as_json:
        rows = []
        for o in outcomes:
            if o.prediction:
                rows.append({**o.prediction.to_dict(), "file": o.source})
            else:
                rows.append({"file": o.source, "error": o.error})
        typer.echo(json.dumps(rows, indent=2))
    else:
        table = Table()
        for col in ("file", "label", "confidence", f"top-{top_k}"):
            table.add_column(col)
        for o in outcomes:
            if o.prediction:
                p = o.prediction
                others = ", ".join(f"{c.label} {c.probability:.2f}" for c in p.top_k[1:])
                table.add_row(o.source, p.label, f"{p.confidence:.3f}", others)
            else:
                table.add_row(o.source, "[red]error[/red]", "", str(o.error))
        Console().print(table)
    if failed:
        typer.secho(
            f"{len(failed)} of {len(outcomes)} image(s) failed", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command(help=predict.__doc__)(predict)
