"""`plantdx promote --repository s3://...` with no local repository, against moto's S3 server:
the repository's pieces (versions, pin and put back, records appended in the bucket), a
following server's view that mirrors new versions so a candidate can be loaded beside the
served one, and a real promotion: only the bucket is written, and the server compared through
switches to the candidate by itself, as every server following the bucket does."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.export import two_versions

KEY = "pdx-" + secrets.token_hex(12)
CREDS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    """(host:port of a moto S3 server with a bucket `models`, a boto3 client)."""
    pytest.importorskip("moto")
    import boto3
    from moto.server import ThreadedMotoServer

    from plantdx.serving.server import free_port

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    for name, value in CREDS.items():
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


def _upload(client: Any, repo: Path, prefix: str = "repo") -> None:
    for path in sorted(repo.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            key = f"{prefix}/{path.relative_to(repo).as_posix()}"
            client.put_object(Bucket="models", Key=key, Body=path.read_bytes())


def _object(client: Any, key: str) -> bytes:
    return bytes(client.get_object(Bucket="models", Key=key)["Body"].read())


def _fake_repository(client: Any, versions: tuple[int, ...] = (1, 2)) -> None:
    for name in ("preprocess", "classifier"):
        client.put_object(
            Bucket="models",
            Key=f"repo/{name}/config.pbtxt",
            Body=b'name: "x"\nversion_policy { specific { versions: 1 } }\n',
        )
        for v in versions:
            client.put_object(Bucket="models", Key=f"repo/{name}/{v}/model.py", Body=f"#{v}")
    client.put_object(
        Bucket="models", Key="repo/classifier/2/provenance.json", Body=b'{"mlflow_run_id": "r2"}'
    )


def test_an_s3_repository_is_pinned_put_back_and_records_in_the_bucket(
    moto: tuple[str, Any],
) -> None:
    from plantdx.exceptions import RepositoryError
    from plantdx.model_repository.asked import asked_version
    from plantdx.model_repository.location import S3Repository, open_repository

    endpoint, client = moto
    _fake_repository(client)
    url = f"s3://{endpoint}/models/repo"
    repo = open_repository(url)
    assert isinstance(repo, S3Repository) and repo.is_remote
    repo.check()
    assert repo.versions("classifier") == [1, 2]
    saved = repo.saved_configs()
    repo.pin(2)
    assert asked_version(url).version == 2
    repo.restore_configs(saved)
    assert asked_version(url).version == 1
    assert repo.version_json(2, "provenance.json") == {"mlflow_run_id": "r2"}
    assert repo.version_json(1, "provenance.json") == {}  # absent
    where = repo.append_record(2, "promotion.json", {"n": 1})
    repo.append_record(2, "promotion.json", {"n": 2})
    assert where == f"{url}/classifier/2/promotion.json"
    assert json.loads(_object(client, "repo/classifier/2/promotion.json")) == [{"n": 1}, {"n": 2}]
    with pytest.raises(RepositoryError, match="not a plantdx model repository"):
        open_repository(f"s3://{endpoint}/models/nothing").check()


def test_a_half_written_s3_pin_is_put_back(moto: tuple[str, Any], monkeypatch: Any) -> None:
    from plantdx.model_repository.asked import asked_version
    from plantdx.model_repository.location import open_repository
    from plantdx.model_repository.s3 import S3Location
    from plantdx.promotion.switch import PromotionFailedError, publish

    endpoint, client = moto
    _fake_repository(client)
    url = f"s3://{endpoint}/models/repo"
    repo = open_repository(url)
    real_put = S3Location.put
    calls: list[tuple[str, ...]] = []

    def put_then_fail(self: S3Location, data: bytes, *parts: str) -> None:
        calls.append(parts)
        if len(calls) == 2:  # preprocess's config written, classifier's refused
            raise OSError("connection reset")
        real_put(self, data, *parts)

    monkeypatch.setattr(S3Location, "put", put_then_fail)
    with pytest.raises(PromotionFailedError, match="as it was"):
        publish(repo, 2)
    monkeypatch.setattr(S3Location, "put", real_put)
    assert asked_version(url).version == 1
    assert b"versions: 1" in _object(client, "repo/preprocess/config.pbtxt")


def test_a_following_view_mirrors_new_versions(moto: tuple[str, Any], tmp_path: Path) -> None:
    """An s3:// view holds the served version and every newer one (candidates), so a comparison
    can load them beside it; a folder view links versions published after it was built."""
    import shutil

    from plantdx.model_repository.asked import asked_version
    from plantdx.serving import view as views

    endpoint, client = moto
    _fake_repository(client, (1, 2, 3))
    url = f"s3://{endpoint}/models/repo"
    view = views.build(url, 2)  # the served version and the newer ones
    try:
        assert sorted(p.name for p in (view / "classifier").iterdir()) == ["2", "3", "config.pbtxt"]
        for name in ("preprocess", "classifier"):  # exported after the view was built
            client.put_object(Bucket="models", Key=f"repo/{name}/4/model.py", Body=b"#4")
        added = views.add_new_versions(url, view, asked_version(url).available, 2)
        assert added == [4]
        assert (view / "classifier" / "4" / "model.py").read_text() == "#4"
        assert (view / "preprocess" / "4" / "model.py").read_text() == "#4"
        assert not (view / "classifier" / "1").exists()  # older: when a switch needs it
        assert views.add_new_versions(url, view, asked_version(url).available, 2) == []
        assert not list(view.parent.glob(".plantdx-download-*"))  # staging removed
        views.drop_versions(url, view, [3])  # switched to 3: the older one goes
        assert sorted(p.name for p in (view / "classifier").iterdir()) == ["3", "4", "config.pbtxt"]
    finally:
        shutil.rmtree(view, ignore_errors=True)

    folder = tmp_path / "repo"
    for name in ("preprocess", "classifier"):
        (folder / name / "1").mkdir(parents=True)
        (folder / name / "config.pbtxt").write_text('name: "x"\n')
    view = views.build(folder, 1)
    try:
        for name in ("preprocess", "classifier"):
            (folder / name / "2").mkdir()
        assert views.add_new_versions(folder, view, None, 1) == []
        assert (view / "classifier" / "2").resolve() == (folder / "classifier" / "2").resolve()
    finally:
        shutil.rmtree(view, ignore_errors=True)


# -- a real promotion through a server that follows the bucket -------------------------------


def _serve(url: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`plantdx serve` on the bucket (it follows it, every second); (process, its address)."""
    from plantdx.serving.server import free_port

    http, grpc, metrics = free_port(), free_port(), free_port()
    env = {**os.environ, **CREDS, "PLANTDX_ADMIN_KEY": KEY}
    env.pop("PLANTDX_SERVED_VERSION", None)
    cmd = [sys.executable, "-m", "plantdx", "serve", "--repository", url, "--poll-secs", "1"]
    cmd += ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{http}"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"http://{address}/v2/models/plantdx/ready", timeout=2):
                return proc, address
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError("not ready:\n" + log.read_text()[-3000:])


