"""Helpers shared by the export and repository tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from plantdx.checkpoint import Checkpoint, save_checkpoint
from plantdx.models import create_model, get_spec, model_kwargs_for_checkpoint


def tiny_checkpoint(
    path: Path, *, seed: int = 0, classes: tuple[str, ...] = ("a", "b", "c"), size: int = 64
) -> Path:
    """A random test_tiny checkpoint (a few thousand weights): exports in about a second."""
    torch.manual_seed(seed)
    model = create_model("test_tiny", num_classes=len(classes))
    ckpt = Checkpoint(
        "test_tiny",
        list(classes),
        get_spec("test_tiny").preprocessing(size),
        model.state_dict(),
        model_kwargs_for_checkpoint(model),
    )
    return save_checkpoint(ckpt, path)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root (hidden ones too) with the sha256 of files: the whole tree."""
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def two_versions(tmp: Path, first: Path, second: Path) -> Path:
    """TMP/repo: version 1 from run `first` (served), version 2 from run `second` (published,
    not served: the policy names version 1)."""
    from plantdx.export import ExportConfig, export

    repo = tmp / "repo"
    export(ExportConfig(source=str(first / "best.pt"), repository=str(repo)))
    export(
        ExportConfig(
            source=str(second / "best.pt"),
            repository=str(repo),
            version_policy="specific",
            specific_versions=[1],
        )
    )
    return repo
