"""Client stage: classify leaf photos through a plantdx Triton server (HTTP or gRPC)."""

from __future__ import annotations

from .aio import AsyncPlantDxClient
from .client import PlantDxClient
from .explain import ExplainOutcome, Explanation
from .options import ClientOptions
from .results import ClassScore, Prediction, PredictOutcome, ServerHealth

__all__ = [
    "AsyncPlantDxClient",
    "ClassScore",
    "ClientOptions",
    "ExplainOutcome",
    "Explanation",
    "PlantDxClient",
    "PredictOutcome",
    "Prediction",
    "ServerHealth",
]
