"""`plantdx export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from plantdx.choices import ExportFormat, Kind, Precision, Target, VersionPolicy
from plantdx.config import resolve
from plantdx.exceptions import ConfigError

from .console import show_progress, steps
from .options import overrides as _overrides


def _versions(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError as exc:
        raise ConfigError(f"--versions takes numbers separated by commas, got {text!r}") from exc


def export(
    source: Annotated[
        str,
        typer.Argument(
            help="Checkpoint, run directory, MLflow run id, or registry URI "
            "(models:/plantdx/3, models:/plantdx@champion)."
        ),
    ],
    to: Annotated[ExportFormat, typer.Option("--to", help="Model format.")] = "onnx",
    repository: Annotated[
        str | None, typer.Option("--repository", help="Triton model repository directory.")
    ] = None,
    precision: Annotated[
        Precision | None,
        typer.Option(
            "--precision",
            help="Weights precision (--to tensorrt: gated against FP32; "
            "with --trt-accelerator, FP16 is applied by Triton at load time, not gated).",
        ),
    ] = None,
    target: Annotated[
        Target | None,
        typer.Option(
            "--target",
            help="local: pip Triton, onnxruntime in a Python backend (default for ONNX); "
            "triton: NGC Triton's native onnxruntime_onnx / tensorrt_plan (default for TensorRT).",
        ),
    ] = None,
    kind: Annotated[
        Kind | None,
        typer.Option("--kind", help="Instance groups (default cpu for ONNX, gpu for TensorRT)."),
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option("--max-batch", help="Largest batch (profile max).")
    ] = None,
    opt_batch: Annotated[
        int | None, typer.Option("--opt-batch", help="Batch TensorRT optimises for.")
    ] = None,
    check_data: Annotated[
        str | None,
        typer.Option(
            "--check-data", help="Images for parity and the precision gate (default: test split)."
        ),
    ] = None,
    calibration: Annotated[
        str | None, typer.Option("--calibration", help="INT8 calibration images.")
    ] = None,
    simplify: Annotated[
        bool | None,
        typer.Option(
            "--simplify/--no-simplify", help="Simplify the ONNX graph (onnxslim or onnxsim)."
        ),
    ] = None,
    gate_threshold: Annotated[
        float | None,
        typer.Option("--gate-threshold", help="Min top-1 agreement of FP16/INT8 with FP32 (0.99)."),
    ] = None,
    calibration_cache: Annotated[
        str | None, typer.Option("--calibration-cache", help="INT8 cache file.")
    ] = None,
    timing_cache: Annotated[
        str | None, typer.Option("--timing-cache", help="TensorRT timing cache file.")
    ] = None,
    workspace_mb: Annotated[
        int | None, typer.Option("--workspace-mb", help="TensorRT builder workspace.")
    ] = None,
    carry_plans: Annotated[
        bool | None,
        typer.Option(
            "--carry-plans/--no-carry-plans",
            help="Copy the previous version's plans for other GPU architectures (same model).",
        ),
    ] = None,
    trt_accelerator: Annotated[
        bool | None,
        typer.Option(
            "--trt-accelerator/--no-trt-accelerator",
            help="--to onnx --target triton --kind gpu: ONNX Runtime's TensorRT accelerator.",
        ),
    ] = None,
    opset: Annotated[int | None, typer.Option("--opset", help="ONNX opset (17 or newer).")] = None,
    version_policy: Annotated[
        VersionPolicy | None,
        typer.Option("--version-policy", help="Versions the server loads."),
    ] = None,
    latest_n: Annotated[
        int | None, typer.Option("--latest-n", help="Versions served with 'latest'.")
    ] = None,
    specific: Annotated[
        str | None, typer.Option("--versions", help="Versions served with 'specific': 3,4")
    ] = None,
    abstain_threshold: Annotated[
        float | None,
        typer.Option(
            "--abstain-threshold",
            help="This deployment's abstention threshold, replacing every served version's own "
            "(postprocess parameter abstain_threshold; default: each version's decision.json).",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML file with export options.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
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
            simplify=simplify,
            gate_threshold=gate_threshold,
            calibration_cache=calibration_cache,
            timing_cache=timing_cache,
            workspace_mb=workspace_mb,
            carry_plans=carry_plans,
            trt_accelerator=trt_accelerator,
            opset=opset,
            version_policy=version_policy,
            latest_versions=latest_n,
            specific_versions=_versions(specific),
            abstain_threshold=abstain_threshold,
        ),
    )
    with steps(show_progress(as_json)) as step:
        result = run_export(cfg, on_step=step)
    if as_json:
        doc = {
            "repository": str(result.repository),
            "version": result.version,
            "parity": result.parity,
            "precision_gate": result.gate,
            "plans": result.plans,
            "notes": result.notes,
            "decision": result.decision,
            "abstain_threshold": result.abstain_threshold,
        }
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    p = result.parity
    typer.echo(
        f"published {result.repository}/classifier/{result.version} "
        f"(parity on {p['n_images']} images: top-1 agreement {p['top1_agreement']:.2%}, "
        f"max |Δp| {p['max_abs_diff_probs']:.1e})"
    )
    typer.echo(_decision_line(result.decision, result.abstain_threshold))
    if result.gate:
        g = result.gate
        typer.echo(
            f"precision gate {g['precision']} on sm{g['compute_capability']}: top-1 agreement "
            f"with FP32 {g['top1_agreement']:.2%} on {g['n_images']} images "
            f"(threshold {g['min_top1_agreement']:.0%})"
        )
    for cc, plan in sorted(result.plans.items()):
        origin = (
            f"carried from version {plan['carried_from_version']}"
            if "carried_from_version" in plan
            else "built now"
        )
        typer.echo(f"  plan {plan['file']} for compute capability {cc} ({origin})")
    for note in result.notes:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)


def _decision_line(rule: dict[str, Any], override: float | None) -> str:
    line = (
        f"decision rule: temperature {float(rule.get('temperature', 1.0)):.4g}, "
        f"uncertain below {float(rule.get('threshold', 0.0)):.4g}"
    )
    if override is not None:
        line += f" (this deployment: uncertain below {override:.4g}, --abstain-threshold)"
    return line


def register(app: typer.Typer) -> None:
    app.command(help=export.__doc__)(export)
