"""The model repository: atomic versions, failure at any point, both flavours, validation."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from plantdx.exceptions import ExportError, RepositoryError
from plantdx.export import ExportConfig, export
from plantdx.model_repository import config as mcfg
from plantdx.model_repository import repository as repo_mod
from plantdx.model_repository.journal import Journal
from plantdx.model_repository.repository import (
    describe_repository,
    list_repository,
    validate_repository,
)

from helpers.export import snapshot, tiny_checkpoint

EXPORT = sys.modules["plantdx.export.export"]
KIND_CPU = mcfg.mc.ModelInstanceGroup.KIND_CPU
KIND_GPU = mcfg.mc.ModelInstanceGroup.KIND_GPU


@pytest.fixture()
def ckpt(tmp_path: Path) -> Path:
    return tiny_checkpoint(tmp_path / "run" / "best.pt")


@pytest.fixture()
def repo(tmp_path: Path, ckpt: Path) -> Path:
    """A repository holding version 1."""
    path = tmp_path / "repo"
    export(ExportConfig(source=str(ckpt), repository=str(path)))
    return path


def parse(repo: Path, name: str) -> mcfg.mc.ModelConfig:
    return mcfg.parse_pbtxt((repo / name / "config.pbtxt").read_text())


# ---------------------------------------------------------------------------------------------
# Failure at any point leaves the repository exactly as it was.


def _fail_on_call(monkeypatch: pytest.MonkeyPatch, name: str, n: int, inside: Path) -> None:
    """Make the n-th os.<name> call that touches `inside` fail like a full disk."""
    real = getattr(os, name)
    seen = []

    def flaky(src, dst, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(dst).startswith(str(inside)):
            seen.append(dst)
            if len(seen) == n:
                raise OSError(28, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, name, flaky)


def _inject(point: str, monkeypatch: pytest.MonkeyPatch, repo: Path) -> None:
    if point == "onnx export":

        def broken_export(*a: object, **k: object) -> None:
            raise ExportError("ONNX export failed: injected")

        monkeypatch.setattr(EXPORT, "export_onnx", broken_export)
    elif point == "parity":
        real = EXPORT.check_parity

        def off_by_a_bit(*a: object, **k: object):  # type: ignore[no-untyped-def]
            report = real(*a, **k)
            report.max_abs_diff_probs = 1e-3
            return report

        monkeypatch.setattr(EXPORT, "check_parity", off_by_a_bit)
    elif point == "classifier files":

        def disk_full(*a: object, **k: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(EXPORT, "write_json", disk_full)
    elif point == "second version rename":
        _fail_on_call(monkeypatch, "rename", 2, repo)
    elif point == "fourth shared file":
        _fail_on_call(monkeypatch, "replace", 4, repo)
    elif point == "last shared file":

        def interrupted(self: object) -> str:
            raise KeyboardInterrupt

        monkeypatch.setattr(repo_mod.RepositoryInfo, "to_json", interrupted)
    else:
        raise AssertionError(point)


POINTS = [
    "onnx export",
    "parity",
    "classifier files",
    "second version rename",
    "fourth shared file",
    "last shared file",
]


@pytest.mark.parametrize("point", POINTS)
def test_failure_leaves_existing_repository_unchanged(
    point: str, repo: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(repo)
    _inject(point, monkeypatch, repo)
    with pytest.raises((ExportError, OSError, KeyboardInterrupt)):
        export(ExportConfig(source=str(ckpt), repository=str(repo)))
    assert snapshot(repo) == before
    monkeypatch.undo()
    assert export(ExportConfig(source=str(ckpt), repository=str(repo))).version == 2


@pytest.mark.parametrize("point", ["classifier files", "fourth shared file", "last shared file"])
def test_failure_leaves_no_new_repository(
    point: str, tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "deep" / "new-repo"
    _inject(point, monkeypatch, repo)
    with pytest.raises((OSError, KeyboardInterrupt)):
        export(ExportConfig(source=str(ckpt), repository=str(repo)))
    assert not (tmp_path / "deep").exists()


def test_staging_stays_inside_model_directories(
    repo: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Triton loads every directory at the repository root as a model, so staging may not live
    there; inside a model directory it is an ignored non-numeric version directory."""
    root_before = sorted(p.name for p in repo.iterdir() if p.is_dir())
    seen: list[Path] = []
    real = EXPORT.write_json

    def spy(path: Path, doc: object) -> None:
        seen.append(path)
        assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == root_before
        assert (repo / ".plantdx-journal").is_file()  # the intent log, before any change
        real(path, doc)

    monkeypatch.setattr(EXPORT, "write_json", spy)
    export(ExportConfig(source=str(ckpt), repository=str(repo)))
    assert seen and seen[0].parent.parent == repo / "classifier"
    assert seen[0].parent.name.startswith(".staging-")
    assert not list(repo.rglob(".staging-*")) and not list(repo.rglob("*.tmp"))


