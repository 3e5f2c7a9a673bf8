"""Export stage: a checkpoint becomes a new numbered version in a Triton model repository."""

from __future__ import annotations

from .config import ExportConfig, ExportResult
from .export import export

__all__ = ["ExportConfig", "ExportResult", "export"]
