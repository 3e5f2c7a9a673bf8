"""`plantdx data`: make and inspect datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from plantdx.choices import Conflicts, RunSplit

app = typer.Typer(help="Generate and inspect ImageFolder datasets.", no_args_is_help=True)


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write <class>/<image>.jpg into.")],
    per_class: Annotated[int, typer.Option("--per-class", help="Images per class.")] = 60,
    size: Annotated[int, typer.Option("--size", help="Image side in pixels.")] = 256,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Generate a synthetic leaf dataset: procedurally drawn leaves, one lesion pattern per class."""
    from plantdx.synth import generate_dataset

    counts = generate_dataset(out, per_class=per_class, size=size, seed=seed)
    typer.echo(f"wrote {sum(counts.values())} images in {len(counts)} classes to {out}")


@app.command()
def info(root: Annotated[Path, typer.Argument(help="ImageFolder root.")]) -> None:
    """Classes and image counts of an ImageFolder."""
    from plantdx.data import scan_image_folder

    folder = scan_image_folder(root)
    for name, n in folder.counts().items():
        typer.echo(f"{n:6d}  {name}")
    typer.echo(f"{len(folder.samples):6d}  images in {len(folder.class_names)} classes")


@app.command("field-proxy")
def field_proxy(
    source: Annotated[
        str, typer.Argument(help="Run directory, split.json or ImageFolder of held-out photos.")
    ],
    out: Annotated[str, typer.Argument(help="Folder to write the proxy ImageFolder into.")],
    split: Annotated[RunSplit, typer.Option("--split", help="Split of a run to stage.")] = "test",
    seed: Annotated[int, typer.Option("--seed")] = 0,
    size: Annotated[int, typer.Option("--size", help="Image side in pixels.")] = 384,
    per_photo: Annotated[int, typer.Option("--per-photo", help="Staged images per photo.")] = 1,
    effects: Annotated[
        str | None,
        typer.Option(
            "--effects",
            help="Comma list from background,companions,framing,shadows,lighting,camera (default all).",
        ),
    ] = None,
) -> None:
    """Stage held-out lab photos the way users photograph leaves: a field-photo proxy."""
    from plantdx.training.field_proxy import EFFECTS, make_field_proxy

    try:
        result = make_field_proxy(
            source,
            out,
            seed,
            split=split,
            size=size,
            per_photo=per_photo,
            effects=EFFECTS if effects is None else [e for e in effects.split(",") if e],
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    total = sum(result.counts.values())
    typer.echo(f"wrote {total} images in {len(result.class_names)} classes to {result.out_dir}")
    if result.skipped:
        typer.echo(f"skipped {len(result.skipped)} unreadable photo(s)")


@app.command()
def audit(
    sources: Annotated[
        list[Path],
        typer.Argument(help="ImageFolders to audit together, in the order training gets them."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for the audit's files.")] = Path(
        "audit"
    ),
    lab: Annotated[
        list[str] | None,
        typer.Option("--lab", help="A source of lab-style photos only (repeatable)."),
    ] = None,
    field: Annotated[
        list[str] | None,
        typer.Option("--field", help="A source of field-style photos only (repeatable)."),
    ] = None,
    conflicts: Annotated[
        Conflicts,
        typer.Option(
            "--conflicts",
            help="One photo under two labels in two sources: keep the copy in the source named "
            "first (name the curated one first), or drop every copy.",
        ),
    ] = "keep_first",
    exclude_label_issues: Annotated[
        bool,
        typer.Option(
            "--exclude-label-issues",
            help="Exclude the photos cleanlab flags as mislabelled (default: listed as comments).",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Audit data before training: byte and near duplicates (leakage across sources and
    splits), mosaics, label conflicts and label issues, corrupt or tiny files, and a lab-style /
    field-style score per photo. Writes OUT/audit.json, report.md, sheets/*.png, exclude.txt
    (for `plantdx train --exclude`) and domains.tsv.

    With neither --lab nor --field, the two sources whose photos are told apart best are the
    references, the more uniform one the lab one (README, "Cleaning data")."""
    from rich.console import Console
    from rich.table import Table

    from plantdx.training.audit.config import AuditConfig
    from plantdx.training.audit.run import run_audit
    from plantdx.training.progress import Reporter

    from .console import err, state

    cfg = AuditConfig(
        sources=[str(s) for s in sources],
        out=str(out),
        lab=list(lab or []),
        field=list(field or []),
        conflicts=conflicts,
        exclude_label_issues=exclude_label_issues,
    )
    result = run_audit(cfg, reporter=Reporter(console=err, quiet=quiet or state.quiet))
    names = result.sources
    table = Table(title=f"data audit ({result.seconds['total']:.0f} s)")
    for col in ("category", "total", *names, "excluded"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for row in result.rows:
        total = f"{row['total']} pairs" if row["unit"] == "pairs" else str(row["total"])
        table.add_row(
            row["category"],
            total,
            *(str(row["by_source"][n]) for n in names),
            str(row["excluded"]),
        )
    Console().print(table)
    typer.echo(f"domains: {result.domains.how}")
    typer.echo(
        f"wrote {result.out / 'audit.json'}, report.md, exclude.txt ({result.excluded} photos)"
        + (", domains.tsv" if result.domains.scores is not None else "")
        + f" and {len(result.sheets)} contact sheet(s)"
    )
