"""Training against a real `mlflow server` process (SQLite backend, proxied artifact store)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.common import wait_for

MLFLOW = Path(sys.executable).parent / "mlflow"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not MLFLOW.exists():
        pytest.skip(f"{MLFLOW} is not installed")
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            str(MLFLOW),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'backend.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so the server's workers go down with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_for(lambda: _healthy(url) or proc.poll() is not None, timeout=120):
            pytest.fail("mlflow server did not answer /health in 120 s")
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_train_against_mlflow_server_then_export_from_registry(
    mlflow_server: str, synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from plantdx.checkpoint import load_checkpoint
    from plantdx.export import ExportConfig, export
    from plantdx.training import TrainConfig, train
    from plantdx.training.progress import Reporter

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    cfg = TrainConfig(
        data=str(synth_dir),
        out=str(tmp_path / "run"),
        model="test_tiny",
        pretrained=False,
        image_size=32,
        epochs=2,
        batch_size=16,
        lr=0.01,
        experiment="plantdx-server-test",
        register_alias="champion",
    )
    result = train(cfg, reporter=Reporter(quiet=True))
    assert result.metrics["registered_model"] == "models:/plantdx/1"

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(result.metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # stored by the server
    assert run.data.params["model"] == "test_tiny"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2]
    assert run.data.metrics["test_acc"] == pytest.approx(result.metrics["test_acc"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "confusion_matrix.png", "training_curves.png", "checkpoint"} <= artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == [
        "checkpoint/best.pt"
    ]
    version = client.get_model_version("plantdx", "1")
    assert version.run_id == run.info.run_id
    assert version.tags["data_sha256"] == run.data.tags["data_sha256"]
    assert str(client.get_model_version_by_alias("plantdx", "champion").version) == "1"

    # The registry is an export source, by version and by alias.
    repo = tmp_path / "repo"
    for version_no, source in enumerate(("models:/plantdx/1", "models:/plantdx@champion"), 1):
        exported = export(ExportConfig(source=source, repository=str(repo)))
        assert exported.version == version_no
        assert exported.provenance["mlflow_run_id"] == run.info.run_id
    ckpt = load_checkpoint(result.run_dir / "best.pt")
    assert json.loads((result.run_dir / "metrics.json").read_text())["mlflow_run_id"] == (
        ckpt.mlflow_run_id
    )
