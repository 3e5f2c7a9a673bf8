"""The explanations' classifier of a --target triton repository (`classifier_cams`, published
beside preprocess and classifier as version N) moves with them: pins (a folder and S3 through
moto's server) and the views a following server serves pin it too; a follower switch loads it,
and a version without it, or a load that fails, leaves `plantdx` serving without explanations;
the container supervisor loads `plantdx_explain` when its command line does not."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CAMS = "classifier_cams"
POLICY = 'name: "{}"\nversion_policy {{ latest {{ num_versions: 1 }} }}\n'


def _text_repo(root: Path, cams_versions: tuple[int, ...] = (2,)) -> Path:
    """preprocess and classifier 1 and 2, classifier_cams of `cams_versions` (configs as text)."""
    for name, have in (("preprocess", (1, 2)), ("classifier", (1, 2)), (CAMS, cams_versions)):
        (root / name).mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(POLICY.format(name))
        for v in have:
            (root / name / str(v)).mkdir()
            (root / name / str(v) / "model.onnx").write_text(f"{name} {v}")
    (root / "plantdx_explain" / "1").mkdir(parents=True)
    (root / "plantdx_explain" / "config.pbtxt").write_text('name: "plantdx_explain"\n')
    return root


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    pytest.importorskip("moto")
    import boto3
    from moto.server import ThreadedMotoServer

    from plantdx.serving.server import free_port

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    try:
        # moto keeps its state per process, not per server: start from an empty one.
        urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST")
        ).close()
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        client.create_bucket(Bucket="models")
        yield f"127.0.0.1:{port}", client
    finally:
        server.stop()


def _upload(client: Any, repo: Path) -> None:
    for path in sorted(repo.rglob("*")):
        if path.is_file():
            key = f"repo/{path.relative_to(repo).as_posix()}"
            client.put_object(Bucket="models", Key=key, Body=path.read_bytes())


def test_an_s3_pin_and_view_carry_the_explanations_classifier(
    moto: tuple[str, Any], tmp_path: Path
) -> None:
    from plantdx.model_repository.asked import asked_version
    from plantdx.model_repository.location import open_repository
    from plantdx.model_repository.s3 import S3Location
    from plantdx.serving import view as views

    endpoint, client = moto
    _upload(client, _text_repo(tmp_path / "repo", cams_versions=(2,)))
    url = f"s3://{endpoint}/models/repo"
    s3 = S3Location.parse(url)
    assert s3.pinned_models() == ("preprocess", "classifier", CAMS)
    assert set(open_repository(url).saved_configs()) == {"preprocess", "classifier", CAMS}
    view = views.build(url, 2)
    try:
        assert views.pinned(view) == ("preprocess", "classifier", CAMS)
        assert (view / CAMS / "2" / "model.onnx").read_text() == f"{CAMS} 2"
        assert "versions: 2" in (view / CAMS / "config.pbtxt").read_text()
        # Version 1 has no maps: the switch to it mirrors none (no empty folder) and pins it.
        views.add_version(url, view, 1)
        assert (view / "classifier" / "1").is_dir() and not (view / CAMS / "1").exists()
        views.write_versions(url, view, [1])
        assert "versions: 1" in (view / CAMS / "config.pbtxt").read_text()
    finally:
        shutil.rmtree(view, ignore_errors=True)
    # A pin writes the follower's policy too, even for a version without maps.
    s3.pin(1)
    assert asked_version(url).version == 1
    body = client.get_object(Bucket="models", Key=f"repo/{CAMS}/config.pbtxt")["Body"].read()
    assert b"versions: 1" in body


def test_a_folder_view_pins_the_explanations_classifier(tmp_path: Path) -> None:
    from plantdx.serving import view as views

    repo = _text_repo(tmp_path / "repo")
    view = views.build(repo, 2)
    try:
        assert not (view / CAMS).is_symlink() and (view / "plantdx_explain").is_symlink()
        assert "versions: 2" in (view / CAMS / "config.pbtxt").read_text()
        assert (view / CAMS / "2").resolve() == (repo / CAMS / "2").resolve()
        (repo / CAMS / "3").mkdir()
        views.add_new_versions(repo, view, None, 2)
        assert (view / CAMS / "3").is_symlink()
        views.write_versions(repo, view, [3])
        assert "versions: 3" in (view / CAMS / "config.pbtxt").read_text()
        assert "versions" not in (repo / CAMS / "config.pbtxt").read_text().split("latest")[0]
    finally:
        shutil.rmtree(view, ignore_errors=True)


class FakeApi:
    """The model-control API of a server serving version 1 of everything; loads named in
    `fail` raise as Triton's would."""

    def __init__(self, fail: tuple[str, ...] = ()) -> None:
        self.fail = fail
        self.loads: list[tuple[str, Any]] = []
        self.ready = {m: [1] for m in ("preprocess", "classifier", CAMS)}
        self.ready.update({"plantdx": [1], "plantdx_explain": [1]})

    def index(self) -> list[dict[str, str]]:
        return [
            {"name": m, "version": str(v), "state": "READY"}
            for m, vs in self.ready.items()
            for v in vs
        ]

    def config(self, name: str) -> dict[str, Any]:
        steps = [{"model_name": m, "model_version": -1} for m in ("preprocess", "classifier")]
        if name == "plantdx_explain":
            steps.append({"model_name": CAMS, "model_version": -1})
        return {"name": name, "ensemble_scheduling": {"step": steps}}

    def load(self, name: str, config: Any = None) -> None:
        self.loads.append((name, config))
        if name in self.fail:
            raise ValueError(f"failed to load '{name}'")


