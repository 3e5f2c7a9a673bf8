"""`plantdx predict`: classify files, folders and globs through a running server."""

from __future__ import annotations

import glob
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from plantdx.choices import Protocol, Resize
from plantdx.data import IMAGE_SUFFIXES, list_images
from plantdx.exceptions import ConfigError

from .console import err, state

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from plantdx.client import PlantDxClient, Prediction, PredictOutcome

# Above this many images a progress bar is drawn on stderr.
PROGRESS_MIN = 8


def expand_inputs(items: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given, folders recursively (images only), globs expanded; order kept.

    Returns the paths and, for every argument that matched nothing, (argument, reason).
    """
    out: list[Path] = []
    problems: list[tuple[str, str]] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                problems.append(
                    (item, f"no images in folder (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
                )
            out += found
        elif any(ch in item for ch in "*?[") and not p.exists():
            found = sorted(Path(f) for f in glob.glob(item, recursive=True) if Path(f).is_file())
            if not found:
                problems.append((item, "no files match this pattern"))
            out += found
        elif not p.exists():
            problems.append((item, "file does not exist"))
        else:
            out.append(p)
    return out, problems


def default_url(protocol: str) -> str:
    """`plantdx serve`'s defaults: HTTP on 8000, gRPC on 8001."""
    return "localhost:8001" if protocol == "grpc" else "localhost:8000"


def parse_headers(values: list[str]) -> dict[str, str]:
    headers = {}
    for v in values:
        name, sep, value = v.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--header takes NAME=VALUE, got {v!r}")
        headers[name.strip()] = value
    return headers


def predict(
    images: Annotated[list[str], typer.Argument(help="Image files, folders or globs.")],
    url: Annotated[
        str | None,
        typer.Option(
            "--url", help="Server address (default localhost:8000, or localhost:8001 with grpc)."
        ),
    ] = None,
    protocol: Annotated[Protocol, typer.Option("--protocol", help="Wire protocol.")] = "http",
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Classes to show per image.")] = 3,
    crop: Annotated[
        str | None,
        typer.Option(
            "--crop",
            help="The crop the photos show (tomato, potato, bell pepper...): the answer is "
            "chosen among that crop's classes only. A name the model does not know fails each "
            "photo with the crops it knows.",
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Requests in flight.")
    ] = 4,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per request.")] = 30.0,
    retries: Annotated[
        int,
        typer.Option(
            "--retries", min=0, help="Retries when the server is unreachable or overloaded."
        ),
    ] = 3,
    header: Annotated[
        list[str] | None,
        typer.Option(
            "--header",
            help="Extra request header NAME=VALUE (e.g. a gateway's API key); repeatable.",
        ),
    ] = None,
    ssl: Annotated[
        bool, typer.Option("--ssl", help="Use TLS (implied by https:// in --url).")
    ] = False,
    root_certificates: Annotated[
        str | None,
        typer.Option(
            "--root-certificates", help="CA bundle (PEM) that signed the server's certificate."
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a JSON list instead of a table.")
    ] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")
    ] = True,
    explain: Annotated[
        Path | None,
        typer.Option(
            "--explain",
            help="Write one PNG per photo into this folder: the photo with its top class's heatmap "
            "(needs the server's plantdx_explain ensemble).",
        ),
    ] = None,
    explain_resize: Annotated[
        Resize,
        typer.Option(
            "--explain-resize",
            help="How the served model made its square input (the model's "
            "preprocessing.json says): where the heatmap lies on the photo.",
        ),
    ] = "crop",
) -> None:
    """Classify leaf photos; exits non-zero when any image failed, with a reason per file."""
    from rich.console import Console

    from plantdx.client import PlantDxClient, PredictOutcome

    paths, problems = expand_inputs(images)
    outcomes = [PredictOutcome(item, error=reason, kind="io") for item, reason in problems]
    if not paths and not problems:
        raise typer.BadParameter("no image files matched")
    start = time.perf_counter()
    with PlantDxClient(
        url or default_url(protocol),
        protocol,
        timeout=timeout,
        retries=retries,
        headers=parse_headers(header or []),
        ssl=ssl,
        root_certificates=root_certificates,
    ) as client:
        if explain is not None:
            from .predict_explain import explain_to

            outcomes += explain_to(
                client,
                paths,
                explain,
                concurrency=concurrency,
                top_k=top_k,
                resize=explain_resize,
                crop=crop,
            )
        else:
            outcomes += _run(
                client,
                paths,
                concurrency,
                top_k,
                progress and not state.quiet and len(paths) > PROGRESS_MIN,
                err,
                crop,
            )
    elapsed = time.perf_counter() - start
    if as_json:
        typer.echo(json.dumps([o.to_dict() for o in outcomes], indent=2))
    else:
        Console().print(_table(outcomes, top_k))
    _summary(outcomes, elapsed, err)


def _run(
    client: PlantDxClient,
    paths: list[Path],
    concurrency: int,
    top_k: int,
    show_progress: bool,
    console: Console,
    crop: str | None = None,
) -> list[PredictOutcome]:
    if not paths:
        return []
    if not show_progress:
        return client.predict_many(paths, concurrency=concurrency, top_k=top_k, crop=crop)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("classifying", total=len(paths))
        return client.predict_many(
            paths,
            concurrency=concurrency,
            top_k=top_k,
            on_result=lambda _o: bar.advance(task),
            crop=crop,
        )


def _table(outcomes: list[PredictOutcome], top_k: int) -> Table:
    from rich.table import Table

    table = Table()
    for col in ("file", "label", "confidence", f"top-{top_k}", "ms"):
        table.add_column(col, overflow="fold")
    for o in outcomes:
        if o.prediction:
            p = o.prediction
            others = ", ".join(f"{c.label} {c.probability:.2f}" for c in p.top_k[1:])
            label = uncertain_text(p) if p.uncertain else p.label
            table.add_row(o.source, label, f"{p.confidence:.3f}", others, f"{p.latency_ms:.0f}")
        else:
            table.add_row(o.source, f"[red]error: {o.kind}[/red]", "", str(o.error), "")
    return table


def uncertain_text(p: Prediction) -> str:
    """An abstention, with what the model would have guessed: 'uncertain (top guesses: ...)'."""
    guesses = ", ".join(f"{c.label} {c.probability:.2f}" for c in p.top_k[:2])
    return f"uncertain (top guesses: {guesses})"


def _summary(outcomes: list[PredictOutcome], elapsed: float, console: Console) -> None:
    failed = [o for o in outcomes if not o.ok]
    done = len(outcomes) - len(failed)
    uncertain = sum(1 for o in outcomes if o.prediction and o.prediction.uncertain)
    console.print(
        f"{done} of {len(outcomes)} image(s) classified in {elapsed:.1f} s"
        + (f" ({done / elapsed:.1f} img/s)" if done and elapsed > 0 else "")
        + (f", {uncertain} uncertain" if uncertain else "")
    )
    if not failed:
        return
    unreachable = next((o.error for o in failed if o.kind == "unavailable"), None)
    if unreachable:
        console.print(f"[red]{unreachable}[/red]")
    bad_crop = next((o.error for o in failed if o.kind == "invalid_crop"), None)
    if bad_crop:
        console.print(f"[red]{bad_crop}[/red]", highlight=False, soft_wrap=True)
    overloaded = [o for o in failed if o.kind == "overloaded"]
    if overloaded:
        console.print(
            f"[red]{len(overloaded)} image(s) refused: {overloaded[0].error}[/red]",
            highlight=False,
            soft_wrap=True,
        )
    typer.secho(f"{len(failed)} of {len(outcomes)} image(s) failed", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command(help=predict.__doc__)(predict)
