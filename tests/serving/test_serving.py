"""The served preprocessing and batching: limits through the server, bad images failing alone
inside one dynamic batch, the queue policy under a flood, the response cache, warm-up and
graceful shutdown. Every test talks to a real Triton server."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from plantdx.exceptions import ServerError

from helpers.common import onnx_probabilities, wait_for
from helpers.serving import (
    children,
    copy_repo,
    fixed_instances,
    infer,
    png,
    png_header_only,
    slow_preprocess,
    start_server,
    stub_pids,
    try_infer,
    wait_until,
)
from helpers.serving import heavy_png as make_heavy_png

pytestmark = pytest.mark.triton


def limit_cases(photo: bytes) -> dict[str, bytes]:
    """One input per limit, keyed by the rejection reason it must produce."""
    return {
        "empty": b"",
        "not_an_image": b"<!doctype html><html><body>404</body></html>",
        "truncated": photo[: len(photo) // 2],
        "too_large": b"\xff\xd8\xff\xe0" + b"\x00" * (21 * 1024 * 1024),
        "too_many_pixels": png_header_only(8000, 6000),
        "too_small": png(Image.new("RGB", (31, 200), (0, 128, 0))),
    }


def _metrics(server) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as resp:
        return str(resp.read().decode())


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def batching_server(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One preprocess instance that waits up to 300 ms to fill a batch, so requests sent
    together are executed together; verbose log to see the warm-up."""

    def tweak(name: str, cfg) -> None:
        if name == "preprocess":
            fixed_instances(cfg, 1)
            cfg.dynamic_batching.max_queue_delay_microseconds = 300_000

    tmp = tmp_path_factory.mktemp("batching")
    repo = copy_repo(tiny_repo, tmp / "repo", tweak)
    server = start_server(repo, tmp / "triton.log", log_verbose=1)
    try:
        yield server
    finally:
        server.stop()


def _stats(server, model: str) -> tuple[int, int]:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        s = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(s.get("execution_count", 0)), int(s.get("inference_count", 0))


def test_every_limit_is_refused_by_the_server_with_its_reason(
    batching_server, mini_photos: list[Path]
) -> None:
    cases = limit_cases(mini_photos[0].read_bytes())
    before = _metrics(batching_server)
    with ThreadPoolExecutor(len(cases)) as pool:
        answers = pool.map(lambda b: try_infer(batching_server.grpc_url, b), cases.values())
        outcomes = dict(zip(cases, answers, strict=True))
    for reason, (probs, error) in outcomes.items():
        assert probs is None, f"{reason}: the server answered instead of refusing"
        assert f"invalid image ({reason})" in error, f"{reason}: unclear error {error!r}"
    time.sleep(1.2)  # custom metrics are published once a second
    after = _metrics(batching_server)
    for reason in cases:
        name = "plantdx_preprocess_rejections_total"
        assert _metric(after, name, reason=reason) - _metric(before, name, reason=reason) >= 1
    assert batching_server.is_ready()


