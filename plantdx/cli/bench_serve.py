"""`plantdx bench serve` and `plantdx bench inprocess`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from plantdx.choices import Driver, Protocol
from plantdx.config import resolve
from plantdx.exceptions import ConfigError

from .console import clock_bar, err, show_progress
from .options import overrides as _overrides
from .predict import default_url, parse_headers

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from plantdx.bench.loadgen import LevelResult, ServeBenchConfig


def _levels(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--concurrency takes comma-separated integers, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise ConfigError(f"--concurrency levels must be positive, got {text!r}")
    return levels


def _write_json(path: Path | None, rows: list[dict[str, Any]]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=2) + "\n")
        typer.echo(f"wrote {path}", err=True)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _hits(v: int | None) -> str:
    return "?" if v is None else str(v)


def plot_path(plot: Path | None, json_out: Path | None) -> Path | None:
    """--plot where given; otherwise next to --json (same stem, .png); otherwise none."""
    if plot is not None:
        return plot
    return json_out.with_suffix(".png") if json_out is not None else None


def cache_warning(results: list[LevelResult]) -> str | None:
    """What to tell the user when the server answered from its response cache in a window."""
    cached = [r for r in results if r.cache_hits]
    if not cached:
        return None
    levels = ", ".join(
        f"concurrency {r.concurrency}: {r.cache_hits} hits for {r.images} images" for r in cached
    )
    return (
        f"warning: these figures include Triton response-cache hits ({levels}): repeated "
        "images were answered from the cache instead of being computed, so throughput is "
        "overstated and latency understated. --unique does not avoid this (the classifier's "
        "cache is keyed on decoded pixels). To measure real work, serve with the response "
        "cache off (plantdx serve --no-response-cache, or response_cache enable: false in "
        "the model configs)."
    )


def _level_line(r: LevelResult) -> str:
    return (
        f"  concurrency {r.concurrency:>3}: {r.img_per_s:7.1f} img/s, p50 {_ms(r.p50_ms)} ms, "
        f"p99 {_ms(r.p99_ms)} ms, errors {r.errors}, cache hits {_hits(r.cache_hits)}, "
        f"client CPU {r.client_cpu_pct:.0f}%"
    )


class _LevelClock:
    """One bar per concurrency level: seconds elapsed of its warm-up plus measured window."""

    def __init__(self, seconds: float, progress: Progress | None) -> None:
        self.seconds = seconds
        self.progress = progress
        self.task: TaskID | None = None

    def start(self, concurrency: int) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task(f"concurrency {concurrency:>3}", total=self.seconds)

    def done(self, result: LevelResult) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        err.print(_level_line(result))


@contextmanager
def _level_clock(cfg: ServeBenchConfig, enabled: bool) -> Iterator[_LevelClock]:
    if not enabled:
        yield _LevelClock(0.0, None)
        return
    with clock_bar() as progress:
        yield _LevelClock(cfg.warmup_s + cfg.duration_s, progress)


def serve(
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="Server address (default localhost:8000, or localhost:8001 with grpc); several, "
            "comma-separated, get the load round robin (errors counted over all of them).",
        ),
    ] = None,
    images: Annotated[
        str | None, typer.Option("--images", help="Folder of images to send (recursively).")
    ] = None,
    protocol: Annotated[Protocol | None, typer.Option("--protocol", help="Wire protocol.")] = None,
    concurrency: Annotated[
        str | None, typer.Option("--concurrency", help="Levels, e.g. 1,8,32.")
    ] = None,
    duration: Annotated[
        float | None, typer.Option("--duration", help="Measured seconds per level.")
    ] = None,
    warmup: Annotated[
        float | None, typer.Option("--warmup", help="Unmeasured seconds before each level.")
    ] = None,
    driver: Annotated[
        Driver | None,
        typer.Option("--driver", help="async: one event loop; threads: one thread per request."),
    ] = None,
    unique: Annotated[
        bool | None,
        typer.Option(
            "--unique/--no-unique",
            help="Append a counter after each image's end marker: defeats caches keyed on the "
            "request bytes (e.g. an ensemble-level response cache), not one keyed on decoded "
            "pixels (the classifier's). Cache hits are counted and reported per level either way.",
        ),
    ] = None,
    max_images: Annotated[
        int | None, typer.Option("--max-images", help="Use only the first N images.")
    ] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Seconds per request.")] = None,
    header: Annotated[
        list[str] | None, typer.Option("--header", help="Extra header NAME=VALUE; repeatable.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the results (a list) here.")
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="PNG of throughput and p99 vs concurrency (default: next to --json, as .png).",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file with these options.")
    ] = None,
) -> None:
    """Closed-loop load on a running server: images/s, p50/p90/p99 and errors per level."""
    from rich.console import Console
    from rich.table import Table

    from plantdx.bench.loadgen import ServeBenchConfig, run_serve_bench
    from plantdx.bench.report import machine, plot_levels

    cfg = resolve(
        ServeBenchConfig,
        config,
        _overrides(
            url=url or (default_url(protocol) if protocol else None),
            images=images,
            protocol=protocol,
            concurrency=_levels(concurrency),
            duration_s=duration,
            warmup_s=warmup,
            driver=driver,
            unique=unique,
            max_images=max_images,
            timeout_s=timeout,
            headers=parse_headers(header or []) or None,
        ),
    )
    if not cfg.images:
        raise ConfigError("--images is required")
    err.print(f"plantdx bench serve: {cfg.protocol}://{cfg.url}, {machine()}")
    with _level_clock(cfg, enabled=show_progress()) as clock:
        results = run_serve_bench(
            cfg,
            on_level_start=clock.start,
            on_level=clock.done,
        )
    table = Table(title=f"plantdx over {cfg.protocol} ({cfg.driver} driver)")
    cols = (
        "concurrency",
        "img/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "errors",
        "cache hits",
        "client CPU",
    )
    for col in cols:
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            str(r.concurrency),
            f"{r.img_per_s:.1f}",
            _ms(r.p50_ms),
            _ms(r.p90_ms),
            _ms(r.p99_ms),
            str(r.errors),
            _hits(r.cache_hits),
            f"{r.client_cpu_pct:.0f}% ({r.client_cpu_ms_per_img or 0:.2f} ms/img)",
        )
    Console().print(table)
    for r in results:
        for example in r.error_examples:
            err.print(f"[red]concurrency {r.concurrency}: {example}[/red]")
    warning = cache_warning(results)
    if warning:
        err.print(f"[yellow]{warning}[/yellow]", highlight=False, soft_wrap=True)
    elif any(r.cache_hits is None for r in results):
        err.print("cache hits: unknown (the server's inference statistics could not be read)")
    _write_json(json_out, [r.to_dict() for r in results])
    png = plot_path(plot, json_out)
    if png is not None:
        typer.echo(
            f"wrote {plot_levels(results, png)} (throughput and p99 vs concurrency)", err=True
        )


def inprocess(
    repository: Annotated[
        str | None, typer.Option("--repository", help="Triton model repository.")
    ] = None,
    images: Annotated[
        str | None, typer.Option("--images", help="Folder of images (recursively).")
    ] = None,
    version: Annotated[
        int | None, typer.Option("--version", help="Classifier version (default: newest).")
    ] = None,
    duration: Annotated[
        float | None, typer.Option("--duration", help="Measured seconds per layout.")
    ] = None,
    warmup: Annotated[
        float | None, typer.Option("--warmup", help="Unmeasured seconds per layout.")
    ] = None,
    layouts: Annotated[
        str | None,
        typer.Option(
            "--layouts",
            help="Comma-separated WORKERSxTHREADSbBATCH, e.g. 1x2b1,2x1b8 (default: every core "
            "busy as processes or threads, batch 1 and 8).",
        ),
    ] = None,
    max_images: Annotated[
        int | None, typer.Option("--max-images", help="Use only the first N images.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the results (a list) here.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file with these options.")
    ] = None,
) -> None:
    """The machine's limit: the same preprocessing and ONNX model in-process, no server."""
    from rich.console import Console
    from rich.table import Table

    from plantdx.bench.inprocess import InprocessBenchConfig, run_inprocess_bench
    from plantdx.bench.report import machine

    cfg = resolve(
        InprocessBenchConfig,
        config,
        _overrides(
            repository=repository,
            images=images,
            version=version,
            duration_s=duration,
            warmup_s=warmup,
            layouts=[x for x in layouts.split(",") if x.strip()] if layouts else None,
            max_images=max_images,
        ),
    )
    if not cfg.repository or not cfg.images:
        raise ConfigError("--repository and --images are required")
    err.print(f"plantdx bench inprocess: {cfg.repository}, {machine()}")
    results = run_inprocess_bench(
        cfg,
        on_layout=lambda r: err.print(
            f"  {r.layout:>7}: {r.img_per_s:7.1f} img/s, p50 {_ms(r.p50_ms)} ms, "
            f"p99 {_ms(r.p99_ms)} ms (preprocess {r.preprocess_ms_per_img:.1f} + model "
            f"{r.model_ms_per_img:.1f} ms/img)"
        ),
    )
    table = Table(title="in-process limit (workers x onnxruntime threads, batch)")
    cols = ("layout", "img/s", "p50 ms", "p99 ms", "preprocess ms/img", "model ms/img", "")
    for col in cols:
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            r.layout,
            f"{r.img_per_s:.1f}",
            _ms(r.p50_ms),
            _ms(r.p99_ms),
            f"{r.preprocess_ms_per_img:.2f}",
            f"{r.model_ms_per_img:.2f}",
            "best" if r.best else "",
        )
    Console().print(table)
    _write_json(json_out, [r.to_dict() for r in results])


def register(app: typer.Typer) -> None:
    """Adds `plantdx bench serve` and `plantdx bench inprocess` to the bench group."""
    app.command("serve", help=serve.__doc__)(serve)
    app.command("inprocess", help=inprocess.__doc__)(inprocess)
