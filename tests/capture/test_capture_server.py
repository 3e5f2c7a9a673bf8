"""Capture with the real Triton server: exactly the abstained and low-confidence answers are
kept, and a destination that stops accepting writes (a folder, an S3 bucket) fails no request
and is counted in plantdx_captures_total."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plantdx.capture.settings import CaptureSettings

from helpers.capture import with_threshold
from helpers.common import onnx_probabilities, wait_for
from helpers.serving import copy_repo, start_server, try_infer

pytestmark = pytest.mark.triton


def captures_total(server: Any, outcome: str) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    pattern = re.compile(r"^plantdx_captures_total\{([^}]*)\} (\S+)$", re.M)
    return sum(float(v) for labels, v in pattern.findall(text) if f'outcome="{outcome}"' in labels)


def thresholds(confidences: np.ndarray) -> tuple[float, float]:
    """An abstention threshold under which a third of the photos fall, and a low-confidence
    threshold under which two thirds do, each halfway between two photos."""
    c = np.sort(confidences)
    third = len(c) // 3
    return float(c[third - 1] + c[third]) / 2, float(c[2 * third - 1] + c[2 * third]) / 2


def send_all(url: str, photos: list[bytes], workers: int = 4) -> list[str]:
    """Every photo once, `workers` at a time; the errors."""
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda b: try_infer(url, b), photos))
    return [err for _, err in results if err]


def sidecars(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("*.json"))]


@pytest.fixture(scope="module")
def photos(mini_photos: list[Path]) -> list[bytes]:
    return [p.read_bytes() for p in mini_photos]


@pytest.fixture(scope="module")
def plan(tiny_repo: Path, photos: list[bytes]) -> dict[str, Any]:
    conf = onnx_probabilities(tiny_repo, photos).max(axis=1)
    abstain, low = thresholds(conf)
    sha = [hashlib.sha256(b).hexdigest() for b in photos]
    expected = {
        s: ("abstained" if c < abstain else "low_confidence")
        for s, c in zip(sha, conf, strict=True)
        if c < low
    }
    confident = [b for b, c in zip(photos, conf, strict=True) if c >= low]
    return {"abstain": abstain, "low": low, "expected": expected, "confident": confident}


@pytest.fixture(scope="module")
def folder_server(
    tiny_repo: Path, plan: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, Path]]:
    base = tmp_path_factory.mktemp("capture")
    repo = copy_repo(tiny_repo, base / "repo", with_threshold(plan["abstain"]))
    cap = base / "captured"
    env = CaptureSettings(str(cap), rate=0.0, low_confidence=plan["low"], max_per_s=0).to_env()
    server = start_server(repo, base / "triton.log", env=env)
    try:
        yield server, cap
    finally:
        server.stop()


def test_rate_zero_captures_exactly_the_abstained_and_low_confidence(
    folder_server: tuple[Any, Path], plan: dict[str, Any], photos: list[bytes]
) -> None:
    server, cap = folder_server
    expected = plan["expected"]
    assert 0 < len(expected) < len(photos)
    assert send_all(server.grpc_url, photos) == []
    assert wait_for(lambda: len(sidecars(cap)) >= len(expected), timeout=30)
    found = {s["sha256"]: s for s in sidecars(cap)}
    assert {k: s["reason"] for k, s in found.items()} == expected
    for s in found.values():
        assert s["version"] == "1" and s["model"] == "plantdx"
        assert (s["decision"] == "uncertain") == (s["reason"] == "abstained")
        assert s["confidence"] < plan["low"]
        stored = next(cap.rglob(s["file"])).read_bytes()
        assert len(stored) == s["bytes"] and stored[:3] == b"\xff\xd8\xff"
    # The counts are published with the next batch.
    assert send_all(server.grpc_url, plan["confident"][:1]) == []
    assert wait_for(lambda: captures_total(server, "written") == len(expected), timeout=10)


def unwritable(path: Path) -> Callable[[], None]:
    """Make writes under `path` fail (chmod does not stop root: then a file takes its place);
    returns the undo."""
    if os.geteuid() != 0:
        dirs = [path, *(d for d in path.rglob("*") if d.is_dir())]
        for d in dirs:
            d.chmod(0o555)
        return lambda: [d.chmod(0o755) for d in dirs] and None
    moved = path.with_name(path.name + ".moved")
    path.rename(moved)
    path.write_bytes(b"")

    def undo() -> None:
        path.unlink()
        moved.rename(path)

    return undo


def test_an_unwritable_folder_fails_no_request_and_counts_drops(
    folder_server: tuple[Any, Path], plan: dict[str, Any], photos: list[bytes]
) -> None:
    server, cap = folder_server
    assert wait_for(lambda: captures_total(server, "written") > 0, timeout=10)
    written = captures_total(server, "written")
    undo = unwritable(cap)
    try:
        assert send_all(server.grpc_url, photos * 2, workers=8) == []
        assert send_all(server.grpc_url, plan["confident"][:1]) == []  # publishes the counts
        assert wait_for(lambda: captures_total(server, "dropped_error") > 0, timeout=10)
    finally:
        undo()
    assert captures_total(server, "written") == written
    assert server.is_ready()


def test_s3_capture_and_a_bucket_that_goes_away(
    tiny_repo: Path,
    plan: dict[str, Any],
    photos: list[bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("moto")
    import boto3
    from moto.server import ThreadedMotoServer

    from plantdx.serving.server import free_port

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    moto.start()
    creds = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "PLANTDX_S3_ENDPOINT": f"http://127.0.0.1:{port}",
    }
    for k, v in creds.items():
        monkeypatch.setenv(k, v)
    s3 = boto3.client("s3", endpoint_url=creds["PLANTDX_S3_ENDPOINT"])
    s3.create_bucket(Bucket="leaves")
    repo = copy_repo(tiny_repo, tmp_path / "repo", with_threshold(plan["abstain"]))
    settings = CaptureSettings(
        "s3://leaves/capture", rate=0.0, low_confidence=plan["low"], max_per_s=0
    )
    server = start_server(repo, tmp_path / "triton.log", env={**settings.to_env(), **creds})
    try:

        def keys() -> list[str]:
            return [o["Key"] for o in s3.list_objects_v2(Bucket="leaves").get("Contents", [])]

        assert send_all(server.grpc_url, photos) == []
        n = len(plan["expected"])
        assert wait_for(lambda: len(keys()) >= 2 * n, timeout=30)
        assert len(keys()) == 2 * n and all(k.startswith("capture/") for k in keys())
        sides = [k for k in keys() if k.endswith(".json")]
        shas = {
            json.loads(s3.get_object(Bucket="leaves", Key=k)["Body"].read())["sha256"]
            for k in sides
        }
        assert shas == set(plan["expected"])
        # The bucket goes away, then the whole endpoint.
        s3.delete_objects(Bucket="leaves", Delete={"Objects": [{"Key": k} for k in keys()]})
        s3.delete_bucket(Bucket="leaves")
        assert send_all(server.grpc_url, photos, workers=8) == []
        moto.stop()
        moto = None
        assert send_all(server.grpc_url, photos, workers=8) == []
        assert send_all(server.grpc_url, plan["confident"][:1]) == []
        assert wait_for(lambda: captures_total(server, "dropped_error") > 0, timeout=15)
        assert captures_total(server, "written") == n
        assert server.is_ready()
    finally:
        server.stop()
        if moto is not None:
            moto.stop()
        shutil.rmtree(tmp_path / "repo", ignore_errors=True)
