"""The served version as a property of the deployment: `--served-version` / PLANTDX_SERVED_VERSION
for `plantdx serve` and the container entrypoint (serving/served_version.py), and `plantdx repo
pin` for the repository itself. Unit tests of the pieces, then the real Triton server on a
repository with two versions: the entrypoint started with version 1 serves only version 1 (the
answers are version 1's), again after a restart; `repo pin` then a fresh plain server serves the
pinned version."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plantdx.exceptions import ServerError
from plantdx.serving import served_version as sv

from helpers.common import onnx_probabilities
from helpers.serving import alt_checkpoint, copy_repo, infer, start_server

CONFIG = """name: "classifier"
backend: "python"
max_batch_size: 8
version_policy {
  latest {
    num_versions: 1
  }
}
parameters {
  key: "note"
  value { string_value: "a } in a string and version_policy { all {} }" }
}
# version_policy { all { } } in a comment stays a comment
"""


# --- pieces, no server --------------------------------------------------------------------
def test_parse_served_version() -> None:
    assert sv.parse_served_version(None) is None
    assert sv.parse_served_version("  ") is None
    assert sv.parse_served_version("3") == 3
    for bad in ("0", "-1", "v2", "1.5"):
        with pytest.raises(ServerError, match="positive integer"):
            sv.parse_served_version(bad)
    assert sv.from_env({sv.ENV_VAR: ""}) is None
    assert sv.from_env({sv.ENV_VAR: "7"}) == 7


def test_pin_config_text_replaces_only_the_top_level_policy() -> None:
    from plantdx.model_repository.config import parse_pbtxt

    text = sv.pin_config_text(CONFIG, 2)
    cfg = parse_pbtxt(text)
    assert list(cfg.version_policy.specific.versions) == [2]
    assert cfg.max_batch_size == 8
    assert "a } in a string" in cfg.parameters["note"].string_value
    assert "# version_policy { all { } } in a comment" in text
    # Pinning a pinned config again leaves one policy.
    again = parse_pbtxt(sv.pin_config_text(text, 5))
    assert list(again.version_policy.specific.versions) == [5]
    with pytest.raises(ServerError, match="unbalanced"):
        sv.pin_config_text("version_policy { latest {}", 1)


def test_with_repository_and_repository_of() -> None:
    argv = ["--model-repository=/models/gpu", "--load-model=plantdx"]
    assert sv.repository_of(argv) == "/models/gpu"
    assert sv.with_repository(argv, "/tmp/v") == [
        "--model-repository=/tmp/v",
        "--load-model=plantdx",
    ]
    spaced = ["--model-repository", "/m", "--http-port=8000"]
    assert sv.with_repository(spaced, "/tmp/v") == [
        "--model-repository",
        "/tmp/v",
        "--http-port=8000",
    ]
    with pytest.raises(ServerError, match="no --model-repository"):
        sv.with_repository(["--http-port=8000"], "/tmp/v")


def _fake_repo(root: Path, versions: tuple[int, ...] = (1, 2)) -> Path:
    for name in ("preprocess", "classifier"):
        (root / name).mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(CONFIG.replace("classifier", name))
        for v in versions:
            (root / name / str(v)).mkdir()
            (root / name / str(v) / "model.py").write_text(f"# {name} {v}\n")
        (root / name / "labels.txt").write_text("a\nb\n")
    (root / "plantdx").mkdir()
    (root / "plantdx" / "config.pbtxt").write_text('name: "plantdx"\n')
    return root


def test_build_view(tmp_path: Path) -> None:
    repo = _fake_repo(tmp_path / "repo")
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    view = sv.build_view(repo, 1, tmp_path / "view")
    assert (view / "plantdx").is_symlink()
    assert (view / "classifier" / "2").resolve() == (repo / "classifier" / "2").resolve()
    assert (view / "preprocess" / "labels.txt").read_text() == "a\nb\n"
    for name in sv.PINNED_MODELS:
        assert "versions: 1" in (view / name / "config.pbtxt").read_text()
    # The repository itself is untouched.
    assert before == {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    with pytest.raises(ServerError, match=r"no version 3 of preprocess .*has 1, 2"):
        sv.build_view(repo, 3, tmp_path / "view3")
    with pytest.raises(ServerError, match="file system"):
        sv.build_view("s3://bucket/models", 1)


def test_supervisor_refuses_a_version_the_repository_lacks(tmp_path: Path) -> None:
    repo = _fake_repo(tmp_path / "repo", versions=(1,))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "plantdx.serving.supervise",
            "--served-version",
            "4",
            "--",
            "tritonserver",
            f"--model-repository={repo}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "no version 4 of preprocess" in done.stderr


# --- the real server ----------------------------------------------------------------------
def _index(server: Any) -> dict[str, list[int]]:
    """READY versions by model, from the repository index (restricted: the server's key)."""
    req = urllib.request.Request(
        f"http://{server.http_url}/v2/repository/index",
        data=b"{}",
        headers={"plantdx-key": server.admin_key},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        rows = json.loads(resp.read())
    out: dict[str, list[int]] = {}
    for m in rows:
        if m.get("state") == "READY" and str(m.get("version", "")).isdigit():
            out.setdefault(m["name"], []).append(int(m["version"]))
    return {k: sorted(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def two_versions(
    tiny_repo: Path, tiny_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    from plantdx.export import ExportConfig, export

    tmp = tmp_path_factory.mktemp("served")
    repo = copy_repo(tiny_repo, tmp / "repo")
    alt = alt_checkpoint(tiny_run / "best.pt", tmp / "alt.pt")
    assert export(ExportConfig(source=str(alt), repository=str(repo))).version == 2
    return {"repo": repo, "tmp": tmp}


@pytest.fixture(scope="module")
def photos(mini_photos: list[Path]) -> list[bytes]:
    return [p.read_bytes() for p in mini_photos[:3]]


class Supervised:
    """`python -m plantdx.serving.supervise -- <the pip Triton's command line>`, the container's
    entrypoint, with PLANTDX_SERVED_VERSION in its environment."""

    def __init__(self, repo: Path, log: Path, served: str) -> None:
        from plantdx.serving.server import TritonServer, free_port, server_env

        self.server = TritonServer(
            repository=repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port()
        )
        env = {**server_env(), sv.ENV_VAR: served}
        self.log = log
        cmd = [sys.executable, "-m", "plantdx.serving.supervise", "--", *self.server.command()]
        self.proc = subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(
                    f"http://{self.server.http_url}/v2/health/ready", timeout=2
                ) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError("not ready:\n" + self.log.read_text()[-3000:])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[list[Supervised]]:
    started: list[Supervised] = []
    yield started
    for s in started:
        s.stop()


@pytest.mark.triton
def test_entrypoint_serves_the_deployment_version_across_restarts(
    two_versions: dict[str, object], photos: list[bytes], supervised: list[Supervised]
) -> None:
    repo = two_versions["repo"]
    assert isinstance(repo, Path)
    want = onnx_probabilities(repo, photos, version=1)
    other = onnx_probabilities(repo, photos, version=2)
    assert not np.allclose(want, other, atol=1e-3), "the two versions must answer differently"
    views_before = set(Path("/tmp").glob(sv.VIEW_PREFIX + "*"))
    for attempt in range(2):  # a pod's start, then its restart
        s = Supervised(repo, Path(str(two_versions["tmp"])) / f"sup{attempt}.log", "1")
        supervised.append(s)
        s.wait_ready()
        index = _index(s.server)
        assert index["classifier"] == [1] and index["preprocess"] == [1], index
        got = infer(s.server.grpc_url, photos)
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert s.stop() == 0
        assert "serving version 1 of preprocess and classifier only" in s.log.read_text()
    # The views were removed on exit, and the repository still says "latest".
    assert set(Path("/tmp").glob(sv.VIEW_PREFIX + "*")) <= views_before
    assert "latest" in (repo / "classifier" / "config.pbtxt").read_text()


@pytest.mark.triton
def test_repo_pin_then_a_fresh_server_serves_the_pinned_version(
    two_versions: dict[str, object], photos: list[bytes]
) -> None:
    repo = copy_repo(Path(str(two_versions["repo"])), Path(str(two_versions["tmp"])) / "pinned")
    tmp = Path(str(two_versions["tmp"]))
    server = start_server(repo, tmp / "plain.log")  # the repository's policy: the latest
    try:
        assert _index(server)["classifier"] == [2]
    finally:
        server.stop()
    env = {k: v for k, v in os.environ.items() if k != sv.ENV_VAR}
    done = subprocess.run(
        [sys.executable, "-m", "plantdx", "repo", "pin", str(repo), "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "serves version 1" in done.stdout
    server = start_server(repo, tmp / "pinned.log")
    try:
        index = _index(server)
        assert index["classifier"] == [1] and index["preprocess"] == [1], index
        np.testing.assert_allclose(
            infer(server.grpc_url, photos), onnx_probabilities(repo, photos, version=1), atol=1e-4
        )
    finally:
        server.stop()
    bad = subprocess.run(
        [sys.executable, "-m", "plantdx", "repo", "pin", str(repo), "9"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert bad.returncode != 0 and "no version 9" in bad.stderr
