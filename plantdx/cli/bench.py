"""`plantdx bench`: measured throughput and latency (training loader, serving, in-process), the
serving studies, and the steps of the benchmark scripts."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Benchmarks: training input pipeline, served and in-process inference.",
    no_args_is_help=True,
)


def register_all() -> None:
    from . import bench_kill, bench_peers, bench_serve, bench_serving, bench_tools, bench_train

    bench_train.register(app)
    bench_serve.register(app)
    bench_serving.register(app)
    bench_tools.register(app)
    bench_kill.register(app)
    bench_peers.register(app)