def _steps(config: Any) -> dict[str, int]:
    return {s["model_name"]: s["model_version"] for s in config["ensemble_scheduling"]["step"]}


def test_a_follower_switch_moves_the_explanations_classifier_and_survives_its_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from plantdx.serving import view as views
    from plantdx.serving.follow import switch

    repo = _text_repo(tmp_path / "repo", cams_versions=(1, 2))
    view = views.build(repo, 1)
    try:
        api = FakeApi()
        assert switch(api, 2, location=str(repo), view=view, grace_s=0)  # type: ignore[arg-type]
        loaded = [name for name, _ in api.loads]
        assert loaded.count(CAMS) == 2 and loaded.index("classifier") < loaded.index(CAMS)
        pinned = [_steps(c) for n, c in api.loads if n == "plantdx_explain" and c]
        assert {"preprocess": 2, "classifier": 2, CAMS: 2} in pinned  # moved together
        assert "versions: 2" in (view / CAMS / "config.pbtxt").read_text()

        # A version whose explanations do not load: plantdx moves all the same.
        failing = FakeApi(fail=(CAMS, "plantdx_explain"))
        with caplog.at_level(logging.WARNING, logger="plantdx.follow"):
            assert switch(failing, 2, location=str(repo), view=view, grace_s=0)  # type: ignore[arg-type]
        assert "explanations unavailable" in caplog.text
        assert [
            n for n, c in failing.loads if n == "plantdx" and c and _steps(c)["classifier"] == 2
        ]
        # plantdx itself failing still fails the switch.
        with pytest.raises(ValueError):
            switch(FakeApi(fail=("plantdx",)), 2, location=str(repo), view=view, grace_s=0)  # type: ignore[arg-type]
    finally:
        shutil.rmtree(view, ignore_errors=True)


def _ready(url: str, model: str) -> bool:
    """Per-model readiness (open to every caller, unlike the repository index)."""
    try:
        with urllib.request.urlopen(f"http://{url}/v2/models/{model}/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.mark.triton
def test_the_container_supervisor_loads_the_explanations(tiny_repo: Path, tmp_path: Path) -> None:
    """`--load-model=plantdx` alone, as the container command lines say: the supervisor loads
    plantdx_explain once Triton is ready, and an explanation is answered."""
    from plantdx.client import PlantDxClient
    from plantdx.serving.server import TritonServer, free_port, server_env

    from helpers.common import SHARED_DATA
    from helpers.serving import copy_repo

    assert (tiny_repo / "plantdx_explain" / "config.pbtxt").is_file()
    repo = copy_repo(tiny_repo, tmp_path / "repo")
    plain = TritonServer(
        repository=repo,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        load_models=["plantdx"],
    )
    cmd = [sys.executable, "-m", "plantdx.serving.supervise", "--poll-secs", "0"]
    cmd += ["--", *plain.command()]
    log = tmp_path / "supervise.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=server_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        ready = False
        while time.monotonic() < deadline and not ready:
            assert proc.poll() is None, log.read_text()[-3000:]
            ready = _ready(plain.http_url, "plantdx_explain")
            time.sleep(0.5)
        assert ready and _ready(plain.http_url, "plantdx"), log.read_text()[-3000:]
        assert "loaded plantdx_explain" in log.read_text()
        photo = next((SHARED_DATA / "plantvillage-mini").rglob("*.JPG"), None)
        if photo is not None:
            with PlantDxClient(plain.http_url) as client:
                assert client.explain(photo).heatmap.ndim == 2
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
