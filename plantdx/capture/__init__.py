"""Capture of served photos for relabelling, and the feedback folder built from a capture.

A capture (a folder or `s3://BUCKET/PREFIX`) holds, under UTC date folders `YYYY-MM-DD/`, one
file per captured photo (`HHMMSS-<first 16 hex of sha256>.<jpg|png|webp|...>`) and a JSON
sidecar with the same stem (`record.Sidecar`). The postprocess model writes it through
`writer.CaptureWriter` when capture is on (`settings.CaptureSettings`, from the server's
environment); `feedback` turns it into an ImageFolder to label, and purges old days.
"""

from __future__ import annotations

from .settings import CaptureSettings

__all__ = ["CaptureSettings"]
