"""Helpers of the benchmark tests: the CLI in a subprocess or in-process, a folder of photos.
The fixtures of tests/conftest.py (real photos, the tiny repository, the Triton server) apply
here too; a module of its own, not a second conftest, so that `from conftest import ...` in
tests/ keeps meaning tests/conftest.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LEVEL_FIELDS = {"concurrency", "img_per_s", "p50_ms", "p90_ms", "p99_ms", "errors"}


def run_plantdx(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """`python -m plantdx ARGS` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "plantdx", *args], capture_output=True, text=True, timeout=timeout
    )


def photo_dir(tmp_path: Path, mini_photos: list[Path]) -> Path:
    """Ten real photos in one folder (leaf00.jpg ...)."""
    d = tmp_path / "photos"
    d.mkdir()
    for i, p in enumerate(mini_photos[:10]):
        (d / f"leaf{i:02d}.jpg").write_bytes(p.read_bytes())
    return d
