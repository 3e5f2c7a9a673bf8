"""`plantdx export`."""

from __future__ import annotations

from pathlib import Path

import typer

from plantdx.config import resolve

from .options import overrides as _overrides


def export(
    source: str = typer.Argument(
        ..., help="Checkpoint, run directory, MLflow run id or models:/ URI."
    ),
    to: str = typer.Option("onnx", "--to", help="onnx | tensorrt"),
    repository: str = typer.Option(None, "--repository", help="Triton model repository directory."),
    precision: str = typer.Option(None, "--precision", help="fp32 | fp16 | int8 (TensorRT)"),
    target: str = typer.Option(None, "--target", help="local (pip Triton) | triton (NGC Triton)"),
    kind: str = typer.Option(None, "--kind", help="cpu | gpu instance groups"),
    max_batch: int = typer.Option(None, "--max-batch"),
    opt_batch: int = typer.Option(None, "--opt-batch"),
    check_data: str = typer.Option(None, "--check-data", help="Images for the parity check."),
    calibration: str = typer.Option(None, "--calibration", help="INT8 calibration images."),
    version_policy: str = typer.Option(None, "--version-policy", help="latest | all | specific"),
    config: Path = typer.Option(None, "--config", help="YAML file with export options."),
) -> None:
    """Export to ONNX (or TensorRT) as the next version of a Triton model repository."""
    from plantdx.export import ExportConfig
    from plantdx.export import export as run_export

    cfg = resolve(
        ExportConfig,
        config,
        _overrides(
            source=source,
            to=to,
            repository=repository,
            precision=precision,
            target=target,
            kind=kind,
            max_batch=max_batch,
            opt_batch=opt_batch,
            check_data=check_data,
            calibration=calibration,
            version_policy=version_policy,
        ),
    )
    result = run_export(cfg)
    p = result.parity
    typer.echo(
        f"published {result.repository}/classifier/{result.version} "
        f"(parity on {p['n_images']} images: top-1 agreement {p['top1_agreement']:.2%}, "
        f"max |Δp| {p['max_abs_diff_probs']:.1e})"
    )


def register(app: typer.Typer) -> None:
    app.command(help=export.__doc__)(export)
