"""The `plantdx` command. Each subcommand parses options and calls one stage function."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from plantdx.exceptions import PlantDxError

from . import (
    architectures,
    bench,
    compare_cmd,
    data,
    demo,
    drift_cmd,
    export_cmd,
    feedback,
    models_cmd,
    predict,
    repo,
    serve,
    train_cmd,
    weights,
)
from .console import setup_logging

app = typer.Typer(
    name="plantdx",
    help=(
        "Plant-disease image classification: fine-tune on leaf photos, export to ONNX/TensorRT, "
        "serve with NVIDIA Triton, classify and benchmark."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def root(
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose", "-v", count=True, help="More log output: -v informs, -vv debugs."
        ),
    ] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Errors only: no log lines, no progress bars.")
    ] = False,
) -> None:
    """Log records go to stderr (level: these options, else $PLANTDX_LOG, else WARNING)."""
    setup_logging(verbose, quiet)


app.add_typer(data.app, name="data")
app.add_typer(repo.app, name="repo")
app.add_typer(models_cmd.app, name="models")
app.add_typer(feedback.app, name="feedback")
app.add_typer(weights.app, name="weights")
bench.register_all()
app.add_typer(bench.app, name="bench")
architectures.register(app)
train_cmd.register(app)
export_cmd.register(app)
serve.register(app)
predict.register(app)
compare_cmd.register(app)
demo.register(app)
drift_cmd.register(app)


def main() -> None:
    setup_logging()  # also for what runs before the callback (option parsing)
    try:
        app()
    except PlantDxError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