def _ready(address: str, model: str) -> list[int]:
    from plantdx.serving.control import ModelControl

    with ModelControl(address, key=KEY) as control:
        return control.ready_versions(model)


@pytest.mark.triton
@pytest.mark.slow
def test_promote_writes_only_the_bucket_and_the_server_follows(
    moto: tuple[str, Any],
    tiny_run: Path,
    weak_run: Path,
    mini_dir: Path,
    mlflow_store: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from plantdx.cli import app
    from plantdx.model_repository.asked import asked_version

    endpoint, client = moto
    source = two_versions(tmp_path, weak_run, tiny_run)
    _upload(client, source)
    before = {p: p.read_bytes() for p in sorted(source.rglob("*")) if p.is_file()}
    url = f"s3://{endpoint}/models/repo"
    assert asked_version(url).version == 1
    proc, address = _serve(url, tmp_path / "serve.log")
    try:
        monkeypatch.setenv("PLANTDX_ADMIN_KEY", KEY)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
        monkeypatch.chdir(tmp_path)
        args = ["promote", "--url", address, "--repository", url, "--candidate", "2"]
        args += ["--data", str(mini_dir), "--limit", "80", "--registered-model", "plantdx-test"]
        t0 = time.monotonic()
        done = CliRunner().invoke(app, [*args, "--wait-secs", "90", "--json"])
        assert done.exit_code == 0, done.output
        result = json.loads(done.output)
        assert result["promoted"] and result["gate"]["passed"], result["gate"]
        assert result["followed"], "the server did not switch to version 2 by itself"
        print(f"promoted and followed in {time.monotonic() - t0:.1f} s")
        assert any("switches to version 2 by itself" in s for s in result["steps"])
        # Only the bucket was written: its policy serves 2, the evidence is beside version 2.
        assert asked_version(url).version == 2
        for name in ("preprocess", "classifier"):
            assert b"versions: 2" in _object(client, f"repo/{name}/config.pbtxt")
        records = json.loads(_object(client, "repo/classifier/2/promotion.json"))
        assert len(records) == 1, records
        (record,) = records
        assert record["candidate"] == 2 and record["champion"] == 1
        assert record["repository"] == url
        assert result["recorded"]["repository"] == f"{url}/classifier/2/promotion.json"
        assert {p: p.read_bytes() for p in sorted(source.rglob("*")) if p.is_file()} == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["repo", "serve.log"]
        # The server follows the bucket: version 2 alone, by the follower's own switch.
        assert _ready(address, "classifier") == [2] and _ready(address, "preprocess") == [2]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_follower_finding_the_server_moved_writes_its_view(tmp_path: Path) -> None:
    """A server already moved by model control (a promotion on a folder): the follower's switch
    changes nothing on the server but makes the view's configs name the served version, so a
    later reload (a dead stub's) keeps it."""
    from plantdx.serving import view as views
    from plantdx.serving.follow import switch

    repo = tmp_path / "repo"
    for name in ("preprocess", "classifier"):
        for v in (1, 2):
            (repo / name / str(v)).mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(
            'name: "x"\nversion_policy { specific { versions: 2 } }\n'
        )
    view = views.build(repo, 1)

    class Api:
        def __init__(self) -> None:
            self.loads: list[str] = []

        def index(self) -> list[dict[str, str]]:
            return [
                {"name": n, "version": "2", "state": "READY"} for n in ("preprocess", "classifier")
            ]

        def config(self, name: str) -> dict[str, Any]:
            step = {"model_name": "classifier", "model_version": -1}
            return {"name": name, "ensemble_scheduling": {"step": [step]}}

        def load(self, name: str, config: Any = None) -> None:
            self.loads.append(name)

    try:
        assert "versions: 1" in (view / "classifier" / "config.pbtxt").read_text()
        api = Api()
        assert switch(api, 2, location=str(repo), view=view, grace_s=0) is False  # type: ignore[arg-type]
        assert api.loads == []
        for name in ("preprocess", "classifier"):
            text = (view / name / "config.pbtxt").read_text()
            assert "versions: 2" in text and "versions: 1" not in text
    finally:
        import shutil

        shutil.rmtree(view, ignore_errors=True)
