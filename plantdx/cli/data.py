"""`plantdx data`: make and inspect datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .choices import RunSplit

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
    split: Annotated[
        RunSplit, typer.Option("--split", help="Split of a run to stage.")
    ] = RunSplit.test,
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
            split=split.value,
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
