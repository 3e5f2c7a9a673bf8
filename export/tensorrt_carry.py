"""Carrying the plans of other GPU architectures into the next version.

Each version lists its plans in engines.json, from which the config's `cc_model_filenames`
is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from plantdx.checkpoint import file_sha256
from plantdx.model_repository.repository import ENGINES_FILENAME, read_json

from .tensorrt_gpu import GpuInfo


def carry_plans(
    previous_dir: Path | None,
    dest: Path,
    *,
    identity: dict[str, Any],
    gpu: GpuInfo,
    tensorrt_version: str,
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Copy the previous version's plans for other GPU architectures when they are the same model.

    Versions are immutable, so a build on a new architecture publishes a new version that
    holds the new plan and the earlier ones: same ONNX file, precision and profile (the
    `identity`), and the same TensorRT version (Triton loads every plan with one TensorRT).
    Returns the carried engines.json entries and notes on the plans left behind.
    """
    if previous_dir is None:
        return {}, []
    previous = read_json(previous_dir / ENGINES_FILENAME)
    carried: dict[str, Any] = {}
    left: list[dict[str, str]] = []
    if previous.get("identity") != identity:
        return {}, [
            {"version": previous_dir.name, "reason": "another model, precision or profile"}
        ] if previous.get("plans") else []
    for cc, entry in sorted(previous.get("plans", {}).items()):
        if cc == gpu.compute_capability:
            continue  # rebuilt now
        if entry.get("tensorrt") != tensorrt_version:
            left.append(
                {
                    "compute_capability": cc,
                    "reason": f"built with TensorRT {entry.get('tensorrt')}, this build uses "
                    f"{tensorrt_version}",
                }
            )
            continue
        src = previous_dir / entry["file"]
        if not src.is_file() or file_sha256(src) != entry.get("sha256"):
            left.append({"compute_capability": cc, "reason": f"{src.name} is missing or changed"})
            continue
        shutil.copy2(src, dest / entry["file"])
        carried[cc] = {
            **entry,
            "carried_from_version": int(previous_dir.name),
        }
    return carried, left
