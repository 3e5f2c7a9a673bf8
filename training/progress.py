"""Progress bars with images/s and ETA, and the end-of-run summary table (rich)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


class Reporter:
    """Talks to the terminal (stderr); `quiet` keeps only warnings."""

    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet

    @contextmanager
    def task(
        self, description: str, total: int, unit: str = "img"
    ) -> Iterator[Callable[[int], None]]:
        if self.quiet:
            yield lambda n: None
            return
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=self.console, transient=False) as progress:
            task_id = progress.add_task(description, total=total, rate="")

            def advance(n: int) -> None:
                progress.advance(task_id, n)
                t = progress.tasks[0]
                if t.speed:
                    progress.update(task_id, rate=f"{t.speed:.1f} {unit}/s")

            yield advance

    def info(self, msg: str) -> None:
        if not self.quiet:
            self.console.print(msg)

    def warn(self, msg: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {escape(msg)}")

    def epoch(self, row: dict[str, Any]) -> None:
        self.info(
            f"epoch {row['epoch']}: train loss {row['train_loss']:.3f} acc {row['train_acc']:.3f} | "
            f"val loss {row['val_loss']:.3f} acc {row['val_acc']:.3f} | lr {row['lr']:.2e} | "
            f"{row['train_img_per_s']:.1f} img/s"
        )

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.quiet:
            return
        table = Table(title="training summary")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in metrics.items():
            if k != "sources":
                table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
        self.console.print(table)
        sources = metrics.get("sources") or {}
        if sources:
            per = Table(title="per source (coverage and selective accuracy: with abstention)")
            for col in ("source", "split", "accuracy", "macro-F1", "coverage", "sel. acc", "n"):
                per.add_column(col, justify="left" if col in ("source", "split") else "right")
            for name, splits in sources.items():
                for split, f in splits.items():
                    per.add_row(
                        name,
                        split,
                        f"{f['acc']:.4f}",
                        f"{f['macro_f1']:.4f}",
                        f"{f['coverage']:.3f}",
                        f"{f['selective_accuracy']:.4f}",
                        str(f["n"]),
                    )
            self.console.print(per)
