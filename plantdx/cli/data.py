"""`plantdx data`: make and inspect datasets."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Generate and inspect ImageFolder datasets.", no_args_is_help=True)


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to write <class>/<image>.jpg into."),
    per_class: int = typer.Option(60, "--per-class", help="Images per class."),
    size: int = typer.Option(256, "--size", help="Image side in pixels."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Generate a synthetic leaf dataset: procedurally drawn leaves, one lesion pattern per class."""
    from plantdx.synth import generate_dataset

    counts = generate_dataset(out, per_class=per_class, size=size, seed=seed)
    typer.echo(f"wrote {sum(counts.values())} images in {len(counts)} classes to {out}")


@app.command()
def info(root: Path = typer.Argument(..., help="ImageFolder root.")) -> None:
    """Classes and image counts of an ImageFolder."""
    from plantdx.data import scan_image_folder

    folder = scan_image_folder(root)
    for name, n in folder.counts().items():
        typer.echo(f"{n:6d}  {name}")
    typer.echo(f"{len(folder.samples):6d}  images in {len(folder.class_names)} classes")
