"""Fixtures of the export tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.export import tiny_checkpoint


@pytest.fixture()
def tiny_ckpt(tmp_path: Path) -> Path:
    """A random test_tiny checkpoint (3 classes, 64 px) at tmp_path/run/best.pt."""
    return tiny_checkpoint(tmp_path / "run" / "best.pt")
