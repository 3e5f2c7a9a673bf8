"""A capture folder, as `plantdx serve --capture` writes it: under date folders, one photo per
captured request (its original bytes) and a JSON sidecar with the same stem holding at least
`time`, `version`, `prediction`, `confidence`, `decision` (label or "uncertain"), `sha256` and
`reason` (`sampled`, `abstained` or `low_confidence`); the photo is the sidecar's `file` when
it names one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plantdx.data import IMAGE_SUFFIXES
from plantdx.exceptions import DatasetError

# Captured at random: the only reason whose photos stand for the served traffic as a whole.
SAMPLED = "sampled"
REASONS = (SAMPLED, "abstained", "low_confidence")


@dataclass(frozen=True)
class Captured:
    sidecar: Path
    photo: Path | None
    version: str
    prediction: str | None
    confidence: float | None
    decision: str | None
    reason: str

    @classmethod
    def from_sidecar(cls, path: Path, doc: dict[str, Any]) -> Captured:
        confidence = doc.get("confidence")
        return cls(
            sidecar=path,
            photo=_photo(path, doc.get("file")),
            version=str(doc.get("version", "unknown")),
            prediction=str(doc["prediction"]) if doc.get("prediction") is not None else None,
            confidence=float(confidence) if confidence is not None else None,
            decision=str(doc["decision"]) if doc.get("decision") is not None else None,
            reason=str(doc.get("reason") or SAMPLED),
        )


def _photo(sidecar: Path, named: object) -> Path | None:
    if named:
        p = Path(str(named))
        for candidate in (p, sidecar.parent / p, sidecar.parent / p.name):
            if candidate.is_file():
                return candidate
        return None
    for suffix in sorted(IMAGE_SUFFIXES):
        for candidate in (sidecar.with_suffix(suffix), sidecar.with_suffix(suffix.upper())):
            if candidate.is_file():
                return candidate
    return None


def read_capture(root: str | Path) -> tuple[list[Captured], list[str]]:
    """Every readable sidecar under `root`, and what could not be read (path: why)."""
    base = Path(root)
    if not base.is_dir():
        raise DatasetError(f"capture folder {base} does not exist")
    found: list[Captured] = []
    problems: list[str] = []
    for path in sorted(base.rglob("*.json")):
        try:
            doc = json.loads(path.read_text())
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            found.append(Captured.from_sidecar(path, doc))
        except (OSError, ValueError, TypeError) as exc:
            problems.append(f"{path}: {exc}")
    if not found:
        raise DatasetError(f"{base} holds no capture sidecars (**/*.json)")
    return found, problems
