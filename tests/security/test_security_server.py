"""The doors closed on the real Triton server: every API but inference, health and metadata
refused without the admin key (HTTP and gRPC), a model load carrying files refused, no secret in
the stubs' environment, the pixel and batch caps, and `plantdx serve` without a key."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from helpers.serving import copy_repo, fixed_instances, start_server, try_infer

pytestmark = pytest.mark.triton

KEY = "sesame-" + "0123456789abcdef" * 2
SECRETS = {"PLANTDX_ADMIN_KEY": KEY, "AWS_SECRET_ACCESS_KEY": "aws-secret-for-nobody"}
ADMIN_CALLS = [  # (method, path): one per restricted category
    ("POST", "/v2/repository/index"),
    ("POST", "/v2/repository/models/classifier/unload"),
    ("GET", "/v2/systemsharedmemory/status"),
    ("POST", "/v2/systemsharedmemory/region/x/register"),
    ("GET", "/v2/cudasharedmemory/status"),
    ("GET", "/v2/trace/setting"),
    ("GET", "/v2/logging"),
    ("GET", "/v2/models/plantdx/config"),
]


def _batching(name: str, cfg: Any) -> None:
    """One preprocess instance that waits up to 300 ms to fill a batch: requests sent together
    are decoded together."""
    if name == "preprocess":
        fixed_instances(cfg, 1)
        cfg.dynamic_batching.max_queue_delay_microseconds = 300_000


@pytest.fixture(scope="module")
def locked(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A server with an admin key, started from an environment holding secrets."""
    tmp = tmp_path_factory.mktemp("locked")
    repo = copy_repo(tiny_repo, tmp / "repo", _batching)
    saved = {k: os.environ.get(k) for k in SECRETS}
    os.environ.update(SECRETS)
    try:
        server = start_server(repo, tmp / "triton.log", admin_key=KEY)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield server
    finally:
        server.stop()


def _http(url: str, method: str, path: str, key: str | None = None) -> int:
    headers = {"plantdx-key": key} if key else {}
    data = b"{}" if method == "POST" else None
    req = urllib.request.Request(f"http://{url}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_admin_apis_need_the_key_and_inference_does_not(
    locked: Any, mini_photos: list[Path]
) -> None:
    from plantdx.client import PlantDxClient

    for method, path in ADMIN_CALLS:
        assert _http(locked.http_url, method, path) == 403, path
    assert _http(locked.http_url, "POST", "/v2/repository/index", KEY) == 200
    assert _http(locked.http_url, "GET", "/v2/systemsharedmemory/status", KEY) == 200
    assert _http(locked.http_url, "GET", "/v2/models/plantdx/config", KEY) == 200
    for path in ("/v2/health/ready", "/v2/health/live", "/v2/models/plantdx", "/v2"):
        assert _http(locked.http_url, "GET", path) == 200, path
    for url, protocol in ((locked.http_url, "http"), (locked.grpc_url, "grpc")):
        with PlantDxClient(url, protocol) as client:  # type: ignore[arg-type]
            assert client.predict(mini_photos[0]).label


def test_grpc_admin_calls_need_the_key(locked: Any) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    with grpcclient.InferenceServerClient(locked.grpc_url) as client:
        for call in (
            client.get_model_repository_index,
            client.get_system_shared_memory_status,
            client.get_log_settings,
            client.get_trace_settings,
        ):
            with pytest.raises(InferenceServerException, match="restricted"):
                call()
        with pytest.raises(InferenceServerException, match="restricted"):
            client.get_model_config("plantdx")
        header = {"triton-grpc-protocol-plantdx-key": KEY}
        assert client.get_model_repository_index(headers=header)


