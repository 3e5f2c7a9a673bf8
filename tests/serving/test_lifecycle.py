"""Model lifecycle on a real server: the protected model-control API and `plantdx models
load|unload|status`, a hot update under load, a broken version, a rollback, and a key that
never shows up anywhere. The tests run in file order on one server whose repository grows."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from helpers.common import onnx_probabilities
from helpers.serving import alt_checkpoint, copy_repo, start_server, try_infer

pytestmark = pytest.mark.triton

KEY = "pdx-" + secrets.token_hex(12)
OUTPUTS: list[str] = []  # every CLI output of this module, checked for the key at the end


@pytest.fixture(scope="module")
def lifecycle(
    tiny_repo: Path, tiny_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("lifecycle")
    repo = copy_repo(tiny_repo, tmp / "repo")
    server = start_server(repo, tmp / "triton.log", admin_key=KEY, log_verbose=1)
    try:
        yield {
            "server": server,
            "repo": repo,
            "alt": alt_checkpoint(tiny_run / "best.pt", tmp / "alt.pt"),
            "log": tmp / "triton.log",
        }
    finally:
        server.stop()


def cli(*args: str, key: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PLANTDX_ADMIN_KEY"}
    if key:
        env["PLANTDX_ADMIN_KEY"] = KEY
    done = subprocess.run(
        [sys.executable, "-m", "plantdx", "models", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    OUTPUTS.append(done.stdout + done.stderr)
    return done


def _export(repo: Path, source: Path) -> int:
    from plantdx.export import ExportConfig, export

    return export(ExportConfig(source=str(source), repository=str(repo))).version


def _states(server) -> dict[tuple[str, str], str]:
    done = cli("status", "--url", server.http_url, "--json")
    assert done.returncode == 0, done.stderr
    import json

    return {(r["name"], r["version"]): r["state"] for r in json.loads(done.stdout)["models"]}


def test_model_control_refuses_requests_without_the_key(lifecycle) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    server = lifecycle["server"]
    with httpclient.InferenceServerClient(server.http_url) as http:
        with pytest.raises(Exception, match="restricted"):
            http.unload_model("plantdx")
        with pytest.raises(Exception, match="restricted"):
            http.get_model_repository_index(headers={"plantdx-key": "wrong"})
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    with grpc, pytest.raises(Exception, match="restricted"):
        grpc.load_model("plantdx")
    refused = cli("status", "--url", server.http_url, key=False)
    assert refused.returncode != 0
    assert "restricted" in refused.stderr and "--admin-key-env" in refused.stderr
    assert server.is_ready()  # nothing was unloaded
    for protocol, url in (("http", server.http_url), ("grpc", server.grpc_url)):
        ok = cli("status", "--url", url, "--protocol", protocol)
        assert ok.returncode == 0, ok.stderr
        assert any(line.split()[:3] == ["plantdx", "1", "READY"] for line in ok.stdout.splitlines())


def test_hot_update_loses_no_request_and_serves_no_stale_answer(
    lifecycle, mini_photos: list[Path]
) -> None:
    server, repo = lifecycle["server"], lifecycle["repo"]
    image = mini_photos[5].read_bytes()
    v1 = onnx_probabilities(repo, [image], version=1)[0]
    first, error = try_infer(server.grpc_url, image)
    assert error is None and np.abs(first - v1).max() < 1e-5  # now in the response cache
    stop = threading.Event()
    answers: list[tuple[np.ndarray | None, str | None]] = []

    def pump() -> None:
        import tritonclient.grpc as grpcclient

        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            while not stop.is_set() and len(answers) < 20_000:
                answers.append(try_infer(server.grpc_url, image, timeout_s=30, client=client))

    thread = threading.Thread(target=pump)
    thread.start()
    try:
        assert _export(repo, lifecycle["alt"]) == 2
        done = cli("load", "--url", server.http_url)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert done.returncode == 0, done.stderr
    assert "classifier version 2" in done.stdout
    errors = [e for _, e in answers if e]
    assert not errors, errors[:3]
    assert len(answers) > 20  # the load really happened under traffic
    v2 = onnx_probabilities(repo, [image], version=2)[0]
    assert np.abs(v2 - v1).max() > 1e-2  # the versions really differ
    now, error = try_infer(server.grpc_url, image)
    assert error is None and np.abs(now - v2).max() < 1e-5  # never the cached v1 answer
    assert np.abs(answers[-1][0] - v2).max() < 1e-5
    states = _states(server)
    assert states[("classifier", "2")] == "READY" and states[("preprocess", "2")] == "READY"


def test_unload_and_load_again(lifecycle, mini_photos: list[Path]) -> None:
    server = lifecycle["server"]
    done = cli("unload", "plantdx", "--url", server.grpc_url, "--protocol", "grpc")
    assert done.returncode == 0, done.stderr
    _, error = try_infer(server.grpc_url, mini_photos[0].read_bytes())
    assert error and "plantdx" in error
    done = cli("load", "plantdx", "--url", server.http_url)
    assert done.returncode == 0, done.stderr
    assert try_infer(server.grpc_url, mini_photos[0].read_bytes())[1] is None


def test_a_broken_version_fails_to_load_and_the_old_one_keeps_serving(
    lifecycle, mini_photos: list[Path]
) -> None:
    server, repo = lifecycle["server"], lifecycle["repo"]
    assert _export(repo, lifecycle["alt"]) == 3
    (repo / "classifier" / "3" / "model.onnx").write_bytes(b"this is not an ONNX file")
    done = cli("load", "--url", server.http_url)
    assert done.returncode == 1
    assert "loading classifier failed" in done.stderr and "version 3" in done.stderr
    assert "Traceback" not in done.stderr
    image = mini_photos[6].read_bytes()
    probs, error = try_infer(server.grpc_url, image)
    assert error is None
    assert np.abs(probs - onnx_probabilities(repo, [image], version=2)[0]).max() < 1e-5
    states = _states(server)
    assert states[("classifier", "2")] == "READY"
    assert states[("preprocess", "2")] == "READY"  # its pair was never swapped in
    assert states.get(("preprocess", "3")) != "READY"


def test_rollback_to_a_named_version(lifecycle, mini_photos: list[Path]) -> None:
    server, repo = lifecycle["server"], lifecycle["repo"]
    done = cli("load", "--version", "1", "--url", server.http_url)
    assert done.returncode == 0, done.stderr
    assert "pinned classifier to version 1" in done.stdout
    images = [p.read_bytes() for p in mini_photos[7:10]]
    expected = onnx_probabilities(repo, images, version=1)
    for image, want in zip(images, expected, strict=True):
        probs, error = try_infer(server.grpc_url, image)
        assert error is None and np.abs(probs - want).max() < 1e-5
    states = _states(server)
    assert states[("classifier", "1")] == "READY" and states[("preprocess", "1")] == "READY"
    assert states.get(("classifier", "2")) != "READY"
    missing = cli("load", "--version", "42", "--url", server.http_url)
    assert missing.returncode == 1 and "42" in missing.stderr
    assert try_infer(server.grpc_url, images[0])[1] is None  # still serving version 1


def test_the_key_is_never_logged_or_printed(lifecycle) -> None:
    server = lifecycle["server"]
    assert OUTPUTS, "run with the tests above"
    assert all(KEY not in out for out in OUTPUTS)
    assert KEY not in Path(lifecycle["log"]).read_text(errors="replace")
    assert KEY not in " ".join(server.redacted_command())