def test_leftovers_of_a_killed_export_are_removed(repo: Path, ckpt: Path) -> None:
    stale = repo / "classifier" / ".staging-killed"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    assert validate_repository(repo) == []  # Triton ignores it meanwhile
    export(ExportConfig(source=str(ckpt), repository=str(repo)))
    assert not stale.exists()


def test_a_version_is_never_overwritten(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "7"
    src.mkdir()
    dest.mkdir()  # rename(2) would silently replace an empty directory
    with (
        pytest.raises(RepositoryError, match="never overwritten"),
        Journal(tmp_path, "a test") as journal,
    ):
        journal.move_dir(src, dest)
    assert src.is_dir() and dest.is_dir()
    assert not (tmp_path / ".plantdx-journal").exists()


def test_concurrent_exports_get_distinct_versions(repo: Path, ckpt: Path) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(export(ExportConfig(source=str(ckpt), repository=str(repo))).version)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(results) == [2, 3]
    assert validate_repository(repo) == []


# ---------------------------------------------------------------------------------------------
# Version policy, listing.


def test_version_policies(repo: Path, ckpt: Path) -> None:
    export(ExportConfig(source=str(ckpt), repository=str(repo), latest_versions=2))
    for name in ("preprocess", "classifier"):
        assert parse(repo, name).version_policy.latest.num_versions == 2
    assert [v.served for v in list_repository(repo) if v.model == "classifier"] == [True, True]

    export(
        ExportConfig(
            source=str(ckpt),
            repository=str(repo),
            version_policy="specific",
            specific_versions=[1],
        )
    )
    assert list(parse(repo, "classifier").version_policy.specific.versions) == [1]
    served = {v.version: v.served for v in list_repository(repo) if v.model == "preprocess"}
    assert served == {1: True, 2: False, 3: False}
    assert validate_repository(repo) == []

    before = snapshot(repo)
    with pytest.raises(RepositoryError, match=r"names versions \[9\]"):
        export(
            ExportConfig(
                source=str(ckpt),
                repository=str(repo),
                version_policy="specific",
                specific_versions=[9],
            )
        )
    assert snapshot(repo) == before

    export(ExportConfig(source=str(ckpt), repository=str(repo), version_policy="all"))
    assert parse(repo, "classifier").version_policy.HasField("all")


def test_repo_list_and_validate_cli(repo: Path, ckpt: Path) -> None:
    export(ExportConfig(source=str(ckpt), repository=str(repo)))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "plantdx", "repo", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    r = cli("list", str(repo), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["target"] == "local" and doc["classes"] == 3 and doc["platform"] == "onnx"
    clf = doc["models"]["classifier"]
    assert [(v["version"], v["served"]) for v in clf] == [(1, False), (2, True)]
    assert clf[1]["provenance"]["parity"]["passed"] is True
    assert doc == json.loads(json.dumps(describe_repository(repo), default=str))

    r = cli("list", str(repo))
    assert r.returncode == 0
    line = next(x for x in r.stdout.splitlines() if x.startswith("classifier") and " 2*" in x)
    assert "test_tiny" in line and "onnx/fp32" in line and "parity 100%" in line

    r = cli("validate", str(repo), "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"ok": True, "problems": []}
    (repo / "postprocess" / "labels.txt").write_text("x\n")
    r = cli("validate", str(repo))
    assert r.returncode == 1 and "differs from the ensemble's labels" in r.stderr


# ---------------------------------------------------------------------------------------------
# Both flavours, parsed with Triton's ModelConfig.


def test_local_flavour_configs(repo: Path) -> None:
    configs = {n: parse(repo, n) for n in ("plantdx", "preprocess", "classifier", "postprocess")}
    for name in ("preprocess", "classifier", "postprocess"):
        cfg = configs[name]
        assert cfg.backend == "python"
        assert [g.kind for g in cfg.instance_group] == [KIND_CPU]
        assert cfg.HasField("dynamic_batching")
    clf = configs["classifier"]
    assert clf.max_batch_size == 32 and list(clf.dynamic_batching.preferred_batch_size) == [8]
    assert list(clf.output[0].dims) == [3]
    assert clf.model_warmup[0].inputs["PIXELS"].dims == [3, 64, 64]
    labels = (repo / "plantdx" / configs["plantdx"].output[0].label_filename).read_text()
    assert labels.split() == ["a", "b", "c"]
    assert configs["plantdx"].max_batch_size <= min(
        c.max_batch_size for n, c in configs.items() if n != "plantdx"
    )


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_triton_flavour_onnx_repository(tmp_path: Path, ckpt: Path, kind: str) -> None:
    repo = tmp_path / "repo"
    export(ExportConfig(source=str(ckpt), repository=str(repo), target="triton", kind=kind))
    clf = parse(repo, "classifier")
    assert clf.platform == "onnxruntime_onnx" and clf.default_model_filename == "model.onnx"
    assert [g.kind for g in clf.instance_group] == [KIND_GPU if kind == "gpu" else KIND_CPU]
    assert [t.name for t in clf.input] == ["input"] and [t.name for t in clf.output] == ["logits"]
    assert not (repo / "classifier" / "1" / "model.py").exists()
    for name in ("preprocess", "postprocess"):
        assert [g.kind for g in parse(repo, name).instance_group] == [KIND_CPU]
    ens = parse(repo, "plantdx")
    assert dict(ens.ensemble_scheduling.step[1].output_map) == {"logits": "logits"}
    assert validate_repository(repo) == []
    with pytest.raises(RepositoryError, match="--target triton repository"):
        export(ExportConfig(source=str(ckpt), repository=str(repo)))


def test_triton_flavour_with_tensorrt_accelerator(tmp_path: Path, ckpt: Path) -> None:
    repo = tmp_path / "repo"
    result = export(
        ExportConfig(
            source=str(ckpt),
            repository=str(repo),
            target="triton",
            kind="gpu",
            trt_accelerator=True,
            precision="fp16",
        )
    )
    accel = parse(repo, "classifier").optimization.execution_accelerators
    params = dict(accel.gpu_execution_accelerator[0].parameters)
    assert params["precision_mode"] == "FP16" and params["trt_engine_cache_enable"] == "1"
    assert result.provenance["trt_accelerator"] == {"precision_mode": "FP16", "gated": False}
    # Neither the ungated FP16 nor the drawn check images pass without the user being told.
    assert any("could not gate it" in n for n in result.notes)
    assert result.parity["source"].startswith("generated leaf images")
    assert any("not on photos" in n and "--check-data" in n for n in result.notes)
    assert validate_repository(repo) == []


def test_serving_overrides_and_batch_limits(tmp_path: Path, ckpt: Path) -> None:
    repo = tmp_path / "repo"
    export(
        ExportConfig(
            source=str(ckpt),
            repository=str(repo),
            max_batch=16,
            opt_batch=4,
            serving={"preprocess": {"instances": 3}},
        )
    )
    pre = parse(repo, "preprocess")
    assert pre.instance_group[0].count == 3 and pre.max_batch_size == 32
    # At most 8 images per request by default (the input caps' CPU bound, README "Security").
    assert parse(repo, "plantdx").max_batch_size == 8
    assert validate_repository(repo) == []
    # Raised, the ensemble still stays under every composing model: Triton refuses it otherwise.
    more = tmp_path / "more"
    export(
        ExportConfig(
            source=str(ckpt),
            repository=str(more),
            max_batch=16,
            serving={"max_images_per_request": 64},
        )
    )
    assert parse(more, "plantdx").max_batch_size == 16


# ---------------------------------------------------------------------------------------------
# Validation finds what would break serving.


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (old, text)
    path.write_text(text.replace(old, new, 1))


def test_validate_finds_wiring_batching_and_warmup_problems(repo: Path) -> None:
    _edit(repo / "preprocess" / "config.pbtxt", "dims: 64\n  dims: 64", "dims: 32\n  dims: 32")
    _edit(repo / "plantdx" / "config.pbtxt", "max_batch_size: 8", "max_batch_size: 64")
    _edit(repo / "classifier" / "config.pbtxt", "batch_size: 1", "batch_size: 99")
    for sample in (repo / "preprocess" / "warmup").iterdir():
        sample.unlink()
    problems = "\n".join(validate_repository(repo))
    assert "tensor 'pixels' is TYPE_UINT8 [3, 32, 32] but classifier expects" in problems
    assert "preprocess: warm-up 'sample_leaf_jpeg' reads warmup/sample_leaf_jpeg" in problems
    assert "allows batches of 64 but preprocess only 32" in problems
    assert "warm-up 'zeros' batch 99 exceeds max_batch_size 32" in problems


def test_validate_finds_unpaired_versions_and_changed_files(repo: Path, ckpt: Path) -> None:
    export(ExportConfig(source=str(ckpt), repository=str(repo)))
    shutil.rmtree(repo / "preprocess" / "2")
    meta = repo / "classifier" / "1" / "preprocessing.json"
    meta.write_text(meta.read_text().replace('"bilinear"', '"bicubic"'))
    problems = "\n".join(validate_repository(repo))
    assert "classifier/2 has no preprocess/2" in problems
    assert "were exported with different preprocessing" in problems
    assert "classifier/1: preprocessing.json changed since it was exported" in problems


def test_validate_checks_onnx_against_config(tmp_path: Path, ckpt: Path) -> None:
    repo = tmp_path / "repo"
    export(ExportConfig(source=str(ckpt), repository=str(repo), target="triton"))
    other = tiny_checkpoint(tmp_path / "other.pt", size=96, classes=("a", "b", "c", "d"))
    export(ExportConfig(source=str(other), repository=str(tmp_path / "r2"), target="triton"))
    shutil.copyfile(tmp_path / "r2" / "classifier" / "1" / "model.onnx",
                    repo / "classifier" / "1" / "model.onnx")  # fmt: skip
    problems = "\n".join(validate_repository(repo))
    assert (
        "model.onnx input 'input' has shape [3, 96, 96] (without batch); the config says [3, 64, 64]"
        in problems
    )
    assert "model.onnx output 'logits' has shape [4]" in problems
    _edit(repo / "classifier" / "config.pbtxt", 'name: "input"', 'name: "images"')
    problems = "\n".join(validate_repository(repo))
    assert "model.onnx input is named 'input'; the config says 'images'" in problems


# ---------------------------------------------------------------------------------------------
# The real Triton server loads what export writes (pip-installed Triton, local flavour).


def _ports(n: int) -> list[int]:
    """Free ports from this suite's range 8300–8399."""
    from plantdx.serving.server import port_free

    found = [p for p in range(8300, 8400) if port_free("127.0.0.1", p)][:n]
    if len(found) < n:
        pytest.skip("no free ports in 8300-8399")
    return found


@pytest.mark.triton
def test_triton_loads_an_export_with_a_small_batch_limit(
    tmp_path: Path, ckpt: Path, synth_dir: Path
) -> None:
    """Before the ensemble limit followed the classifier's, --max-batch 16 failed to load."""
    from plantdx.client import PlantDxClient
    from plantdx.serving.server import TritonServer

    repo = tmp_path / "repo"
    export(ExportConfig(source=str(ckpt), repository=str(repo), max_batch=16, opt_batch=4))
    http, grpc, metrics = _ports(3)
    server = TritonServer(
        repository=repo,
        http_port=http,
        grpc_port=grpc,
        metrics_port=metrics,
        log_file=tmp_path / "triton.log",
    )
    server.start(timeout_s=180)
    try:
        image = next(p for p in sorted(synth_dir.rglob("*")) if p.is_file())
        with PlantDxClient(server.http_url) as client:
            result = client.predict(image)
        assert result is not None
    finally:
        server.stop()
