"""The manifest tests' fixtures: every kustomization rendered once, the dashboard, promtool."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from k8s_manifests import JOBS, K8S, OVERLAYS, kustomize


def _render(directory: Path) -> list[dict[str, Any]]:
    try:
        return kustomize(directory)
    except FileNotFoundError:
        pytest.skip("kubectl is not installed (kubectl kustomize renders the manifests)")


@pytest.fixture(scope="session")
def renders() -> dict[str, list[dict[str, Any]]]:
    """Every kustomization, rendered once: base, monitoring, the overlays and the Jobs."""
    dirs = {"base": K8S / "base", "monitoring": K8S / "monitoring"}
    dirs.update({f"overlays/{o}": K8S / "overlays" / o for o in OVERLAYS})
    dirs.update({f"jobs/{j}": K8S / "jobs" / j for j in JOBS})
    return {name: _render(path) for name, path in dirs.items()}


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    return json.loads((K8S / "monitoring" / "grafana-dashboard.json").read_text())


@pytest.fixture(scope="session")
def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.skip(
            "promtool not found: install Prometheus's tools (Debian/Ubuntu: "
            "apt-get install prometheus) to check the rules"
        )
    return exe
