"""The Triton model repository's layout on disk: file names, versions, the repository's own
description, and listing what it holds. Read-only: publishing is `repository.py`, checking is
`validate.py`.

    REPO/plantdx/config.pbtxt, labels.txt, 1/   ensemble (IMAGE [+ CROP] → PROBABILITIES, DECISION)
    REPO/preprocess/config.pbtxt, N/model.py, N/preprocessing.json, N/decision.json, N/crops.json
    REPO/classifier/config.pbtxt, N/model.onnx [N/model.py] [N/model_smXY.plan, N/engines.json]
                                  N/provenance.json, N/parity.json [N/precision_gate.json]
    REPO/postprocess/config.pbtxt, labels.txt, 1/model.py
    REPO/plantdx-repository.json   what the repository serves (classes, size, target, platform,
                                    the classifier's pixel type)
    REPO/.plantdx-journal           only while a change is under way, or after one was killed:
                                    its intent log (journal.py; `plantdx repo validate --repair`)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_args

from plantdx.choices import ExportFormat
from plantdx.exceptions import RepositoryError

PROVENANCE_FILENAME = "provenance.json"
PARITY_FILENAME = "parity.json"
ENGINES_FILENAME = "engines.json"
GATE_FILENAME = "precision_gate.json"
REPOSITORY_FILENAME = "plantdx-repository.json"
STAGING_PREFIX = ".staging-"
PLATFORMS: tuple[str, ...] = get_args(ExportFormat)


def backend_source(name: str) -> str:
    """Source of a Python-backend model shipped in this package (preprocess, postprocess...)."""
    return (
        resources.files("plantdx.model_repository").joinpath("backends", f"{name}.py").read_text()
    )


def versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file, or {} when it is absent or unreadable."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


@dataclass
class RepositoryInfo:
    """What a repository serves; stored at its root so every export can check it fits."""

    class_names: list[str]
    image_size: int
    target: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    platform: str = "onnx"
    # What the classifier takes (plantdx.preprocessing.PIXEL_DTYPES): uint8 pixels that its
    # graph normalises, or, in repositories made before that, normalised float32 pixels. One
    # config serves every version, so every version of a repository takes the same.
    pixels: str = "uint8"

    @classmethod
    def load(cls, repo: Path) -> RepositoryInfo | None:
        p = repo / REPOSITORY_FILENAME
        if not p.is_file():
            return None
        d = read_json(p)
        if not d:
            raise RepositoryError(f"{p} is not readable JSON; restore it or use a new repository")
        return cls(
            d["class_names"],
            int(d["image_size"]),
            d["target"],
            d["kind"],
            d.get("options", {}),
            d.get("platform", "onnx"),
            d.get("pixels", "float32"),  # absent: written before the classifier took uint8
        )

    def to_json(self) -> str:
        doc = {
            "class_names": self.class_names,
            "image_size": self.image_size,
            "target": self.target,
            "kind": self.kind,
            "platform": self.platform,
            "pixels": self.pixels,
            "options": self.options,
        }
        return json.dumps(doc, indent=2) + "\n"


def repository_pixels(repo: Path) -> str:
    """What the classifier of `repo` takes (RepositoryInfo.pixels); "uint8" for a new one."""
    info = RepositoryInfo.load(repo)
    return info.pixels if info is not None else "uint8"


def plan_filenames(version_dir: Path) -> dict[str, str]:
    """compute capability → plan file, from a version's engines.json."""
    plans = read_json(version_dir / ENGINES_FILENAME).get("plans", {})
    return {cc: str(entry["file"]) for cc, entry in plans.items() if "file" in entry}


# ---------------------------------------------------------------------------------------------
# Listing.


def served_versions(policy: Any, available: list[int]) -> list[int]:
    """The versions Triton loads under a ModelVersionPolicy message (latest N by default)."""
    which = policy.WhichOneof("policy_choice") if policy is not None else None
    if which == "all":
        return list(available)
    if which == "specific":
        return [v for v in available if v in set(policy.specific.versions)]
    n = policy.latest.num_versions if which == "latest" else 1
    return available[-max(n, 1) :] if available else []


@dataclass
class VersionInfo:
    model: str
    version: int
    files: list[str]
    provenance: dict[str, Any]
    served: bool = True


def model_policy(model_dir: Path) -> Any:
    from .config import parse_pbtxt

    path = model_dir / "config.pbtxt"
    if not path.is_file():
        return None
    try:
        cfg = parse_pbtxt(path.read_text())
    except RepositoryError:
        return None
    return cfg.version_policy if cfg.HasField("version_policy") else None


def list_repository(repo: str | Path) -> list[VersionInfo]:
    repo = Path(repo)
    if not repo.is_dir():
        raise RepositoryError(f"model repository {repo} does not exist")
    out = []
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
        available = versions(model_dir)
        served = set(served_versions(model_policy(model_dir), available))
        for v in available:
            vdir = model_dir / str(v)
            out.append(
                VersionInfo(
                    model_dir.name,
                    v,
                    sorted(p.name for p in vdir.iterdir() if not p.name.startswith(".")),
                    read_json(vdir / PROVENANCE_FILENAME),
                    v in served,
                )
            )
    return out


def describe_repository(repo: str | Path) -> dict[str, Any]:
    """Everything `plantdx repo list --json` prints: the repository, its models and versions."""
    repo = Path(repo)
    entries = list_repository(repo)
    info = RepositoryInfo.load(repo)
    models: dict[str, list[dict[str, Any]]] = {}
    for v in entries:
        models.setdefault(v.model, []).append(
            {
                "version": v.version,
                "served": v.served,
                "files": v.files,
                "provenance": v.provenance,
            }
        )
    return {
        "repository": str(repo),
        "target": info.target if info else None,
        "kind": info.kind if info else None,
        "platform": info.platform if info else None,
        "classes": len(info.class_names) if info else None,
        "image_size": info.image_size if info else None,
        "models": models,
    }
