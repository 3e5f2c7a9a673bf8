"""`plantdx export`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from plantdx.config import resolve
from plantdx.exceptions import ConfigError

from .options import overrides as _overrides


def _versions(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError as exc:
        raise ConfigError(f"--versions takes numbers separated by commas, got {text!r}") from exc


def export(
    source: str = typer.Argument(
        ...,
        help="Checkpoint, run directory, MLflow run id, or registry URI "
        "(models:/plantdx/3, models:/plantdx@champion).",
    ),
    to: str = typer.Option("onnx", "--to", help="onnx | tensorrt"),
    repository: str = typer.Option(None, "--repository", help="Triton model repository directory."),
    precision: str = typer.Option(
        None,
        "--precision",
        help="fp32 | fp16 | int8 (--to tensorrt: gated against FP32; "
        "with --trt-accelerator, FP16 is applied by Triton at load time, not gated)",
    ),
    target: str = typer.Option(
        None,
        "--target",
        help="local (pip Triton, onnxruntime in a Python backend; default for ONNX) | "
        "triton (NGC Triton's native onnxruntime_onnx / tensorrt_plan; default for TensorRT)",
    ),
    kind: str = typer.Option(
        None, "--kind", help="cpu | gpu instance groups (default cpu for ONNX, gpu for TensorRT)"
    ),
    max_batch: int = typer.Option(None, "--max-batch", help="Largest batch (profile max)."),
    opt_batch: int = typer.Option(None, "--opt-batch", help="Batch TensorRT optimises for."),
    check_data: str = typer.Option(
        None, "--check-data", help="Images for parity and the precision gate (default: test split)."
    ),
    calibration: str = typer.Option(None, "--calibration", help="INT8 calibration images."),
    simplify: bool = typer.Option(
        None, "--simplify/--no-simplify", help="Simplify the ONNX graph (onnxslim or onnxsim)."
    ),
    gate_threshold: float = typer.Option(
        None, "--gate-threshold", help="Min top-1 agreement of FP16/INT8 with FP32 (0.99)."
    ),
    calibration_cache: str = typer.Option(None, "--calibration-cache", help="INT8 cache file."),
    timing_cache: str = typer.Option(None, "--timing-cache", help="TensorRT timing cache file."),
    workspace_mb: int = typer.Option(None, "--workspace-mb", help="TensorRT builder workspace."),
    carry_plans: bool = typer.Option(
        None,
        "--carry-plans/--no-carry-plans",
        help="Copy the previous version's plans for other GPU architectures (same model).",
    ),
    trt_accelerator: bool = typer.Option(
        None,
        "--trt-accelerator/--no-trt-accelerator",
        help="--to onnx --target triton --kind gpu: ONNX Runtime's TensorRT accelerator.",
    ),
    opset: int = typer.Option(None, "--opset", help="ONNX opset (17 or newer)."),
    version_policy: str = typer.Option(None, "--version-policy", help="latest | all | specific"),
    latest_n: int = typer.Option(None, "--latest-n", help="Versions served with 'latest'."),
    specific: str = typer.Option(None, "--versions", help="Versions served with 'specific': 3,4"),
    abstain_threshold: float = typer.Option(
        None,
        "--abstain-threshold",
        help="This deployment's abstention threshold, replacing every served version's own "
        "(postprocess parameter abstain_threshold; default: each version's decision.json).",
    ),
    config: Path = typer.Option(None, "--config", help="YAML file with export options."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
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
    result = run_export(cfg)
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
