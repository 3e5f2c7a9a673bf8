"""The client library and `plantdx predict`: results, retries, timeouts, headers, TLS.

Servers here are real: the session Triton server, Triton servers started for one test (late,
or with a restricted API), a TLS-terminating proxy in front of Triton, and for timeouts a
listener that accepts connections and never answers (HTTP) or a gRPC server that never
replies.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import numpy as np
import pytest

from plantdx.client import AsyncPlantDxClient, ClientOptions, PlantDxClient
from plantdx.client.options import classify, to_error
from plantdx.client.results import newest_ready_version, parse_classification, to_bytes
from plantdx.exceptions import (
    ClientError,
    ConfigError,
    InferenceTimeoutError,
    InvalidImageError,
    ServerOverloadedError,
    ServerUnavailableError,
)

from helpers.common import onnx_probabilities
from helpers.serving import copy_repo, heavy_png, slow_preprocess, start_server


def _free_port() -> int:
    from plantdx.serving.server import free_port

    return free_port()


# -- units: no server -------------------------------------------------------------------------
def test_parse_classification_keeps_colons_in_labels() -> None:
    scores = parse_classification([b"0.75:3:Tomato: late blight", "0.25:0:healthy"])
    assert [(s.label, s.index, s.probability) for s in scores] == [
        ("Tomato: late blight", 3, 0.75),
        ("healthy", 0, 0.25),
    ]


def test_to_bytes_accepts_paths_bytes_and_pil(tmp_path: Path) -> None:
    from PIL import Image

    img = Image.new("RGB", (40, 40), (10, 200, 30))
    data = to_bytes(img)
    assert Image.open(io.BytesIO(data)).getpixel((5, 5)) == (10, 200, 30)  # lossless
    (tmp_path / "a.png").write_bytes(data)
    assert to_bytes(tmp_path / "a.png") == to_bytes(str(tmp_path / "a.png")) == data
    assert to_bytes(bytearray(b"xy")) == b"xy"
    with pytest.raises(TypeError, match="path, bytes or a PIL image"):
        to_bytes(42)


def test_options_tls_headers_and_backoff(tmp_path: Path) -> None:
    o = ClientOptions.create("https://triton.example:443/", "http", headers={"X-API-Key": "k"})
    assert o.ssl and o.url == "triton.example:443"
    sent = o.request_headers()
    sent["Inference-Header-Content-Length"] = "1"  # what tritonclient does to the dict it gets
    assert o.request_headers() == {"X-API-Key": "k"}
    g = ClientOptions.create("localhost:8001", "grpc", headers={"X-API-Key": "k"})
    assert not g.ssl and g.request_headers() == {"x-api-key": "k"}  # gRPC metadata is lower case
    with pytest.raises(ConfigError, match="only available over HTTP"):
        ClientOptions.create("h:1", "grpc", insecure=True)
    with pytest.raises(ConfigError, match="does not exist"):
        ClientOptions.create("h:1", "http", root_certificates=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="protocol"):
        ClientOptions.create("h:1", "udp")
    delays = ClientOptions(retries=6, backoff_s=0.5, max_backoff_s=2.0).delays()
    assert len(delays) == 6 and delays[0] < 0.61 and max(delays) <= 2.4
    assert delays[3] >= 1.6  # capped at 2 s with ±20% jitter


def test_error_classification() -> None:
    from tritonclient.utils import InferenceServerException as E

    bad = "in ensemble 'plantdx', invalid image (not_an_image): not a decodable image"
    assert classify(E(bad, status="500")) == "invalid_image"
    assert classify(E(bad, status="StatusCode.INTERNAL")) == "invalid_image"
    assert classify(E("failed to connect to all addresses", "StatusCode.UNAVAILABLE")) == (
        "unavailable"
    )
    # Triton refuses a missing restricted-API header over gRPC with UNAVAILABLE: no retry.
    restricted = "This protocol is restricted, expecting header 'triton-grpc-protocol-x-api-key'"
    assert classify(E(restricted, "StatusCode.UNAVAILABLE")) == "denied"
    assert classify(E("This API is restricted, expecting header 'x'", "403")) == "denied"
    assert classify(E("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED")) == "timeout"
    assert classify(E("Service Unavailable", "503")) == "unavailable"
    assert classify(E("Request for unknown model: 'x' is not found", "404")) == "failed"
    assert classify(ConnectionRefusedError(111, "Connection refused")) == "unavailable"
    assert classify(socket.gaierror(-2, "Name or service not known")) == "unavailable"
    assert classify(TimeoutError("timed out")) == "timeout"
    assert classify(ssl.SSLCertVerificationError("certificate verify failed")) == "tls"


PROTOCOLS = ["http", "grpc"]

# What Triton 2.51 answers when a composing model's queue is full (tests/serving/test_serving.py), and
# when a request waited in the queue past its timeout: the status of an unreachable server.
QUEUE_FULL = "in ensemble 'plantdx', [request id: <id_unknown>] Exceeds maximum queue size"


def test_overload_is_told_apart_from_an_unreachable_server() -> None:
    from tritonclient.utils import InferenceServerException as E

    for status in ("503", "StatusCode.UNAVAILABLE"):
        assert classify(E(QUEUE_FULL, status)) == "overloaded"
        assert classify(E("Request timeout expired", status)) == "overloaded"
    assert classify(E("Too Many Requests", "429")) == "overloaded"  # a gateway's rate limit
    assert classify(E("Service Unavailable", "503")) == "unavailable"
    err = to_error(E(QUEUE_FULL, "503"), "overloaded", ClientOptions(url="h:1"), 4)
    assert isinstance(err, ServerOverloadedError) and isinstance(err, ClientError)
    assert not isinstance(err, ServerUnavailableError)
    assert str(err).startswith("server overloaded: queue full; retry later or add capacity")
    assert "4 attempt(s): Exceeds maximum queue size" in str(err)
    assert "cannot reach" not in str(err) and "request id" not in str(err)
    assert err.kind == "overloaded"  # type: ignore[attr-defined]


class _Refusing:
    """A tritonclient stand-in whose server is overloaded: every infer is refused."""

    def __init__(self, status: str) -> None:
        from tritonclient.utils import InferenceServerException

        self.error = InferenceServerException(QUEUE_FULL, status)
        self.calls = 0

    def infer(self, *args: object, **kwargs: object) -> None:
        self.calls += 1
        raise self.error

    def close(self) -> None:
        pass


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_overload_is_retried_with_backoff_then_reported_as_overload(protocol: str) -> None:
    refusing = _Refusing("503" if protocol == "http" else "StatusCode.UNAVAILABLE")
    client = PlantDxClient("127.0.0.1:1", protocol, retries=2, backoff_s=0.2)  # type: ignore[arg-type]
    client._client = refusing
    start = time.perf_counter()
    with pytest.raises(ServerOverloadedError, match=r"^server overloaded: queue full"):
        client.predict(b"any bytes")
    assert refusing.calls == 3 and time.perf_counter() - start > 0.45  # 0.2 + 0.4 s (±20%)

    class AsyncRefusing(_Refusing):
        async def infer(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
            super().infer()

        async def close(self) -> None:  # type: ignore[override]
            pass

    async def main() -> int:
        async_refusing = AsyncRefusing(refusing.error.status())
        c = AsyncPlantDxClient("127.0.0.1:1", protocol, retries=1, backoff_s=0.05)  # type: ignore[arg-type]
        c._client = async_refusing
        with pytest.raises(ServerOverloadedError, match=r"^server overloaded: queue full"):
            await c.predict(b"any bytes")
        return async_refusing.calls

    assert asyncio.run(main()) == 2


class _Metadata:
    """A tritonclient stand-in that answers model metadata (and counts the requests)."""

    def __init__(self, versions: list[str] | None) -> None:
        self.versions = versions
        self.calls: list[str] = []

    def get_model_metadata(self, name: str, *args: object, **kwargs: object) -> dict:
        from tritonclient.utils import InferenceServerException

        self.calls.append(name)
        if self.versions is None:
            raise InferenceServerException("This API is restricted", "403")
        return {"name": name, "versions": self.versions}

    def close(self) -> None:
        pass


def test_classifier_version_is_the_newest_ready_one_and_cached() -> None:
    from types import SimpleNamespace

    assert newest_ready_version({"versions": ["2", "10", "9"]}) == "10"  # numbers, not text
    assert newest_ready_version(SimpleNamespace(versions=["1"])) == "1"  # gRPC protobuf
    assert newest_ready_version({"versions": []}) is None
    meta = _Metadata(["1", "3"])
    client = PlantDxClient("127.0.0.1:1", version_ttl_s=0.3)
    client._client = meta
    assert [client.classifier_version() for _ in range(5)] == ["3"] * 5
    assert meta.calls == ["classifier"]  # one request per time-to-live, not one per image
    clone = client.clone()
    assert clone.classifier_version() == "3" and len(meta.calls) == 1  # workers share it
    meta.versions = ["4"]
    time.sleep(0.35)
    assert client.classifier_version() == "4" and len(meta.calls) == 2  # then read again
    refused = PlantDxClient("127.0.0.1:1", retries=3, backoff_s=2.0)
    refused._client = _Metadata(None)
    start = time.perf_counter()
    assert refused.classifier_version() is None  # a gateway that hides metadata: unknown
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_nothing_listening_retries_then_raises(protocol: str) -> None:
    port = _free_port()
    client = PlantDxClient(f"127.0.0.1:{port}", protocol, retries=2, backoff_s=0.2)  # type: ignore[arg-type]
    start = time.perf_counter()
    with pytest.raises(ServerUnavailableError, match=r"after 3 attempt\(s\)") as info:
        client.predict(b"any bytes")
    elapsed = time.perf_counter() - start
    assert 0.45 < elapsed < 5, elapsed  # slept 0.2 + 0.4 s (±20%) between three attempts
    assert f"127.0.0.1:{port} ({protocol})" in str(info.value)
    health = client.health()
    assert health.status == "unreachable" and not health.live and health.error


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_nothing_listening_retries_then_raises(protocol: str) -> None:
    async def main() -> float:
        async with AsyncPlantDxClient(
            f"127.0.0.1:{_free_port()}",
            protocol,  # type: ignore[arg-type]
            retries=2,
            backoff_s=0.2,
        ) as client:
            start = time.perf_counter()
            with pytest.raises(ServerUnavailableError, match=r"after 3 attempt\(s\)"):
                await client.predict(b"any bytes")
            assert (await client.health()).status == "unreachable"
            return time.perf_counter() - start

    assert asyncio.run(main()) > 0.45


def test_predict_many_stops_sending_once_unreachable(tmp_path: Path) -> None:
    images = [b"x"] * 40
    client = PlantDxClient(f"127.0.0.1:{_free_port()}", retries=1, backoff_s=0.3)
    start = time.perf_counter()
    outcomes = client.predict_many(images, concurrency=4)
    # 40 images × 2 attempts × 0.3 s would be 6 s per worker; the first failure stops the rest.
    assert time.perf_counter() - start < 3
    assert len(outcomes) == 40 and all(o.kind == "unavailable" for o in outcomes)
    assert sum(o.error.startswith("not sent") for o in outcomes if o.error) >= 30


@pytest.fixture()
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


@pytest.fixture()
def hanging_grpc() -> Iterator[int]:
    """A real gRPC server whose every method sleeps for 10 s before answering."""
    import grpc

    class Hang(grpc.GenericRpcHandler):
        def service(self, handler_call_details: object) -> grpc.RpcMethodHandler:
            def behave(request: bytes, context: object) -> bytes:
                time.sleep(10)
                return b""

            return grpc.unary_unary_rpc_method_handler(behave)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((Hang(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=0)


def test_http_timeout_is_clear_and_not_retried(silent_listener: int) -> None:
    client = PlantDxClient(f"127.0.0.1:{silent_listener}", timeout=0.5, retries=3, backoff_s=1.0)
    start = time.perf_counter()
    with pytest.raises(InferenceTimeoutError, match=r"within 0.5 s"):
        client.predict(b"x")
    assert 0.4 < time.perf_counter() - start < 1.4

    async def main() -> None:
        async with AsyncPlantDxClient(f"127.0.0.1:{silent_listener}", timeout=0.5) as c:
            with pytest.raises(InferenceTimeoutError, match=r"within 0.5 s"):
                await c.predict(b"x")

    start = time.perf_counter()
    asyncio.run(main())
    assert time.perf_counter() - start < 1.4


def test_grpc_timeout_is_clear_and_not_retried(hanging_grpc: int) -> None:
    url = f"127.0.0.1:{hanging_grpc}"
    client = PlantDxClient(url, "grpc", timeout=0.5, retries=3, backoff_s=1.0)
    start = time.perf_counter()
    with pytest.raises(InferenceTimeoutError, match=r"within 0.5 s"):
        client.predict(b"x")
    assert 0.4 < time.perf_counter() - start < 1.4

    async def main() -> None:
        async with AsyncPlantDxClient(url, "grpc", timeout=0.5, retries=3, backoff_s=1.0) as c:
            with pytest.raises(InferenceTimeoutError):
                await c.predict(b"x")

    start = time.perf_counter()
    asyncio.run(main())
    assert time.perf_counter() - start < 1.4


def test_expand_inputs_and_headers(tmp_path: Path) -> None:
    from plantdx.cli.predict import expand_inputs, parse_headers

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").write_bytes(b"1")
    (tmp_path / "a" / "y.PNG").write_bytes(b"2")
    (tmp_path / "a" / "notes.txt").write_text("3")
    (tmp_path / "empty").mkdir()
    paths, problems = expand_inputs(
        [
            str(tmp_path / "a"),
            str(tmp_path / "a" / "*.jpg"),
            str(tmp_path / "missing.jpg"),
            str(tmp_path / "nothing*.jpg"),
            str(tmp_path / "empty"),
        ]
    )
    assert [p.name for p in paths] == ["x.jpg", "y.PNG", "x.jpg"]
    assert [reason for _, reason in problems][:2] == [
        "file does not exist",
        "no files match this pattern",
    ]
    assert problems[2][1].startswith("no images in folder")
    assert parse_headers(["X-API-Key=a=b", "h= v"]) == {"X-API-Key": "a=b", "h": " v"}
    with pytest.raises(ConfigError, match="NAME=VALUE"):
        parse_headers(["novalue"])


# -- the real server --------------------------------------------------------------------------
def _junk() -> bytes:
    """Bytes that are not an image, different on every call, so no cache can answer them."""
    return b"not an image " + uuid.uuid4().bytes


def _labels(repo: Path) -> list[str]:
    return json.loads((repo / "plantdx-repository.json").read_text())["class_names"]


@pytest.mark.triton
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_predict_matches_in_process_reference(
    triton_server, tiny_repo: Path, mini_photos: list[Path], protocol: str
) -> None:
    from PIL import Image

    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    labels = _labels(tiny_repo)
    photo = mini_photos[3]
    expected = onnx_probabilities(tiny_repo, [photo.read_bytes()])[0]
    order = np.argsort(-expected)
    with PlantDxClient(url, protocol) as client:  # type: ignore[arg-type]
        preds = [
            client.predict(photo, top_k=5),
            client.predict(photo.read_bytes(), top_k=5),
            client.predict(str(photo), top_k=5),
        ]
        assert client.classes() == labels
        assert client.num_classes() == len(labels)
        health = client.health()
        pil_pred = client.predict(Image.open(photo), top_k=1)
    for p in preds:
        assert [c.label for c in p.top_k] == [labels[i] for i in order[:5]]
        assert [c.index for c in p.top_k] == list(order[:5])
        assert np.allclose([c.probability for c in p.top_k], expected[order[:5]], atol=1e-5)
        assert p.label == labels[order[0]] and p.model_version == "1" and p.latency_ms > 0
    assert preds[0].file == str(photo) and preds[1].file is None
    assert len(pil_pred.top_k) == 1  # PNG of the decoded photo: close, not bit-identical
    assert health.to_dict() == {
        "status": "healthy",
        "live": True,
        "ready": True,
        "model_ready": True,
        "model": "plantdx",
        "error": None,
    }


@pytest.mark.triton
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_async_client_agrees_with_sync(
    triton_server, tiny_repo: Path, mini_photos: list[Path], protocol: str
) -> None:
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    images: list[object] = [*mini_photos[:6], _junk()]

    async def main() -> tuple[list, list[str], str]:
        async with AsyncPlantDxClient(url, protocol) as client:  # type: ignore[arg-type]
            outcomes = await client.predict_many(images, concurrency=4, top_k=2)
            return outcomes, await client.classes(), (await client.health()).status

    outcomes, classes, status = asyncio.run(main())
    with PlantDxClient(url, protocol) as client:  # type: ignore[arg-type]
        sync = [client.predict(p, top_k=2) for p in mini_photos[:6]]
    assert classes == _labels(tiny_repo) and status == "healthy"
    assert [o.prediction.label for o in outcomes[:6] if o.prediction] == [p.label for p in sync]
    assert outcomes[6].kind == "invalid_image" and outcomes[6].source == "#6 <bytes>"


@pytest.mark.triton
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_image_is_never_retried(triton_server, protocol: str) -> None:
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    with PlantDxClient(url, protocol, retries=3, backoff_s=2.0) as client:  # type: ignore[arg-type]
        start = time.perf_counter()
        with pytest.raises(InvalidImageError) as info:
            client.predict(_junk())
        assert info.value.reason == "not_an_image"
        assert time.perf_counter() - start < 1.5  # one backoff alone would be 2 s


@pytest.mark.triton
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_real_server_timeout(triton_server, mini_photos: list[Path], protocol: str) -> None:
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    client = PlantDxClient(url, protocol, timeout=0.001)  # type: ignore[arg-type]
    # A photo no other test sends (no response-cache hit), tens of ms to decode.
    with client, pytest.raises(InferenceTimeoutError, match=r"within 0\.001 s"):
        client.predict(heavy_png(mini_photos[5 if protocol == "http" else 6].read_bytes()))


@pytest.mark.triton
def test_retries_reach_a_server_started_late(tiny_repo: Path, mini_photos: list[Path]) -> None:
    from plantdx.serving import TritonServer

    server = TritonServer(
        repository=tiny_repo,
        http_port=_free_port(),
        grpc_port=_free_port(),
        metrics_port=_free_port(),
    )
    results: dict[str, object] = {}

    def call(protocol: str, url: str) -> None:
        client = PlantDxClient(url, protocol, retries=30, backoff_s=0.25, max_backoff_s=1.0)  # type: ignore[arg-type]
        start = time.perf_counter()
        try:
            results[protocol] = (client.predict(mini_photos[0]), time.perf_counter() - start)
        except Exception as exc:
            results[protocol] = exc
        finally:
            client.close()

    threads = [
        threading.Thread(target=call, args=("http", server.http_url)),
        threading.Thread(target=call, args=("grpc", server.grpc_url)),
    ]
    for t in threads:
        t.start()
    time.sleep(1.5)  # both clients are now retrying against closed ports
    try:
        server.start(timeout_s=120)
        for t in threads:
            t.join(timeout=60)
    finally:
        server.stop()
    for protocol in PROTOCOLS:
        outcome = results[protocol]
        assert isinstance(outcome, tuple), outcome
        prediction, elapsed = outcome
        assert prediction.model_version == "1" and elapsed > 1.5


@pytest.mark.triton
def test_reported_version_follows_a_hot_update(
    tiny_repo: Path, tmp_path: Path, mini_photos: list[Path]
) -> None:
    """model_version is the classifier's version actually serving; the ensemble's stays 1."""
    from plantdx.serving.control import ModelControl

    repo = copy_repo(tiny_repo, tmp_path / "repo")
    server = start_server(repo, tmp_path / "triton.log")
    try:
        with PlantDxClient(server.http_url, version_ttl_s=0.2) as client:
            before = client.predict(mini_photos[0])
            assert (before.model_version, before.ensemble_version) == ("1", "1")
            # Version 2 published as export does (a pair), then loaded without a restart.
            for name in ("classifier", "preprocess"):
                shutil.copytree(repo / name / "1", repo / name / "2")
            with ModelControl(server.http_url) as control:
                control.load()
            time.sleep(0.25)  # past the client's time-to-live
            after = client.predict(mini_photos[0])
            assert (after.model_version, after.ensemble_version) == ("2", "1")
            assert after.to_dict()["model_version"] == "2"

        async def main() -> str | None:
            async with AsyncPlantDxClient(server.grpc_url, "grpc") as c:
                return (await c.predict(mini_photos[1])).model_version

        assert asyncio.run(main()) == "2"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def restricted_server(
    tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[object]:
    """Triton whose inference, metadata and health APIs demand an API key header."""
    from plantdx.serving import TritonServer

    server = TritonServer(
        repository=tiny_repo,
        http_port=_free_port(),
        grpc_port=_free_port(),
        metrics_port=_free_port(),
        log_file=tmp_path_factory.mktemp("restricted") / "triton.log",
        extra_args=[
            "--http-restricted-api=inference,metadata:x-api-key=letmein",
            "--grpc-restricted-protocol=inference,metadata:x-api-key=letmein",
        ],
    )
    server.start(timeout_s=180)
    try:
        yield server
    finally:
        server.stop()


# Triton expects the gRPC metadata key prefixed; a gateway would read the plain one. Mixed
# case on purpose: gRPC metadata keys must be sent lower case.
KEY_HEADERS = {"X-API-Key": "letmein", "Triton-GRPC-Protocol-X-API-Key": "letmein"}


@pytest.mark.triton
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_headers_reach_the_server(
    restricted_server, mini_photos: list[Path], protocol: str
) -> None:
    s = restricted_server
    url = s.http_url if protocol == "http" else s.grpc_url
    with PlantDxClient(url, protocol, retries=3, backoff_s=2.0) as client:  # type: ignore[arg-type]
        start = time.perf_counter()
        with pytest.raises(ClientError, match="refused the request") as info:
            client.predict(mini_photos[0])
        assert time.perf_counter() - start < 1.5  # refused: not retried
        assert not isinstance(info.value, ServerUnavailableError)
    with PlantDxClient(url, protocol, headers=KEY_HEADERS) as client:  # type: ignore[arg-type]
        assert client.predict(mini_photos[0]).model_version == "1"
        assert client.predict(mini_photos[1]).model_version == "1"  # headers not worn out
        assert len(client.classes()) == 15

    async def main() -> str:
        async with AsyncPlantDxClient(url, protocol, headers=KEY_HEADERS) as c:  # type: ignore[arg-type]
            return (await c.predict(mini_photos[0])).model_version

    assert asyncio.run(main()) == "1"


# -- TLS: a local TLS-terminating proxy in front of the real server ---------------------------
def _write_certs(out: Path) -> dict[str, str]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> object:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem_key(key: object, path: Path) -> str:
        path.write_bytes(
            key.private_bytes(  # type: ignore[attr-defined]
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return str(path)

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("plantdx test CA"))
        .issuer_name(name("plantdx test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, san: list[object]) -> tuple[object, object]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    import ipaddress

    server_key, server_cert = leaf(
        "localhost", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    client_key, client_cert = leaf("plantdx client", [])
    pem = serialization.Encoding.PEM
    (out / "ca.pem").write_bytes(ca.public_bytes(pem))
    (out / "server.pem").write_bytes(server_cert.public_bytes(pem))  # type: ignore[attr-defined]
    (out / "client.pem").write_bytes(client_cert.public_bytes(pem))  # type: ignore[attr-defined]
    return {
        "ca": str(out / "ca.pem"),
        "server_cert": str(out / "server.pem"),
        "server_key": pem_key(server_key, out / "server.key"),
        "client_cert": str(out / "client.pem"),
        "client_key": pem_key(client_key, out / "client.key"),
    }


class TLSProxy:
    """Terminates TLS (ALPN h2 for gRPC, client certificates required) and forwards bytes."""

    def __init__(self, certs: dict[str, str], upstream: str) -> None:
        self.host, port = upstream.rsplit(":", 1)
        self.upstream_port = int(port)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(certs["server_cert"], certs["server_key"])
        ctx.load_verify_locations(certs["ca"])
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        self.ctx = ctx
        self.loop = asyncio.new_event_loop()
        self.port = 0
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                writer.close()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_r, up_w = await asyncio.open_connection(self.host, self.upstream_port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))

        async def start() -> None:
            server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=self.ctx)
            self.port = server.sockets[0].getsockname()[1]
            started.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def tls(triton_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    certs = _write_certs(tmp_path_factory.mktemp("tls"))
    http = TLSProxy(certs, triton_server.http_url)
    grpc = TLSProxy(certs, triton_server.grpc_url)
    try:
        yield {"certs": certs, "http": f"localhost:{http.port}", "grpc": f"localhost:{grpc.port}"}
    finally:
        http.close()
        grpc.close()


@pytest.mark.triton
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tls_with_client_certificates(tls: dict, mini_photos: list[Path], protocol: str) -> None:
    certs = tls["certs"]
    mtls = {
        "root_certificates": certs["ca"],
        "certificate_chain": certs["client_cert"],
        "private_key": certs["client_key"],
    }
    with PlantDxClient(tls[protocol], protocol, **mtls) as client:  # type: ignore[arg-type]
        assert client.options.ssl
        assert client.predict(mini_photos[0]).model_version == "1"

    async def main() -> str:
        async with AsyncPlantDxClient(tls[protocol], protocol, **mtls) as c:  # type: ignore[arg-type]
            return (await c.predict(mini_photos[0])).model_version

    assert asyncio.run(main()) == "1"
    # Without the CA the server's certificate cannot be trusted: a clear error, no retries.
    start = time.perf_counter()
    with pytest.raises(ClientError) as info:
        PlantDxClient(tls[protocol], protocol, ssl=True, retries=3, backoff_s=2.0).predict(  # type: ignore[arg-type]
            mini_photos[0]
        )
    assert getattr(info.value, "kind", None) in ("tls", "unavailable")
    if protocol == "http":
        assert info.value.kind == "tls" and time.perf_counter() - start < 1.5  # type: ignore[attr-defined]


# -- plantdx predict ------------------------------------------------------------------------
def _predict(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plantdx", "predict", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.triton
def test_cli_predict_folders_globs_and_reasons(
    triton_server, mini_photos: list[Path], tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, p in enumerate(mini_photos[:12]):
        (folder / f"leaf{i:02d}.JPG").write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated " + uuid.uuid4().bytes)
    ok = _predict("--url", triton_server.grpc_url, "--protocol", "grpc", str(folder / "*.JPG"))
    assert ok.returncode == 0, ok.stderr
    assert "12 of 12 image(s) classified" in ok.stderr and "Pepper" in ok.stdout + ok.stderr

    r = _predict(
        "--url", triton_server.http_url, "--json", str(folder), str(tmp_path / "missing.jpg")
    )
    assert r.returncode == 1
    rows = json.loads(r.stdout)  # the progress bar (13 images) stays on stderr
    by_file = {Path(row["file"]).name: row for row in rows}
    assert len(rows) == 14
    assert by_file["missing.jpg"]["kind"] == "io"
    assert by_file["missing.jpg"]["error"] == "file does not exist"
    assert by_file["broken.jpg"]["kind"] == "invalid_image"
    assert (
        "not_an_image" in by_file["broken.jpg"]["error"]
        or "truncated" in by_file["broken.jpg"]["error"]
    )
    assert sum("label" in row for row in rows) == 12
    assert "2 of 14 image(s) failed" in r.stderr


def test_cli_predict_unreachable_server(tmp_path: Path) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x")
    r = _predict("--url", f"127.0.0.1:{_free_port()}", "--retries", "0", str(photo))
    assert r.returncode == 1
    assert "cannot reach plantdx" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.triton
def test_cli_predict_reports_overload_per_file(
    tiny_repo: Path, tmp_path: Path, mini_photos: list[Path]
) -> None:
    """The overload setup of tests/serving/test_serving.py: a queue of 2 in front of one slow
    preprocessing instance, flooded with 2000 × 2000 PNGs."""
    heavy = heavy_png(mini_photos[3].read_bytes())
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(16):
        (folder / f"big{i:02d}.png").write_bytes(heavy)
    repo = copy_repo(tiny_repo, tmp_path / "repo", slow_preprocess(queue_size=2))
    server = start_server(repo, tmp_path / "t.log")
    try:
        r = _predict(
            "--url", server.http_url, "--json", "--retries", "0", "--concurrency", "16",
            "--no-progress", str(folder),
        )  # fmt: skip
    finally:
        server.stop()
    assert r.returncode == 1, r.stderr
    rows = json.loads(r.stdout)
    refused = [row for row in rows if row.get("kind") == "overloaded"]
    assert refused and any("label" in row for row in rows), rows
    assert not any(row.get("kind") == "unavailable" for row in rows)
    for row in refused:
        assert row["error"].startswith("server overloaded: queue full; retry later"), row
    assert f"{len(refused)} image(s) refused: server overloaded" in r.stderr
    assert "cannot reach" not in r.stderr and "Traceback" not in r.stderr
