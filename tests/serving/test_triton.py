"""The real Triton server (nvidia-pytriton's binary) serving an exported repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.common import onnx_probabilities

pytestmark = pytest.mark.triton


def _infer(module, url: str, images: list[bytes]) -> np.ndarray:
    client = module.InferenceServerClient(url)
    inp = module.InferInput("IMAGE", [len(images), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[b] for b in images], dtype=np.object_))
    result = client.infer("plantdx", [inp], outputs=[module.InferRequestedOutput("PROBABILITIES")])
    return np.asarray(result.as_numpy("PROBABILITIES"))


def test_http_and_grpc_equal_in_process_onnx(
    triton_server, tiny_repo: Path, mini_photos: list[Path]
) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    images = [p.read_bytes() for p in mini_photos]
    expected = onnx_probabilities(tiny_repo, images)
    via_http = np.concatenate([_infer(httpclient, triton_server.http_url, [b]) for b in images])
    # Requests of 8 images (the most one request may hold), each batched further by the server.
    via_grpc = np.concatenate(
        [_infer(grpcclient, triton_server.grpc_url, images[i : i + 8]) for i in range(0, 30, 8)]
    )
    assert via_http.shape == expected.shape == (30, 15)
    assert np.abs(via_http - expected).max() < 1e-5
    assert np.abs(via_grpc - expected).max() < 1e-5
    assert np.allclose(expected.sum(1), 1.0, atol=1e-5)


def test_classification_extension_returns_labels(triton_server, mini_photos: list[Path]) -> None:
    from plantdx.client import PlantDxClient

    with PlantDxClient(triton_server.grpc_url, "grpc") as client:
        pred = client.predict(mini_photos[0], top_k=3)
        assert len(pred.top_k) == 3
        assert pred.top_k[0].probability >= pred.top_k[1].probability >= pred.top_k[2].probability
        assert pred.model_version == "1"
        classes = client.classes()
    assert len(classes) == 15 and classes == sorted(classes)
    assert pred.label in classes


def test_bad_image_fails_alone(triton_server, mini_photos: list[Path]) -> None:
    from plantdx.client import PlantDxClient

    with PlantDxClient(triton_server.http_url) as client:
        outcomes = client.predict_many(
            [mini_photos[0], b"not an image", mini_photos[1], b""], concurrency=4
        )
    assert outcomes[0].prediction and outcomes[2].prediction
    assert outcomes[1].error and "not_an_image" in outcomes[1].error
    assert outcomes[3].error and "empty" in outcomes[3].error
    assert triton_server.is_ready()


def test_custom_and_builtin_metrics(triton_metrics_text: str) -> None:
    lines = triton_metrics_text.splitlines()
    assert any(line.startswith('nv_inference_request_success{model="plantdx"') for line in lines)
    assert any(line.startswith("plantdx_predictions_total{") for line in lines)
    assert any(line.startswith("plantdx_prediction_confidence_bucket{") for line in lines)
    rejected = [
        line
        for line in lines
        if line.startswith("plantdx_preprocess_rejections_total")
        and 'reason="not_an_image"' in line
    ]
    assert rejected and float(rejected[0].rsplit(" ", 1)[1]) >= 1
    assert any(line.startswith("nv_inference_request_summary_us") for line in lines)


def test_cli_predict_json_and_failure_exit(
    triton_server, mini_photos: list[Path], tmp_path: Path
) -> None:
    import json

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    cmd = [sys.executable, "-m", "plantdx", "predict", "--url", triton_server.http_url, "--json"]
    ok = subprocess.run(
        [*cmd, str(mini_photos[0]), str(mini_photos[1])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    rows = json.loads(ok.stdout)
    assert [r["file"] for r in rows] == [str(mini_photos[0]), str(mini_photos[1])]
    assert {"label", "confidence", "top_k"} <= set(rows[0])
    assert {"label", "probability"} == set(rows[0]["top_k"][0])
    failed = subprocess.run(
        [*cmd, str(mini_photos[0]), str(bad)], capture_output=True, text=True, timeout=120
    )
    assert failed.returncode == 1
    rows = json.loads(failed.stdout)
    assert "error" in rows[1] and "label" in rows[0]


def test_port_in_use_is_a_clear_error(triton_server, tiny_repo: Path) -> None:
    from plantdx.exceptions import ServerError
    from plantdx.serving import TritonServer

    clash = TritonServer(
        repository=tiny_repo, http_port=triton_server.http_port, grpc_port=1, metrics_port=2
    )
    with pytest.raises(ServerError, match="already in use"):
        clash.start(timeout_s=10)
    assert not clash.is_alive()


def test_server_dies_with_its_parent(tiny_repo: Path, tmp_path: Path) -> None:
    """SIGKILL the process that started Triton: the server must not outlive it."""
    import os
    import signal
    import time

    from plantdx.serving.server import free_port

    from helpers.common import wait_for

    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from plantdx.serving import TritonServer\n"
        f"s = TritonServer(repository={str(tiny_repo)!r}, http_port={free_port()}, grpc_port={free_port()}, metrics_port={free_port()})\n"
        "s.start()\nprint(s.pid, flush=True)\ntime.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{child}/stat") as fh:
            return fh.read().split()[2] == "Z"

    assert wait_for(gone, timeout=20)
    time.sleep(0.1)


def _serve(repo: Path) -> subprocess.Popen[str]:
    from plantdx.serving.server import free_port

    return subprocess.Popen(
        [sys.executable, "-m", "plantdx", "serve", "--repository", str(repo),
         "--http-port", str(free_port()), "--grpc-port", str(free_port()),
         "--metrics-port", str(free_port())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_serve_says_why_the_server_did_not_start(tmp_path: Path) -> None:
    """A repository without the served models is refused before Triton starts, in one error."""
    (tmp_path / "repo").mkdir()
    proc = _serve(tmp_path / "repo")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "has no model preprocess" in err, err
    assert "Traceback" not in err


def test_serve_stops_while_still_starting(tiny_repo: Path, tmp_path: Path) -> None:
    """Ctrl-C or SIGTERM during start-up ends `plantdx serve` at once, server included."""
    import signal
    import time

    from helpers.serving import children

    proc = _serve(tiny_repo)
    assert proc.stderr is not None
    assert "starting Triton" in proc.stderr.readline()
    from helpers.common import wait_for

    # Triton started and loading its models (under load the launch itself can take seconds)
    assert wait_for(lambda: bool(children(proc.pid)), timeout=60)
    time.sleep(0.5)
    triton = children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped before the server was ready" in err
    assert triton and all(not Path(f"/proc/{pid}").exists() for pid in triton)


def test_stop_leaves_no_shared_memory_behind(tiny_repo: Path, tmp_path: Path) -> None:
    """Even after a stub was killed (its region is then never removed by Triton)."""
    import os
    import signal

    from helpers.common import wait_for
    from helpers.serving import start_server, stub_pids

    server = start_server(tiny_repo, tmp_path / "t.log")
    try:
        from plantdx.serving.procs import children, shm_regions

        for pid in stub_pids(server.pid, "postprocess"):
            os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: "postprocess" in server.stub_restarts, timeout=30)
        regions = shm_regions([server.pid, *children(server.pid)])
        assert regions and all(r.exists() for r in regions)
    finally:
        server.stop()
    assert not [r for r in regions if r.exists()]


def _crashing_first(tmp_path: Path, crashes: int) -> Path:
    """A launcher that aborts (SIGABRT) on its first `crashes` runs, then runs the command it
    is given: a tritonserver that crashes while starting, on demand."""
    script = tmp_path / "crash_then_run.sh"
    count = tmp_path / "runs"
    script.write_text(
        "#!/bin/sh\n"
        f'echo run >> "{count}"\n'
        f'if [ "$(wc -l < "{count}")" -le {crashes} ]; then kill -ABRT $$; fi\n'
        'exec "$@"\n'
    )
    script.chmod(0o755)
    return script


def _server_behind(launcher: Path, repo: Path, log: Path):
    from helpers.serving import new_server

    server = new_server(repo, log)
    real = server.command
    server.command = lambda: [str(launcher), *real()]  # type: ignore[method-assign]
    return server


def test_a_start_that_crashes_once_is_tried_again(
    tiny_repo: Path, tmp_path: Path, mini_photos: list[Path]
) -> None:
    import tritonclient.http as httpclient

    server = _server_behind(_crashing_first(tmp_path, 1), tiny_repo, tmp_path / "t.log")
    with server.start(timeout_s=180):
        probs = _infer(httpclient, server.http_url, [mini_photos[0].read_bytes()])
        assert probs.shape == (1, 15)
    assert (tmp_path / "runs").read_text().count("run") == 2


def test_a_start_that_crashes_twice_is_a_clear_error(tiny_repo: Path, tmp_path: Path) -> None:
    from plantdx.exceptions import ServerError

    server = _server_behind(_crashing_first(tmp_path, 5), tiny_repo, tmp_path / "t.log")
    with pytest.raises(ServerError, match="exited with code -6 while starting"):
        server.start(timeout_s=60)
    assert (tmp_path / "runs").read_text().count("run") == 2
    assert not server.is_alive()
