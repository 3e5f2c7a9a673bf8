"""The pieces of a fleet that follows its repository, without a server: the version a
repository asks for (text parsing without protobuf, a folder and S3 through moto's server),
the S3 request signature against botocore's, the served-version override's precedence, and the
load generator's round robin over several servers."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from plantdx.exceptions import ConfigError, RepositoryError, ServerError
from plantdx.model_repository.asked import asked_version
from plantdx.model_repository.policy import (
    RepositoryChangingError,
    pin_config_text,
    policy_versions,
)
from plantdx.model_repository.s3 import S3Location, sign
from plantdx.serving.served_version import ServedSpec, parse_spec, start_version


def test_policy_versions() -> None:
    have = [1, 2, 3]
    assert policy_versions('name: "c"\n', have) == [3]  # Triton's default: the latest
    assert policy_versions("version_policy { latest { num_versions: 2 } }", have) == [2, 3]
    assert policy_versions("version_policy { latest {} }", have) == [3]
    assert policy_versions("version_policy { all {} }", have) == have
    assert policy_versions(
        "version_policy {\n specific {\n versions: 1\n versions: 3 } }", have
    ) == [
        1,
        3,
    ]
    assert policy_versions("version_policy: { specific: { versions: [2, 9] } }", have) == [2]
    commented = "# version_policy { all {} }\nversion_policy { specific { versions: 1 } }"
    assert policy_versions(commented, have) == [1]
    with pytest.raises(RepositoryError, match="unknown version_policy"):
        policy_versions("version_policy { newest {} }", have)


def _repo(root: Path, versions: dict[str, list[int]], policy: str = "") -> Path:
    for name, have in versions.items():
        (root / name).mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(f'name: "{name}"\n{policy}')
        for v in have:
            (root / name / str(v)).mkdir()
    return root


def test_asked_version_of_a_folder(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "r", {"preprocess": [1, 2], "classifier": [1, 2]})
    assert asked_version(repo).version == 2
    for name in ("preprocess", "classifier"):
        path = repo / name / "config.pbtxt"
        path.write_text(pin_config_text(path.read_text(), 1))
    assert asked_version(repo).version == 1
    # Half way through a change: no version in common.
    half = _repo(tmp_path / "h", {"preprocess": [1, 2], "classifier": [1]})
    (half / "classifier" / "config.pbtxt").write_text("version_policy { specific { versions: 1 } }")
    (half / "preprocess" / "config.pbtxt").write_text("version_policy { specific { versions: 2 } }")
    with pytest.raises(RepositoryChangingError, match="no version in common"):
        asked_version(half)


def test_served_spec_precedence(tmp_path: Path) -> None:
    assert parse_spec("") is None and parse_spec(None) is None
    assert parse_spec("3") == ServedSpec(3)
    canary = parse_spec("3@2")
    assert canary == ServedSpec(3, 2)
    assert canary is not None and str(canary) == "3@2"
    assert canary.target(2) == 3  # in place of 2 only
    assert canary.target(3) == 3 and canary.target(1) == 1  # a promotion, a roll-back: the repo
    assert ServedSpec(3).target(1) == 3  # a plain override holds
    for bad in ("3@", "@2", "x@2", "3@0"):
        with pytest.raises(ServerError):
            parse_spec(bad)
    repo = _repo(tmp_path / "r", {"preprocess": [1, 2, 3], "classifier": [1, 2, 3]})
    for name in ("preprocess", "classifier"):
        path = repo / name / "config.pbtxt"
        path.write_text(pin_config_text(path.read_text(), 2))
    assert start_version(ServedSpec(3, 2), repo) == 3
    assert start_version(ServedSpec(3, 1), repo) is None  # the repository moved on: follow it
    assert start_version(ServedSpec(1), repo) == 1
    assert start_version(None, repo) is None


def test_signature_matches_botocore() -> None:
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    when = dt.datetime(2026, 12, 5, 12, 0, 0, tzinfo=dt.timezone.utc)
    url = "http://127.0.0.1:9000/bucket/?list-type=2&prefix=repo%2Fclassifier%2F&delimiter=%2F"
    for method, payload, token in (("GET", b"", ""), ("PUT", b"version_policy {}", "tok")):
        target = url if method == "GET" else "http://127.0.0.1:9000/bucket/repo/a%20b/config.pbtxt"
        mine = sign(
            method,
            target,
            region="eu-west-1",
            access_key="AKID",
            secret_key="SECRET",
            token=token,
            payload=payload,
            now=when,
        )
        request = AWSRequest(method=method, url=target, data=payload)
        request.headers["x-amz-content-sha256"] = mine["x-amz-content-sha256"]
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            S3SigV4Auth(Credentials("AKID", "SECRET", token or None), "s3", "eu-west-1").add_auth(
                request
            )
        assert mine["Authorization"] == request.headers["Authorization"], method


def test_s3_locations() -> None:
    env = {"AWS_DEFAULT_REGION": "eu-west-1"}
    loc = S3Location.parse("s3://127.0.0.1:9000/models/repo/", env)
    assert (loc.endpoint, loc.bucket, loc.prefix) == ("http://127.0.0.1:9000", "models", "repo")
    loc = S3Location.parse("s3://https://minio.local:443/models", env)
    assert (loc.endpoint, loc.bucket, loc.prefix) == ("https://minio.local:443", "models", "")
    loc = S3Location.parse("s3://models/gpu", env)
    assert loc.endpoint == "https://s3.eu-west-1.amazonaws.com" and loc.prefix == "gpu"
    with pytest.raises(RepositoryError):
        S3Location.parse("s3://", env)


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    pytest.importorskip("moto")
    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    try:
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        client.create_bucket(Bucket="models")
        yield f"127.0.0.1:{port}", client
    finally:
        server.stop()


def test_s3_repository_asked_and_pinned(moto_s3: tuple[str, Any]) -> None:
    endpoint, client = moto_s3
    for name in ("preprocess", "classifier"):
        client.put_object(
            Bucket="models",
            Key=f"repo/{name}/config.pbtxt",
            Body=b'name: "x"\nversion_policy { latest { num_versions: 1 } }\n',
        )
        for v in (1, 2):
            client.put_object(Bucket="models", Key=f"repo/{name}/{v}/model.py", Body=b"#")
    url = f"s3://{endpoint}/models/repo"
    assert asked_version(url).version == 2
    assert S3Location.parse(url).pin(1) == [1]
    assert asked_version(url).version == 1
    body = client.get_object(Bucket="models", Key="repo/classifier/config.pbtxt")["Body"].read()
    assert b'name: "x"' in body and b"versions: 1" in body
    with pytest.raises(RepositoryError, match="no version 7 of preprocess"):
        S3Location.parse(url).pin(7)


def test_bench_urls() -> None:
    from plantdx.bench.levels import ServeBenchConfig

    assert ServeBenchConfig(url="a:1, b:2,c:3").urls() == ["a:1", "b:2", "c:3"]
    assert ServeBenchConfig(url="a:1").urls() == ["a:1"]
    with pytest.raises(ConfigError):
        ServeBenchConfig(url=" , ").urls()
