"""`plantdx export`: checkpoint → ONNX (→ TensorRT) → parity check (→ precision gate) → version.

Nothing reaches the model repository until every check has passed: the ONNX file and any plan
are built in a temporary directory, and `publish_version` moves the finished version in.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from plantdx.checkpoint import Checkpoint, checkpoint_crops, file_sha256, load_checkpoint
from plantdx.config import resolve, to_dict
from plantdx.decision import DecisionRule, check_threshold
from plantdx.exceptions import ConfigError, DatasetError, ExportError
from plantdx.model_repository.config import ServingOptions
from plantdx.model_repository.layout import repository_pixels
from plantdx.model_repository.repository import (
    PARITY_FILENAME,
    StagedVersion,
    publish_version,
    write_json,
)
from plantdx.reference import REFERENCE_FILENAME

from . import explain as explain_export
from . import tensorrt as trt_export
from . import tensorrt_publish as trt_publish
from .config import ExportConfig, ExportResult, settle
from .onnx import check_parity, export_onnx, require_parity, simplify_onnx
from .provenance import provenance as make_provenance
from .reference import export_reference
from .sources import SYNTHETIC_CHECK, check_images, resolve_source, spread

log = logging.getLogger(__name__)


def export(cfg: ExportConfig, on_step: Callable[[str], None] | None = None) -> ExportResult:
    """`on_step(name)` is called as each step begins (ONNX export, parity, heatmap parity,
    TensorRT build, publishing), e.g. to show progress."""
    step = on_step or (lambda _name: None)
    cfg = settle(cfg)
    trt = gpu = None
    if cfg.to == "tensorrt":
        trt, gpu = trt_export.require_tensorrt()
    calibration_paths = None
    if cfg.precision == "int8" and cfg.calibration:
        calibration_paths = trt_export.calibration_images(cfg.calibration, cfg.calibration_images)
        if len(calibration_paths) < cfg.opt_batch:
            raise DatasetError(
                f"{cfg.calibration} has {len(calibration_paths)} images; INT8 calibration needs "
                f"at least one batch of --opt-batch {cfg.opt_batch}"
            )
    opts = serving_options(cfg)
    step("loading the checkpoint and check images")
    source_path = resolve_source(cfg.source)
    ckpt = load_checkpoint(source_path)
    decision = _decision_rule(ckpt)
    crops = checkpoint_crops(ckpt, source_path)
    model = ckpt.build_model()
    explained = explain_export.plan(model, ckpt.model_name, to=cfg.to, target=cfg.target or "local")
    limit = max(cfg.check_images, cfg.gate_images if trt else 0)
    # The classifier takes uint8 pixels and normalises them in its graph, unless the
    # repository's versions take float ones (made before that): one config serves them all.
    pixels = repository_pixels(Path(cfg.repository))
    uint8 = pixels == "uint8"
    images, where = check_images(ckpt, cfg.check_data, source_path, limit, uint8=uint8)
    notes: list[str] = [explained.note] if explained.note else []
    if where == SYNTHETIC_CHECK:
        notes.append(
            f"parity was checked on {len(images)} generated leaf images, not on photos: no "
            "--check-data was given and the run's split was not found; pass --check-data DIR"
        )
    if cfg.trt_accelerator and cfg.precision == "fp16":
        notes.append(
            "FP16 is applied by Triton's onnxruntime TensorRT accelerator when the model loads, "
            "so this export could not gate it against FP32: check its agreement on the serving "
            "GPU (scripts/gpu_check.sh), or use --to tensorrt for a gated FP16 plan"
        )
    with tempfile.TemporaryDirectory(prefix="plantdx-export-") as tmp:
        tmpdir = Path(tmp)
        step("exporting ONNX")
        onnx_path = export_onnx(
            explained.module,
            tmpdir / "model.onnx",
            image_size=ckpt.preprocessing.image_size,
            opset=cfg.opset,
            output_names=explained.output_names,
            normalize=ckpt.preprocessing if uint8 else None,
        )
        simplification = simplify_onnx(onnx_path) if cfg.simplify else None
        if simplification and simplification.note:
            log.warning(simplification.note)
            notes.append(simplification.note)
        checked = spread(images, cfg.check_images)
        step(f"parity with PyTorch on {len(checked)} images")
        report = check_parity(
            model,
            onnx_path,
            checked,
            source=where,
            max_abs=cfg.max_abs_diff,
            min_agreement=cfg.min_top1_agreement,
            meta=ckpt.preprocessing,
        )
        require_parity(report)
        heatmap = cams = None
        if isinstance(explained.module, explain_export.CamModel):
            step("heatmap parity")
            heatmap = explain_export.check_heatmap_parity(
                explained.module, onnx_path, checked, source=where, meta=ckpt.preprocessing
            )
            explain_export.require_heatmap_parity(heatmap)
        elif explained.separate is not None:  # --target triton: a graph for classifier_cams
            step("class-activation graph: parity and heatmap parity")
            cams = explain_export.cams_graph(
                explained,
                model,
                tmpdir,
                checked,
                image_size=ckpt.preprocessing.image_size,
                opset=cfg.opset,
                normalize=ckpt.preprocessing if uint8 else None,
                meta=ckpt.preprocessing,
                source=where,
                max_abs=cfg.max_abs_diff,
                min_agreement=cfg.min_top1_agreement,
            )
            heatmap = cams.heatmap
        heatmap_doc = heatmap.to_dict() if heatmap else None
        onnx_sha = file_sha256(onnx_path)
        trt_build = None
        if trt is not None and gpu is not None:
            step(f"TensorRT build ({cfg.precision})")
            trt_build = trt_publish.build_and_gate(
                trt, gpu, cfg, ckpt, onnx_path, onnx_sha, images, where, calibration_paths
            )
        provenance = make_provenance(
            ckpt,
            cfg,
            source_path,
            onnx_sha,
            report,
            simplification,
            trt,
            gpu,
            trt_build.gate if trt_build else None,
        )
        provenance["decision"] = decision.to_dict()
        provenance["crops"] = crops.to_dict()
        parity_doc = provenance["parity"] = {**report.to_dict(), "heatmap": heatmap_doc}
        provenance["explain"] = {"heatmap_parity": heatmap_doc, "note": explained.note}
        if cams is not None:
            provenance["explain"]["classifier_cams"] = {
                "parity": cams.parity,
                "sha256": file_sha256(cams.path),
            }
        step("drift reference")
        reference, provenance["reference"] = export_reference(
            ckpt, decision, onnx_path, cfg.check_data, source_path, cfg.reference_photos
        )
        if reference is None:
            notes.append(str(provenance["reference"]["note"]))
        published: dict[str, Any] = {}
        step("publishing the version")

        def write_files(staged: StagedVersion) -> None:
            shutil.copyfile(onnx_path, staged.dir / "model.onnx")
            write_json(staged.dir / PARITY_FILENAME, parity_doc)
            if reference is not None:
                reference.save(staged.dir / REFERENCE_FILENAME)
            if trt_build is not None:
                published.update(trt_publish.write_plans(staged, trt_build, cfg, trt, gpu))

        version = publish_version(
            cfg.repository,
            class_names=ckpt.class_names,
            meta=ckpt.preprocessing,
            write_classifier_files=write_files,
            provenance=provenance,
            options=opts,
            target=cfg.target or "local",
            platform=cfg.to,
            trt_accelerator=cfg.trt_accelerator,
            trt_fp16=cfg.precision == "fp16",
            decision=decision,
            cams_dims=tuple(heatmap.cam_shape) if heatmap else None,
            crops=crops,
            pixels=pixels,
            cams_onnx=cams.path if cams else None,
        )
    return ExportResult(
        Path(cfg.repository),
        version,
        parity_doc,
        provenance,
        gate=trt_build.gate.to_dict() if trt_build else None,
        plans=published.get("plans", {}),
        notes=notes + [_note(n) for n in published.get("not_carried", [])],
        decision=decision.to_dict(),
        abstain_threshold=opts.abstain_threshold,
        explain=heatmap_doc,
    )


def _decision_rule(ckpt: Checkpoint) -> DecisionRule:
    """The checkpoint's rule; the identity rule for checkpoints made before rules existed."""
    try:
        return DecisionRule.from_dict(ckpt.decision)
    except (TypeError, ValueError) as exc:
        raise ExportError(f"the checkpoint's decision rule is not usable: {exc}") from exc


def _note(left: dict[str, str]) -> str:
    where = left.get("compute_capability") or f"version {left.get('version')}"
    return f"plans of {where} were not carried into the new version: {left['reason']}"


def serving_options(cfg: ExportConfig) -> ServingOptions:
    """ServingOptions defaults ← `serving` overrides ← the export's own batching and policy."""
    flat = _flatten(to_dict(ServingOptions()))
    flat.update(_flatten(cfg.serving))
    try:
        base = resolve(ServingOptions, None, flat)
    except ConfigError as exc:
        raise ConfigError(f"serving: {exc}") from exc
    classifier = dataclasses.replace(
        base.classifier, max_batch_size=cfg.max_batch, preferred_batch_sizes=(cfg.opt_batch,)
    )
    threshold = base.abstain_threshold if cfg.abstain_threshold is None else cfg.abstain_threshold
    if threshold is not None:
        check_threshold(threshold, "serving: abstain_threshold", ConfigError)
    return dataclasses.replace(
        base,
        kind=cfg.kind or "cpu",
        classifier=classifier,
        version_policy=cfg.version_policy,
        latest_n=cfg.latest_versions,
        specific_versions=tuple(cfg.specific_versions),
        abstain_threshold=threshold,
    )


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
