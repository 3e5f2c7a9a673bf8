"""No open control plane, secrets kept: the restricted API categories and their parsing, the key
made per run and its file, `plantdx serve --host` off loopback, the key never sent in clear
text off loopback, the stubs' scrubbed environment. On the real server: test_security_server."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from plantdx.exceptions import ClientError, ConfigError, ServerError
from plantdx.serving import admin_key as keys
from plantdx.serving.server import TritonServer
from plantdx.serving.stub_env import scrubbed

ALL = ",".join(keys.RESTRICTED)


@pytest.fixture(autouse=True)
def private_runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run keys go to this test's own folder."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime


def test_the_categories_this_triton_accepts_are_all_restricted() -> None:
    # Triton 2.51's --help lists: health, metadata, inference, shared-memory, model-config,
    # model-repository, statistics, trace, logging.
    assert set(keys.RESTRICTED) == {
        "model-repository", "model-config", "shared-memory", "trace", "logging",
    }  # fmt: skip
    s = TritonServer(repository=".", admin_key="k" * 20)
    cmd = s.command()
    assert f"--http-restricted-api={ALL}:plantdx-key={'k' * 20}" in cmd
    assert f"--grpc-restricted-protocol={ALL}:plantdx-key={'k' * 20}" in cmd
    assert "k" * 20 not in " ".join(s.redacted_command())


def test_no_key_means_a_key_made_for_this_run() -> None:
    a, b = TritonServer(repository="."), TritonServer(repository=".")
    assert a.key_generated and len(a.admin_key) >= 32 and a.admin_key != b.admin_key
    assert f"--http-restricted-api={ALL}:plantdx-key={a.admin_key}" in a.command()


def test_supervisor_finds_the_key_whatever_the_category_order() -> None:
    s = TritonServer.wrapping(
        "tritonserver",
        [
            "--model-repository=/m", "--model-control-mode=explicit",
            "--http-restricted-api=shared-memory, model-repository:plantdx-key=sesame",
            "--http-restricted-api=logging:plantdx-key=sesame",
            "--grpc-restricted-protocol=trace,model-repository:plantdx-key=sesame",
        ],
    )  # fmt: skip
    assert s.admin_key == "sesame" and not s.key_generated
    added = s.command()[len(s._wrapped or []) :]
    assert added == [
        "--http-restricted-api=model-config,trace:plantdx-key=sesame",
        "--grpc-restricted-protocol=model-config,shared-memory,logging:plantdx-key=sesame",
    ]
    # A flag restricting every category already: nothing to add.
    full = TritonServer.wrapping(
        "tritonserver",
        [f"--http-restricted-api={ALL}:plantdx-key=k", f"--grpc-restricted-protocol={ALL}:x=y"],
    )
    assert full.admin_key == "k" and full.command() == full._wrapped


def test_supervisor_restricts_everything_with_the_key_file_or_a_new_key(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("from-a-secret\n")
    s = TritonServer.wrapping(
        "tritonserver", ["--model-repository=/m"], admin_key=keys.read_key_file(tmp_path / "key")
    )
    assert s.admin_key == "from-a-secret"
    assert f"--http-restricted-api={ALL}:plantdx-key=from-a-secret" in s.command()
    made = TritonServer.wrapping("tritonserver", ["--model-repository=/m"])
    assert made.key_generated and f"plantdx-key={made.admin_key}" in " ".join(made.command())
    with pytest.raises(ServerError, match="different keys"):
        TritonServer.wrapping(
            "tritonserver",
            ["--http-restricted-api=model-repository:plantdx-key=a"],
            admin_key="b",
        )
    with pytest.raises(ServerError, match="different headers or keys"):
        TritonServer.wrapping(
            "tritonserver",
            [
                "--http-restricted-api=model-repository:plantdx-key=a",
                "--http-restricted-api=model-config:plantdx-key=b",
            ],
        )


def test_run_key_files_are_private_and_found_by_port(private_runtime_dir: Path) -> None:
    paths = keys.write_key_files("s3cr3t-run-key", [18000, 18001])
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.parent == private_runtime_dir / "plantdx"
    assert stat.S_IMODE(paths[0].parent.stat().st_mode) == 0o700
    assert keys.find_key(18001) == "s3cr3t-run-key" and keys.find_key(18002) is None
    os.chmod(paths[0], 0o644)  # readable by others: not trusted
    assert keys.find_key(18000) is None
    keys.remove_key_files(paths, "s3cr3t-run-key")
    assert not any(p.exists() for p in paths)


def test_a_shared_key_folder_is_refused(private_runtime_dir: Path) -> None:
    folder = private_runtime_dir / "plantdx"
    folder.mkdir(mode=0o777)
    os.chmod(folder, 0o777)
    with pytest.raises(ServerError, match="not private"):
        keys.write_key_files("k", [18000])


def test_serve_off_loopback_without_a_key_exits_non_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    from plantdx.cli import app

    monkeypatch.delenv("PLANTDX_ADMIN_KEY", raising=False)
    # A repository that does not exist: nothing can start whatever the code does.
    args = ["serve", "--repository", str(tmp_path / "none"), "--host"]
    env = {k: v for k, v in os.environ.items() if k != "PLANTDX_ADMIN_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "plantdx", *args, "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert "refusing to listen on 0.0.0.0 without an admin key" in done.stderr
    assert "PLANTDX_ADMIN_KEY" in done.stderr
    for host in ("::", "192.168.1.20", "myhost", ""):
        result = CliRunner().invoke(app, [*args, host])
        assert isinstance(result.exception, ConfigError), result.output
        assert "without an admin key" in str(result.exception)


def test_the_client_never_sends_the_key_in_clear_text_off_loopback() -> None:
    from plantdx.client import PlantDxClient
    from plantdx.serving.control import ModelControl

    for url in ("10.1.2.3:8000", "http://triton.example:8000", "[2001:db8::1]:8000"):
        with pytest.raises(ConfigError, match="without TLS"):
            PlantDxClient(url, headers={"plantdx-key": "k"})
        with pytest.raises(ConfigError, match="without TLS"):
            PlantDxClient(url, "grpc", headers={"triton-grpc-protocol-plantdx-key": "k"})
        with pytest.raises(ClientError, match="without TLS"):
            ModelControl(url, key="k")
        ModelControl(url).close()  # no key: nothing to protect
    # TLS, or a loopback address (a tunnel), may carry it.
    PlantDxClient("https://10.1.2.3:8000", headers={"plantdx-key": "k"}).close()
    PlantDxClient("127.0.0.1:8000", headers={"plantdx-key": "k"}).close()
    PlantDxClient("localhost:8000", headers={"Plantdx-Key": "k"}).close()
    ModelControl("https://10.1.2.3:8000", key="k").close()
    ModelControl("[::1]:8000", key="k").close()


def test_model_control_uses_the_run_key_of_a_local_server() -> None:
    from plantdx.serving.control import ModelControl

    keys.write_key_files("the-run-key-of-8123", [8123])
    with ModelControl("127.0.0.1:8123") as local:
        assert local._headers() == {"plantdx-key": "the-run-key-of-8123"}
    with ModelControl("127.0.0.1:8123", key="given") as given:
        assert given._headers() == {"plantdx-key": "given"}


def test_the_stubs_environment_is_an_allow_list() -> None:
    env = {
        "PATH": "/venv/bin:/usr/bin",
        "LD_LIBRARY_PATH": "/libs",
        "HOME": "/home/u",
        "OMP_NUM_THREADS": "2",
        "PYTHONNOUSERSITE": "1",
        "PLANTDX_CAPTURE": "/captures",
        "PLANTDX_CAPTURE_RATE": "0.1",
        "PLANTDX_ADMIN_KEY": "the-admin-key-123",
        "MY_COPY": "prefix the-admin-key-123",
        "PLANTDX_API_TOKEN": "t",
        "AWS_ACCESS_KEY_ID": "AKIA",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "HTTPS_PROXY": "http://user:pw@proxy:3128",
        "GITHUB_TOKEN": "ghp",
        "DATABASE_URL": "postgres://u:p@db/x",
    }
    out = scrubbed(env, repository="/models", secret_values=("the-admin-key-123",))
    assert set(out) == {
        "PATH", "LD_LIBRARY_PATH", "HOME", "OMP_NUM_THREADS", "PYTHONNOUSERSITE",
        "PLANTDX_CAPTURE", "PLANTDX_CAPTURE_RATE",
    }  # fmt: skip
    # Capture to S3 needs the AWS settings (and the proxy); nothing else changes.
    s3 = scrubbed({**env, "PLANTDX_CAPTURE": "s3://b/p"}, secret_values=("the-admin-key-123",))
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HTTPS_PROXY"} <= set(s3)
    assert "PLANTDX_ADMIN_KEY" not in s3 and "GITHUB_TOKEN" not in s3
    # So does a repository on S3, which Triton itself reads.
    assert "AWS_SECRET_ACCESS_KEY" in scrubbed(env, repository="s3://bucket/models")
