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


@app.command("field-proxy")
def field_proxy(
    source: str = typer.Argument(
        ..., help="Run directory, split.json or ImageFolder of held-out photos."
    ),
    out: str = typer.Argument(..., help="Folder to write the proxy ImageFolder into."),
    split: str = typer.Option("test", "--split", help="Split of a run to stage."),
    seed: int = typer.Option(0, "--seed"),
    size: int = typer.Option(384, "--size", help="Image side in pixels."),
    per_photo: int = typer.Option(1, "--per-photo", help="Staged images per photo."),
    effects: str = typer.Option(
        None,
        "--effects",
        help="Comma list from background,companions,framing,shadows,lighting,camera (default all).",
    ),
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
