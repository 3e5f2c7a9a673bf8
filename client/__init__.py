"""Client stage: classify leaf photos through a plantdx Triton server (HTTP or gRPC)."""

from __future__ import annotations

from .client import ClassScore, PlantDxClient, Prediction, PredictOutcome

__all__ = ["ClassScore", "PlantDxClient", "PredictOutcome", "Prediction"]