def test_bad_images_fail_alone_inside_one_dynamic_batch(
    batching_server, tiny_repo: Path, mini_photos: list[Path]
) -> None:
    good = [p.read_bytes() for p in mini_photos[10:14]]
    bad = list(limit_cases(good[0]).items())[:4]
    stubs = stub_pids(batching_server.pid, "preprocess")
    execs0, infers0 = _stats(batching_server, "preprocess")
    requests = [
        b for pair in zip(good, (b for _, b in bad), strict=True) for b in pair
    ]  # interleaved
    barrier = threading.Barrier(len(requests))

    def send(image: bytes) -> tuple[object, str | None]:
        barrier.wait()
        return try_infer(batching_server.grpc_url, image)

    with ThreadPoolExecutor(len(requests)) as pool:
        outcomes = list(pool.map(send, requests))
    # Statistics are updated just after the responses go out.
    assert wait_until(lambda: _stats(batching_server, "preprocess")[1] - infers0 == 8, 5)
    execs1, _ = _stats(batching_server, "preprocess")
    # The eight requests really shared executions: fewer executions than images.
    assert execs1 - execs0 <= len(requests) // 2, execs1 - execs0
    expected = onnx_probabilities(tiny_repo, good)
    for i, (probs, error) in enumerate(outcomes):
        if i % 2 == 0:
            assert error is None, error
            assert np.abs(probs - expected[i // 2]).max() < 1e-5
        else:
            reason = bad[i // 2][0]
            assert error and f"invalid image ({reason})" in error
    assert stub_pids(batching_server.pid, "preprocess") == stubs  # the stub never died
    assert batching_server.is_ready()


def test_a_bad_image_sent_twice_gets_the_same_clear_error(batching_server) -> None:
    """Guards the cache placement: a cached error would come back as a confusing one."""
    errors = [try_infer(batching_server.grpc_url, b"<html>again</html>")[1] for _ in range(3)]
    assert all(e and "invalid image (not_an_image)" in e for e in errors), errors


def test_several_images_in_one_request_name_the_bad_one(
    batching_server, mini_photos: list[Path]
) -> None:
    images = [mini_photos[0].read_bytes(), b"", mini_photos[1].read_bytes()]
    with pytest.raises(Exception, match=r"invalid image \(empty\): image 2 of 3"):
        infer(batching_server.grpc_url, images)
    assert infer(batching_server.grpc_url, [images[0], images[2]]).shape == (2, 15)


def test_warmup_runs_a_real_photo_before_ready(batching_server) -> None:
    log = Path(batching_server.log_file).read_text(errors="replace")
    warm = log.find("model 'preprocess' instance preprocess_0_0 is running warmup sample")
    loaded = log.find("successfully loaded 'preprocess'")
    assert warm != -1 and "sample_leaf_jpeg" in log[warm : warm + 200]
    assert loaded > warm  # ready only after the warm-up
    assert "warmup" not in "".join(
        line for line in log.splitlines() if line.startswith("E") and "preprocess" in line
    )


def test_response_cache_hits_are_counted_and_identical(
    batching_server, tiny_repo: Path, mini_photos: list[Path]
) -> None:
    from plantdx.model_repository.config import parse_pbtxt

    repo = Path(batching_server.repository)
    cached = [
        m
        for m in ("plantdx", "preprocess", "classifier", "postprocess")
        if parse_pbtxt((repo / m / "config.pbtxt").read_text()).response_cache.enable
    ]
    assert cached, "no model has the response cache on"
    assert "plantdx" not in cached  # an ensemble entry would outlive a classifier update
    image = mini_photos[20].read_bytes()
    before = _metrics(batching_server)
    first = infer(batching_server.grpc_url, [image])
    second = infer(batching_server.grpc_url, [image])
    assert np.array_equal(first, second)
    assert np.abs(first - onnx_probabilities(tiny_repo, [image])).max() < 1e-5
    time.sleep(1.2)
    after = _metrics(batching_server)
    for model in cached:
        hits = _metric(after, "nv_cache_num_hits_per_model", model=model) - _metric(
            before, "nv_cache_num_hits_per_model", model=model
        )
        assert hits >= 1, f"no cache hit recorded for {model}"


@pytest.fixture()
def heavy_png(mini_photos: list[Path]) -> bytes:
    """A 3500 × 3500 PNG (no draft decoding for PNG): ~150 ms to preprocess."""
    return make_heavy_png(mini_photos[3].read_bytes(), side=3500)


def test_overload_is_refused_quickly_with_a_clear_error(
    tiny_repo: Path, tmp_path: Path, heavy_png: bytes, mini_photos: list[Path]
) -> None:
    """A queue of 2 in front of one slow instance: a flood of 16 gets quick refusals."""
    repo = copy_repo(tiny_repo, tmp_path / "repo", slow_preprocess(queue_size=2))
    server = start_server(repo, tmp_path / "t.log")
    try:
        barrier = threading.Barrier(16)

        def send(_: int) -> tuple[float, str | None]:
            barrier.wait()
            t0 = time.monotonic()
            _, error = try_infer(server.grpc_url, heavy_png, timeout_s=60)
            return time.monotonic() - t0, error

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(send, range(16)))
        refused = [(s, e) for s, e in results if e]
        served = [s for s, e in results if not e]
        assert len(refused) >= 8, results
        assert len(served) >= 1
        for seconds, error in refused:
            assert error and "exceeds maximum queue size" in error.lower(), error
            assert seconds < min(served) + 0.5  # refused at once, not after waiting its turn
        assert all(s < 60 for s, _ in results)  # nothing hung
        probs, error = try_infer(server.grpc_url, mini_photos[0].read_bytes())
        assert error is None and probs is not None
    finally:
        server.stop()


def _pending(metrics_url: str, model: str) -> float:
    import urllib.request

    with urllib.request.urlopen(metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    prefix = f'nv_inference_pending_request_count{{model="{model}"'
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def _queued(metrics_url: str, k: int) -> bool:
    """Whether `k` requests come to wait in front of the lone preprocess instance within 20 s.
    The heavy photo takes ~150 ms there on a quiet machine, so six requests hold four waiting
    for ~300 ms: the gauge (live) is read every 10 ms."""
    return wait_for(lambda: _pending(metrics_url, "preprocess") >= k, timeout=20, interval=0.01)


def test_sigterm_lets_in_flight_requests_finish(
    tiny_repo: Path, tmp_path: Path, heavy_png: bytes
) -> None:
    repo = copy_repo(tiny_repo, tmp_path / "repo", slow_preprocess())
    server = start_server(repo, tmp_path / "t.log")
    n = 6
    started = threading.Barrier(n + 1)

    def send(_: int) -> tuple[float, str | None]:
        started.wait()
        _, error = try_infer(server.grpc_url, heavy_png, timeout_s=60)
        return time.monotonic(), error

    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(send, i) for i in range(n)]
        started.wait()
        # Stop only once the server holds the requests: under load, threads start late.
        assert _queued(server.metrics_url, n - 2)
        t_term = time.monotonic()
        code = server.stop()
        results = [f.result() for f in futures]
    # When it was told to stop the server held at least n - 1 of them (n - 2 waiting, one in
    # the preprocess): those finish. One that had not reached it yet may be refused, and then
    # with the drain's clear answer, not a failure half-way through the ensemble.
    errors = [e for _, e in results if e]
    assert len(errors) <= 1, results
    assert all("has no available versions" in e for e in errors), results
    assert max(t for t, e in results if e is None) > t_term  # answers came after the SIGTERM
    assert code == 0
    assert "Waiting for in-flight requests to complete" in Path(tmp_path / "t.log").read_text()


# -- the container entrypoint: python -m plantdx.serving.supervise -----------------------------
def test_supervisor_reads_what_it_needs_from_tritons_flags() -> None:
    from plantdx.serving.server import TritonServer

    s = TritonServer.wrapping(
        "tritonserver",
        [
            "--model-repository=s3://bucket/models", "--model-control-mode", "explicit",
            "--load-model=plantdx", "--http-port=9000", "--exit-timeout-secs=45",
            "--http-restricted-api=model-repository:plantdx-key=sesame",
        ],
    )  # fmt: skip
    assert s.command()[0] == "tritonserver" and "--http-port=9000" in s.command()
    assert (s.http_port, s.model_control, s.load_models, s.exit_timeout_s) == (
        9000, "explicit", ["plantdx"], 45,
    )  # fmt: skip
    assert s._admin_key == "sesame" and s.http_url == "127.0.0.1:9000"
    with pytest.raises(ServerError, match="names header 'x-key'"):
        TritonServer.wrapping("tritonserver", ["--http-restricted-api=model-repository:x-key=k"])


def _supervised(tmp_path: Path, repo: Path) -> tuple[Any, str, str]:
    """`python -m plantdx.serving.supervise -- FLAGS` as a pod runs it: (process, gRPC, metrics)."""
    import subprocess
    import sys

    from plantdx.serving.server import free_port, prepare_backend_dir, pytriton_root, server_env

    http, grpc, metrics = free_port(), free_port(), free_port()
    flags = [
        f"--model-repository={repo}", f"--backend-directory={prepare_backend_dir()}",
        "--model-control-mode=explicit", "--load-model=plantdx", "--strict-readiness=true",
        "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
        f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}",
        # model-repository not first: the supervisor finds its key in any order
        "--exit-timeout-secs=30", "--http-restricted-api=shared-memory,model-repository:plantdx-key=k3y",
    ]  # fmt: skip
    with open(tmp_path / "supervise.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "plantdx.serving.supervise", "--",
             str(pytriton_root() / "bin" / "tritonserver"), *flags],
            env=server_env(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return proc, f"127.0.0.1:{grpc}", f"http://127.0.0.1:{metrics}/metrics"


def _stop_supervisor(proc) -> None:
    """SIGTERM first, so the supervisor stops Triton and Triton its stubs (a SIGKILL to the
    supervisor alone can leave a stub of a reloaded model running); SIGKILL if it hangs."""
    import signal
    import subprocess

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_supervised_triton_restarts_a_dead_stub(
    tiny_repo: Path, tmp_path: Path, mini_photos: list[Path]
) -> None:
    import os
    import signal

    proc, url, _ = _supervised(tmp_path, tiny_repo)
    log = tmp_path / "supervise.log"
    image = mini_photos[0].read_bytes()
    try:
        # Started in full (the follower's first pass reloads the models once)
        assert wait_for(lambda: "version policy" in log.read_text(), timeout=180)
        assert try_infer(url, image)[1] is None
        time.sleep(2.0)  # the watchdog has seen the stubs alive, the replaced ones are gone
        for pid in stub_pids(children(proc.pid)[0], "preprocess"):
            os.kill(pid, signal.SIGKILL)
        # Alone, Triton 2.51 would answer "Stub process is not healthy" from now on.
        assert wait_for(lambda: try_infer(url, image)[1] is None, timeout=60)
        assert "stub of preprocess died; the model was reloaded" in log.read_text()
    finally:
        _stop_supervisor(proc)


def test_supervised_triton_drains_on_sigterm(
    tiny_repo: Path, tmp_path: Path, heavy_png: bytes
) -> None:
    import signal

    repo = copy_repo(tiny_repo, tmp_path / "repo", slow_preprocess())
    proc, url, metrics = _supervised(tmp_path, repo)
    log = tmp_path / "supervise.log"
    n = 6
    started = threading.Barrier(n + 1)

    def send(_: int) -> tuple[float, str | None]:
        started.wait()
        _, error = try_infer(url, heavy_png, timeout_s=60)
        return time.monotonic(), error

    try:
        # Started in full: the follower's first pass reloads each ensemble once; requests
        # still inside an instance it replaced are finished by Triton but unseen by the drain
        # (a SIGTERM in that second can fail them: README, "Serving").
        assert wait_for(lambda: "version policy" in log.read_text(), timeout=180)
        with ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(send, i) for i in range(n)]
            started.wait()
            # Requests inside Triton before SIGTERM: one in the lone preprocess instance, at
            # least four queued in front of it (the first may already be past it).
            assert _queued(metrics, n - 2)
            t_term = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            results = [f.result() for f in futures]
            code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Plain tritonserver fails most of these with "Server is stopping".
    assert [e for _, e in results] == [None] * n, results
    assert max(t for t, _ in results) > t_term
    assert code == 0
    text = log.read_text()
    assert "SIGTERM: draining" in text and "k3y" not in text


def test_supervised_triton_drains_requests_sent_during_the_followers_first_pass(
    tiny_repo: Path, tmp_path: Path, heavy_png: bytes
) -> None:
    """SIGTERM while the follower's start-up pass reloads the ensembles, with requests inside
    Triton since before that pass: every one of them is answered, and the exit is clean."""
    import signal

    repo = copy_repo(tiny_repo, tmp_path / "repo", slow_preprocess())
    proc, url, metrics = _supervised(tmp_path, repo)
    log = tmp_path / "supervise.log"
    n = 6
    started = threading.Barrier(n + 1)

    def send(_: int) -> str | None:
        started.wait()
        return try_infer(url, heavy_png, timeout_s=60)[1]

    try:
        assert wait_for(lambda: "Triton is ready" in log.read_text(), timeout=180, interval=0.02)
        with ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(send, i) for i in range(n)]
            started.wait()
            # Inside Triton while the start-up pass reloads the ensembles around them.
            assert _queued(metrics, n - 2)
            assert "version policy" not in log.read_text()
            proc.send_signal(signal.SIGTERM)
            errors = [f.result() for f in futures]
            code = proc.wait(timeout=90)
    finally:
        _stop_supervisor(proc)
    assert errors == [None] * n, errors
    assert code == 0
