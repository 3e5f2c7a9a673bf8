"""perf_analyzer's side of scripts/bench_all.sh: its input file from a folder of photos, and its
CSV as the same JSON fields as `plantdx bench serve`."""

from __future__ import annotations

import base64
import csv
import json
import struct
from pathlib import Path
from typing import Any

from .images import image_paths


def _b64_element(data: bytes) -> str:
    return base64.b64encode(struct.pack("<I", len(data)) + data).decode()


def perf_input(images: str | Path, out: str | Path, max_images: int = 0) -> int:
    """perf_analyzer --input-data: one entry per image; returns how many. For a BYTES input,
    perf_analyzer takes b64 content as the serialized tensor: each element is a 4-byte
    little-endian length, then the bytes."""
    paths = image_paths(images, max_images)
    data = [
        {"IMAGE": {"content": {"b64": _b64_element(p.read_bytes())}, "shape": [1]}} for p in paths
    ]
    Path(out).write_text(json.dumps({"data": data}))
    return len(paths)


def perf_json(csv_path: str | Path, out: str | Path, label: str = "perf_analyzer") -> None:
    """perf_analyzer's CSV (microseconds) → the same JSON fields as plantdx bench serve."""
    rows: list[dict[str, Any]] = []
    with open(csv_path, newline="") as fh:
        for row in csv.DictReader(fh):
            rows.append(
                {
                    "system": label,
                    "concurrency": int(row["Concurrency"]),
                    "img_per_s": round(float(row["Inferences/Second"]), 2),
                    "p50_ms": round(float(row["p50 latency"]) / 1000, 2),
                    "p90_ms": round(float(row["p90 latency"]) / 1000, 2),
                    "p99_ms": round(float(row["p99 latency"]) / 1000, 2),
                    "mean_ms": round(float(row["Avg latency"]) / 1000, 2)
                    if "Avg latency" in row
                    else None,
                    "errors": 0,
                }
            )
    Path(out).write_text(json.dumps(rows, indent=2) + "\n")