def _load_code_without_key(http_url: str, key: str, marker: Path) -> None:
    """A load that carries a model.py writing `marker`, sent without the key: refused, and
    nothing loaded or run."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    code = f"open({str(marker)!r}, 'w').write('x')\nclass TritonPythonModel:\n    pass\n"
    config = {"name": "evil", "backend": "python", "max_batch_size": 0, "input": [], "output": []}
    client = httpclient.InferenceServerClient(http_url)
    try:
        with pytest.raises(InferenceServerException, match="restricted"):
            client.load_model(
                "evil", config=json.dumps(config), files={"file:1/model.py": code.encode()}
            )
        index = client.get_model_repository_index(headers={"plantdx-key": key})
    finally:
        client.close()
    assert "evil" not in {m["name"] for m in index} and not marker.exists()


def test_a_model_load_carrying_code_is_refused_without_the_key(locked: Any, tmp_path: Path) -> None:
    _load_code_without_key(locked.http_url, KEY, tmp_path / "ran")


def test_the_stubs_environment_holds_no_secret(locked: Any) -> None:
    stubs = list(locked.stubs())
    assert len(stubs) >= 3  # preprocess, classifier, postprocess
    for pid in [locked.pid, *stubs]:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        names = {entry.split(b"=", 1)[0] for entry in environ.split(b"\0") if entry}
        assert b"PATH" in names
        assert not names & {b"PLANTDX_ADMIN_KEY", b"AWS_SECRET_ACCESS_KEY"}, pid
        assert KEY.encode() not in environ


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (40, 120, 30)).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def test_the_pixel_cap_refuses_a_40_mp_png_while_its_batch_neighbours_succeed(
    locked: Any, mini_photos: list[Path]
) -> None:
    big = _png(8000, 5000)  # exactly 40 MP, about 100 KB: it used to be decoded (about 0.5 s)
    assert len(big) < 256 * 1024
    images = [mini_photos[i].read_bytes() for i in range(3)] + [big]
    start = threading.Barrier(len(images))
    results: list[tuple[Any, str | None]] = [(None, None)] * len(images)

    def send(i: int) -> None:
        start.wait()
        results[i] = try_infer(locked.grpc_url, images[i], timeout_s=60)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [error for _, error in results[:3]] == [None, None, None]
    error = results[3][1]
    assert error and "invalid image (too_many_pixels)" in error and "limit is 16" in error


def test_a_request_over_the_batch_cap_is_refused(locked: Any, mini_photos: list[Path]) -> None:
    from helpers.serving import infer

    photos = [p.read_bytes() for p in mini_photos[:9]]
    assert infer(locked.grpc_url, photos[:8]).shape == (8, 15)
    with pytest.raises(Exception, match=r"batch.size must be <= 8"):
        infer(locked.grpc_url, photos)


def test_plantdx_serve_without_a_key_keeps_a_run_key_for_the_cli(
    tiny_repo: Path, tmp_path: Path
) -> None:
    from plantdx.serving.server import free_port

    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k != "PLANTDX_ADMIN_KEY"}
    env["XDG_RUNTIME_DIR"] = str(runtime)
    http = free_port()
    ports = ["--http-port", str(http), "--grpc-port", str(free_port())]
    ports += ["--metrics-port", str(free_port())]
    serve = subprocess.Popen(
        [sys.executable, "-m", "plantdx", "serve", "--repository", str(tiny_repo), *ports],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert serve.stdout is not None
        lines = []
        for line in serve.stdout:
            lines.append(line)
            if "Ctrl-C to stop" in line:
                break
        text = "".join(lines)
        match = re.search(r"key is in (\S+) \(0600", text)
        assert match, text
        key_file = Path(match.group(1))
        assert key_file.parent == runtime / "plantdx"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert key_file.read_text().strip() not in text  # the path is printed, not the key
        url = f"127.0.0.1:{http}"
        key = key_file.read_text().strip()
        assert _http(url, "POST", "/v2/repository/index") == 403
        assert _http(url, "GET", "/v2/systemsharedmemory/status") == 403
        assert _http(url, "POST", "/v2/repository/index", key) == 200
        _load_code_without_key(url, key, tmp_path / "ran")  # no key given, none open
        status = subprocess.run(
            [sys.executable, "-m", "plantdx", "models", "status", "--url", url, "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert status.returncode == 0, status.stderr
        rows = json.loads(status.stdout)["models"]
        assert ("plantdx", "READY") in {(r["name"], r["state"]) for r in rows}
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=120)
    assert not key_file.exists()
