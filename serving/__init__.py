"""Serving stage: run the Triton server on a plantdx model repository."""

from __future__ import annotations

from .server import TritonServer

__all__ = ["TritonServer"]
