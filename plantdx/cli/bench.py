"""`plantdx bench`: measured throughput and latency (training loader, serving, in-process)."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Benchmarks: training input pipeline, served and in-process inference.",
    no_args_is_help=True,
)


def register_all() -> None:
    from . import bench_serve, bench_train

    bench_train.register(app)
    bench_serve.register(app)
