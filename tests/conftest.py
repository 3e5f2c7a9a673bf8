"""Shared fixtures: real photos when present, a tiny trained model, a real Triton server."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.common import MINI, TRAIN, train_tiny


def _require(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(
            f"real leaf photos not found at {path} (set PLANTDX_SHARED_DATA to their parent)"
        )
    return path


@pytest.fixture(scope="session")
def mini_dir() -> Path:
    """The 900 PlantVillage photos (15 classes × 60); skipped when absent."""
    return _require(MINI)


@pytest.fixture(scope="session")
def train_dir() -> Path:
    return _require(TRAIN)


@pytest.fixture(scope="session")
def mini_photos(mini_dir: Path) -> list[Path]:
    """One photo from each class of the mini set, then a second one: 30 real photos."""
    from plantdx.data import scan_image_folder

    folder = scan_image_folder(mini_dir)
    by_class: dict[int, list[Path]] = {}
    for s in folder.samples:
        by_class.setdefault(s.label, []).append(s.path)
    return [paths[i] for i in (0, 1) for paths in by_class.values()]


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from plantdx.synth import generate_dataset

    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, per_class=12, size=96, seed=1)
    return out


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tracking URI of a fresh SQLite store (tracking and registry)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, mini_dir: Path, mlflow_store: str) -> Path:
    """A test_tiny model trained briefly on the real mini set (with MLflow in a temp store)."""
    return train_tiny(tmp_path_factory.mktemp("tiny_run"), mini_dir, mlflow_store)


@pytest.fixture(scope="session")
def weak_run(tmp_path_factory: pytest.TempPathFactory, mini_dir: Path, mlflow_store: str) -> Path:
    """test_tiny trained for one epoch at a tiny learning rate: a real model, but a poor one."""
    return train_tiny(
        tmp_path_factory.mktemp("weak_run"), mini_dir, mlflow_store, epochs=1, lr=1e-5
    )


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory, tiny_run: Path, mini_dir: Path) -> Path:
    from plantdx.export import ExportConfig, export

    repo = tmp_path_factory.mktemp("repo") / "models"
    export(ExportConfig(source=str(tiny_run / "best.pt"), repository=str(repo)))
    return repo


@pytest.fixture(scope="session")
def triton_server(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real Triton server (the nvidia-pytriton binary) serving the tiny model."""
    from helpers.serving import new_server

    server = new_server(tiny_repo, tmp_path_factory.mktemp("triton") / "triton.log")
    server.start(timeout_s=180)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def triton_metrics_text(triton_server: object, mini_photos: list[Path]) -> str:
    """A live /metrics scrape after real traffic, including one rejected image."""
    from plantdx.client import PlantDxClient
    from plantdx.exceptions import ClientError

    with PlantDxClient(triton_server.http_url) as client:  # type: ignore[attr-defined]
        for path in mini_photos[:4]:
            client.predict(path)
        with pytest.raises(ClientError):
            client.predict(b"definitely not an image")
    time.sleep(1.5)  # summaries and custom metrics refresh once a second
    with urllib.request.urlopen(triton_server.metrics_url, timeout=5) as resp:  # type: ignore[attr-defined]
        return str(resp.read().decode())
