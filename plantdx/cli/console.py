"""The terminal of the `plantdx` command: one stderr console shared by log records and progress
bars (so a log line never tears a bar), the verbosity the top-level options chose, and whether
progress is drawn."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console, RenderableType
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress_bar import ProgressBar
from rich.text import Text

# stderr as it is at print time (tests swap sys.stderr): log records and progress bars.
err = Console(stderr=True)


@dataclass
class Verbosity:
    quiet: bool = False
    verbose: int = 0


state = Verbosity()


def log_level(verbose: int, quiet: bool, env: str | None = None) -> int | str:
    """--quiet: errors only; -v: INFO; -vv: DEBUG; otherwise $PLANTDX_LOG (default WARNING)."""
    if quiet:
        return logging.ERROR
    if verbose >= 2:
        return logging.DEBUG
    if verbose == 1:
        return logging.INFO
    return (env or "WARNING").upper()


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Route every log record through rich on the shared stderr console."""
    state.quiet, state.verbose = quiet, verbose
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "plantdx", False):
            root.removeHandler(handler)
    handler = RichHandler(console=err, show_path=verbose >= 2, rich_tracebacks=False)
    handler.plantdx = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(log_level(verbose, quiet, os.environ.get("PLANTDX_LOG")))


def show_progress(as_json: bool = False) -> bool:
    """Progress is drawn on a terminal only, and never under --quiet or --json."""
    return not state.quiet and not as_json and err.is_terminal


def progress_bar() -> Progress:
    """A bar with count and ETA on the shared console, gone when done."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )


class _ClockBar(ProgressColumn):
    """A bar filled by the time elapsed out of the task's total seconds."""

    def render(self, task: Task) -> RenderableType:
        total = task.total or 1.0
        return ProgressBar(total=total, completed=min(task.elapsed or 0.0, total), width=40)


class _ClockText(ProgressColumn):
    def render(self, task: Task) -> RenderableType:
        return Text(f"{task.elapsed or 0.0:.0f}/{task.total or 0:.0f} s", style="progress.elapsed")


def clock_bar() -> Progress:
    """Bars for tasks that take a known time (total in seconds): elapsed of total."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        _ClockBar(),
        _ClockText(),
        console=err,
        transient=True,
    )


@contextmanager
def steps(enabled: bool) -> Iterator[StepDisplay]:
    """A spinner naming the step under way, and a line per finished step with its time."""
    display = StepDisplay(enabled)
    try:
        yield display
        display.finish()
    finally:
        display.close()


class StepDisplay:
    def __init__(self, enabled: bool) -> None:
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._current: str | None = None
        if enabled:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            )
            self._progress.start()

    def __call__(self, name: str) -> None:
        """Step `name` begins (the previous one is done)."""
        if self._progress is None:
            return
        self.finish()
        self._current = name
        self._task = self._progress.add_task(name, total=None)

    def finish(self) -> None:
        """The step under way is done."""
        if self._progress is None or self._task is None:
            return
        task = self._progress.tasks[-1]
        self._progress.remove_task(self._task)
        err.print(f"[green]✓[/green] {self._current} ({task.elapsed or 0:.1f} s)")
        self._task = None

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
