"""Registered versions are MLflow models: pyfunc with a signature and an input example, loaded by
MLflow itself and served by `mlflow models serve`, answering like plantdx's own PyTorch path."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from helpers.common import wait_for

MLFLOW = Path(sys.executable).parent / "mlflow"


def _registered_version(store: str, run_id: str) -> str:
    import mlflow

    mlflow.set_tracking_uri(store)
    found = mlflow.MlflowClient().search_model_versions(
        f"name='plantdx-test' and run_id='{run_id}'"
    )
    assert found, "the training run registered no version"
    return str(max(int(v.version) for v in found))


def _reference(tiny_run: Path, photos: list[Path]) -> list[str]:
    import torch

    from plantdx.checkpoint import load_checkpoint
    from plantdx.preprocessing import Preprocessor

    ckpt = load_checkpoint(tiny_run / "best.pt")
    pre = Preprocessor(ckpt.preprocessing)
    with torch.no_grad():
        logits = ckpt.build_model()(
            torch.from_numpy(np.stack([pre(p.read_bytes()) for p in photos]))
        )
    return [ckpt.class_names[int(i)] for i in logits.argmax(1)]


def test_the_registered_version_is_a_pyfunc_with_a_schema(
    tiny_run: Path, mlflow_store: str, mini_photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import pandas as pd

    from plantdx.checkpoint import load_checkpoint

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    run_id = load_checkpoint(tiny_run / "best.pt").mlflow_run_id
    assert run_id
    version = _registered_version(mlflow_store, run_id)
    model = mlflow.pyfunc.load_model(f"models:/plantdx-test/{version}")
    schema = model.metadata.get_input_schema()
    assert schema is not None and schema.input_names() == ["image"]
    assert model.metadata.get_output_schema() is not None
    photos = mini_photos[:6]
    frame = pd.DataFrame({"image": [base64.b64encode(p.read_bytes()).decode() for p in photos]})
    out = model.predict(frame)
    assert list(out["label"]) == _reference(tiny_run, photos)
    assert np.allclose([sum(p) for p in out["probabilities"]], 1.0, atol=1e-4)
    with pytest.raises(Exception, match="base64"):
        model.predict(pd.DataFrame({"image": ["not base64 !!"]}))


@pytest.mark.slow
def test_mlflow_models_serve_answers(
    tiny_run: Path, mlflow_store: str, mini_photos: list[Path], tmp_path: Path
) -> None:
    from plantdx.checkpoint import load_checkpoint

    if not MLFLOW.exists():
        pytest.skip(f"{MLFLOW} is not installed")
    version = _registered_version(
        mlflow_store, str(load_checkpoint(tiny_run / "best.pt").mlflow_run_id)
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The scoring server is started as `uvicorn` from PATH: the venv's bin, as when activated.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_store, "PATH": path}
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            str(MLFLOW),
            "models",
            "serve",
            "-m",
            f"models:/plantdx-test/{version}",
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    try:
        assert wait_for(up, timeout=120), (tmp_path / "serve.log").read_text()[-2000:]
        photos = mini_photos[:3]
        body = {
            "dataframe_split": {
                "columns": ["image"],
                "data": [[base64.b64encode(p.read_bytes()).decode()] for p in photos],
            }
        }
        req = urllib.request.Request(
            f"{url}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            answer = json.loads(resp.read())
        rows = answer["predictions"]
        assert [r["label"] for r in rows] == _reference(tiny_run, photos)
        assert all(r["decision"] in (r["label"], "uncertain") for r in rows)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
