"""TensorRT export: everything around the build, with a fake `tensorrt` module on CPU machines.

The fake (tests/helpers/fake_tensorrt.py) records the builder calls and writes a JSON "plan"; a fake
runner answers for the plan in the precision gate. The one real build test is marked `gpu`
and runs only where TensorRT and a CUDA device exist.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from plantdx.data import is_image_file
from plantdx.exceptions import (
    ConfigError,
    ExportError,
    PrecisionGateError,
    RepositoryError,
    TensorRTUnavailableError,
)
from plantdx.export import ExportConfig, export, tensorrt_build, tensorrt_gpu
from plantdx.export import tensorrt as trt_export
from plantdx.model_repository import config as mcfg
from plantdx.model_repository.repository import validate_repository
from plantdx.preprocessing import PreprocessMeta, Preprocessor

from helpers import fake_tensorrt
from helpers.export import snapshot, tiny_checkpoint


@pytest.fixture()
def ckpt(tmp_path: Path) -> Path:
    return tiny_checkpoint(tmp_path / "run" / "best.pt")


@pytest.fixture()
def fake_trt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> fake_tensorrt.Recorder:
    rec = fake_tensorrt.Recorder()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.make_module(rec))
    monkeypatch.setattr(
        tensorrt_gpu,
        "detect_gpu",
        lambda: trt_export.GpuInfo("NVIDIA Fake GPU", rec.compute_capability),
    )
    monkeypatch.setattr(tensorrt_build, "device_buffer", fake_tensorrt.host_buffer(rec))
    monkeypatch.setattr(trt_export, "PlanRunner", fake_tensorrt.FakeRunner)
    monkeypatch.setattr(fake_tensorrt.FakeRunner, "distort", staticmethod(lambda x: x))
    monkeypatch.setenv("PLANTDX_CACHE", str(tmp_path / "cache"))
    return rec


def trt_cfg(ckpt: Path, repo: Path, check: Path, **kw: object) -> ExportConfig:
    base: dict = {"max_batch": 16, "opt_batch": 4, "precision": "fp16"}
    base.update(kw)
    return ExportConfig(
        source=str(ckpt), repository=str(repo), to="tensorrt", check_data=str(check), **base
    )


def classifier(repo: Path) -> mcfg.mc.ModelConfig:
    return mcfg.parse_pbtxt((repo / "classifier" / "config.pbtxt").read_text())


def test_fp16_build_profile_config_and_metadata(
    tmp_path: Path, ckpt: Path, synth_dir: Path, fake_trt: fake_tensorrt.Recorder
) -> None:
    repo = tmp_path / "repo"
    result = export(trt_cfg(ckpt, repo, synth_dir))
    assert result.version == 1
    # The TensorRT API calls: explicit batch (implicit in TensorRT 10), one profile, FP16.
    assert fake_trt.values("create_network") == [0]
    assert fake_trt.values("set_shape") == [
        ("input", (1, 3, 64, 64), (4, 3, 64, 64), (16, 3, 64, 64))
    ]
    assert fake_trt.values("flags") == [["FP16", "TF32"]]
    assert fake_trt.values("memory_pool_limit") == [("WORKSPACE", 4096 << 20)]
    timing = tmp_path / "cache" / "tensorrt" / "timing-trt10.3.0-sm90.cache"
    assert timing.read_bytes() == b"timing-entry;"

    vdir = repo / "classifier" / "1"
    assert (vdir / "model_sm90.plan").is_file() and (vdir / "model.onnx").is_file()
    engines = json.loads((vdir / "engines.json").read_text())
    plan = engines["plans"]["9.0"]
    assert plan["tensorrt"] == "10.3.0" and plan["gpu"] == "NVIDIA Fake GPU"
    assert plan["compute_capability"] == "9.0" and plan["built_in_version"] == 1
    assert plan["profile"] == {
        "input": "input",
        "min": [1, 3, 64, 64],
        "opt": [4, 3, 64, 64],
        "max": [16, 3, 64, 64],
    }
    gate = json.loads((vdir / "precision_gate.json").read_text())
    assert gate["passed"] and gate["top1_agreement"] == 1.0 and gate["n_images"] == 72
    prov = json.loads((vdir / "provenance.json").read_text())
    assert prov["tools"]["tensorrt"] == "10.3.0" and prov["precision"] == "fp16"
    assert prov["precision_gate"]["passed"] and prov["gpu"]["compute_capability"] == "9.0"
    assert prov["files"]["model_sm90.plan"] == plan["sha256"]

    clf = classifier(repo)
    assert clf.platform == "tensorrt_plan"
    assert dict(clf.cc_model_filenames) == {"9.0": "model_sm90.plan"}
    assert not clf.default_model_filename
    assert clf.max_batch_size == 16  # from the engine's profile
    assert list(clf.dynamic_batching.preferred_batch_size) == [4]
    assert [g.kind for g in clf.instance_group] == [mcfg.mc.ModelInstanceGroup.KIND_GPU]
    assert clf.model_warmup[0].inputs["input"].zero_data
    ens = mcfg.parse_pbtxt((repo / "plantdx" / "config.pbtxt").read_text())
    assert ens.max_batch_size == 8  # the images-per-request cap, under the profile's 16
    assert dict(ens.ensemble_scheduling.step[1].input_map) == {"input": "pixels"}
    for name in ("preprocess", "postprocess"):
        cfg = mcfg.parse_pbtxt((repo / name / "config.pbtxt").read_text())
        assert [g.kind for g in cfg.instance_group] == [mcfg.mc.ModelInstanceGroup.KIND_CPU]
    assert validate_repository(repo) == []


def test_second_build_reuses_timing_cache(
    tmp_path: Path, ckpt: Path, synth_dir: Path, fake_trt: fake_tensorrt.Recorder
) -> None:
    repo = tmp_path / "repo"
    export(trt_cfg(ckpt, repo, synth_dir))
    export(trt_cfg(ckpt, repo, synth_dir))
    assert fake_trt.values("timing_cache_loaded") == [0, len(b"timing-entry;")]
    plan = json.loads((repo / "classifier" / "2" / "engines.json").read_text())["plans"]["9.0"]
    assert plan["timing_cache"]["bytes_before"] == len(b"timing-entry;")


def test_tensorrt8_asks_for_explicit_batch_and_fp32_disables_tf32(
    tmp_path: Path, ckpt: Path, synth_dir: Path, fake_trt: fake_tensorrt.Recorder
) -> None:
    fake_trt.version = "8.6.1"
    sys.modules["tensorrt"].__version__ = "8.6.1"  # type: ignore[attr-defined]
    export(trt_cfg(ckpt, tmp_path / "repo", synth_dir, precision="fp32"))
    assert fake_trt.values("create_network") == [1]
    assert fake_trt.values("flags") == [[]]  # no FP16, and TF32 cleared


def test_int8_calibrates_with_plantdx_preprocessing_and_caches(
    tmp_path: Path, ckpt: Path, synth_dir: Path, fake_trt: fake_tensorrt.Recorder
) -> None:
    repo = tmp_path / "repo"
    cfg = trt_cfg(ckpt, repo, synth_dir, precision="int8", calibration=str(synth_dir))
    export(cfg)
    # 72 images in batches of --opt-batch 4: 18 full batches.
    assert fake_trt.values("calibration_batches") == [(18, 4)]
    assert fake_trt.values("flags") == [["FP16", "INT8", "TF32"]]
    first = sorted(p for p in synth_dir.rglob("*") if is_image_file(p))[0]
    meta = PreprocessMeta.load(repo / "classifier" / "1" / "preprocessing.json")
    # The network takes uint8 pixels and normalises them itself: calibrated on those.
    expected = Preprocessor(meta).pixels(first.read_bytes())
    batch = fake_trt.calibration_batches[0]
    assert batch.shape == (4, 3, 64, 64) and batch.dtype == np.uint8
    np.testing.assert_array_equal(batch[0], expected)
    calib = json.loads((repo / "classifier" / "1" / "engines.json").read_text())["plans"]["9.0"][
        "calibration"
    ]
    assert calib["batches_fed"] == 18 and not calib["cache_reused"]
    cached = (repo / "classifier" / "1" / "calibration.cache").read_bytes()
    assert cached == b"fake-calibration:18x4"

    # Same model, same images: the second build reads the cache and feeds nothing.
    export(cfg)
    assert fake_trt.values("calibration_batches") == [(18, 4)]
    assert fake_trt.values("calibration_cache_hit") == [None]
    calib2 = json.loads((repo / "classifier" / "2" / "engines.json").read_text())["plans"]["9.0"][
        "calibration"
    ]
    assert calib2["cache_reused"] and calib2["batches_fed"] == 0


def _flip_every_tenth(logits: np.ndarray) -> np.ndarray:
    out = logits.copy()
    rows = np.arange(0, len(out), 10)
    top = out[rows].argmax(1)
    out[rows, top] = out[rows].min(1) - 1.0
    return out


def test_gate_refuses_a_degraded_plan_and_leaves_repository_as_it_was(
    tmp_path: Path,
    ckpt: Path,
    synth_dir: Path,
    fake_trt: fake_tensorrt.Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = tmp_path / "repo"
    export(trt_cfg(ckpt, repo, synth_dir))
    before = snapshot(repo)
    monkeypatch.setattr(fake_tensorrt.FakeRunner, "distort", staticmethod(_flip_every_tenth))
    with pytest.raises(PrecisionGateError, match=r"88\.89% of 72 images.*need 99%"):
        export(trt_cfg(ckpt, repo, synth_dir))
    assert snapshot(repo) == before
    # A collapsed engine (garbage answers) and an overflowing one (NaN) fail too.
    for broken in (lambda x: np.roll(x, 1, axis=1), lambda x: np.full_like(x, np.nan)):
        monkeypatch.setattr(fake_tensorrt.FakeRunner, "distort", staticmethod(broken))
        with pytest.raises(PrecisionGateError, match="nothing was published"):
            export(trt_cfg(ckpt, repo, synth_dir, precision="int8", calibration=str(synth_dir)))
        assert snapshot(repo) == before
    # The threshold is the user's call: the same 89% passes a 0.85 gate, and says so.
    monkeypatch.setattr(fake_tensorrt.FakeRunner, "distort", staticmethod(_flip_every_tenth))
    result = export(trt_cfg(ckpt, repo, synth_dir, gate_threshold=0.85))
    assert result.version == 2 and result.gate is not None
    assert result.gate["top1_agreement"] == pytest.approx(64 / 72)
    saved = json.loads((repo / "classifier" / "2" / "precision_gate.json").read_text())
    assert saved["min_top1_agreement"] == 0.85 and saved["passed"]


def test_failed_build_leaves_nothing(
    tmp_path: Path, ckpt: Path, synth_dir: Path, fake_trt: fake_tensorrt.Recorder
) -> None:
    fake_trt.fail_build = True
    repo = tmp_path / "repo"
    with pytest.raises(ExportError, match="could not build the engine"):
        export(trt_cfg(ckpt, repo, synth_dir))
    assert not repo.exists()


def test_new_architecture_publishes_new_version_carrying_earlier_plans(
    tmp_path: Path, ckpt: Path, synth_dir: Path, fake_trt: fake_tensorrt.Recorder
) -> None:
    repo = tmp_path / "repo"
    export(trt_cfg(ckpt, repo, synth_dir))  # sm90 → version 1
    v1 = snapshot(repo / "classifier" / "1")
    fake_trt.compute_capability = "8.0"
    result = export(trt_cfg(ckpt, repo, synth_dir))  # sm80 → version 2, with sm90 carried
    assert result.version == 2
    assert snapshot(repo / "classifier" / "1") == v1  # versions are immutable
    v2 = repo / "classifier" / "2"
    assert sorted(p.name for p in v2.glob("*.plan")) == ["model_sm80.plan", "model_sm90.plan"]
    assert (v2 / "model_sm90.plan").read_bytes() == (
        repo / "classifier" / "1" / "model_sm90.plan"
    ).read_bytes()
    plans = json.loads((v2 / "engines.json").read_text())["plans"]
    assert plans["9.0"]["carried_from_version"] == 1 and plans["9.0"]["built_in_version"] == 1
    assert plans["8.0"]["built_in_version"] == 2 and "carried_from_version" not in plans["8.0"]
    assert dict(classifier(repo).cc_model_filenames) == {
        "8.0": "model_sm80.plan",
        "9.0": "model_sm90.plan",
    }
    assert validate_repository(repo) == []

    # A different model on sm80: its version holds only its own plan, and the note says why.
    other = tiny_checkpoint(tmp_path / "other" / "best.pt", seed=7)
    result = export(trt_cfg(other, repo, synth_dir))
    assert sorted(p.name for p in (repo / "classifier" / "3").glob("*.plan")) == ["model_sm80.plan"]
    assert any("another model" in n for n in result.notes)
    assert dict(classifier(repo).cc_model_filenames) == {"8.0": "model_sm80.plan"}
    assert validate_repository(repo) == []

    # A newer TensorRT cannot load the old plans: they are left behind, with the reason.
    fake_trt.compute_capability = "9.0"
    sys.modules["tensorrt"].__version__ = "10.4.0"  # type: ignore[attr-defined]
    result = export(trt_cfg(other, repo, synth_dir))
    assert sorted(p.name for p in (repo / "classifier" / "4").glob("*.plan")) == ["model_sm90.plan"]
    assert any("TensorRT 10.3.0" in n for n in result.notes)


def test_validate_checks_plans_against_cc_model_filenames(
    tmp_path: Path, ckpt: Path, synth_dir: Path, fake_trt: fake_tensorrt.Recorder
) -> None:
    repo = tmp_path / "repo"
    export(trt_cfg(ckpt, repo, synth_dir))
    vdir = repo / "classifier" / "1"
    shutil.copyfile(vdir / "model_sm90.plan", vdir / "model_sm86.plan")
    problems = validate_repository(repo)
    assert any("model_sm86.plan is not named in cc_model_filenames" in p for p in problems)
    (vdir / "model_sm86.plan").unlink()
    (vdir / "model_sm90.plan").unlink()
    problems = validate_repository(repo)
    assert any("maps compute capability 9.0 to model_sm90.plan" in p for p in problems)
    assert any("model_sm90.plan is missing (provenance lists it)" in p for p in problems)


def test_validate_checks_profile_against_config(
    tmp_path: Path, ckpt: Path, synth_dir: Path, fake_trt: fake_tensorrt.Recorder
) -> None:
    repo = tmp_path / "repo"
    export(trt_cfg(ckpt, repo, synth_dir))
    path = repo / "classifier" / "config.pbtxt"
    path.write_text(path.read_text().replace("max_batch_size: 16", "max_batch_size: 64"))
    problems = validate_repository(repo)
    assert any("accepts batches up to 16 but the config allows 64" in p for p in problems)


def test_export_that_would_break_a_served_version_is_refused(
    tmp_path: Path, ckpt: Path, synth_dir: Path, fake_trt: fake_tensorrt.Recorder
) -> None:
    # Two versions served: the shared config must fit version 1's plan as well as the new one.
    repo = tmp_path / "repo"
    export(trt_cfg(ckpt, repo, synth_dir, latest_versions=2))  # profile up to 16
    before = snapshot(repo)
    with pytest.raises(RepositoryError, match="accepts batches up to 16 but the config allows 32"):
        export(trt_cfg(ckpt, repo, synth_dir, latest_versions=2, max_batch=32))
    assert snapshot(repo) == before
    # A new architecture that cannot carry version 1's plan along (another model) likewise.
    fake_trt.compute_capability = "8.0"
    other = tiny_checkpoint(tmp_path / "other" / "best.pt", seed=7)
    with pytest.raises(RepositoryError, match="does not hold"):
        export(trt_cfg(other, repo, synth_dir, latest_versions=2))
    assert snapshot(repo) == before
    # Serving only the newest version, both exports are fine.
    assert export(trt_cfg(other, repo, synth_dir, latest_versions=1)).version == 2
    assert validate_repository(repo) == []


# ---------------------------------------------------------------------------------------------
# Without TensorRT or without a GPU: fail at once, leave nothing.


def test_fails_at_once_without_tensorrt(
    tmp_path: Path, ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt → ImportError

    def never(*a: object, **k: object) -> None:
        raise AssertionError("no work may start before the TensorRT check")

    monkeypatch.setattr(sys.modules["plantdx.export.export"], "export_onnx", never)
    repo = tmp_path / "repo"
    with pytest.raises(TensorRTUnavailableError) as err:
        export(ExportConfig(source=str(ckpt), repository=str(repo), to="tensorrt"))
    msg = str(err.value)
    assert "the TensorRT Python package (tensorrt)" in msg
    assert "k8s/jobs/tensorrt-build" in msg and "GPU node" in msg
    assert not repo.exists()


def test_fails_at_once_with_tensorrt_but_no_gpu(
    tmp_path: Path, ckpt: Path, fake_trt: fake_tensorrt.Recorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tensorrt_gpu, "detect_gpu", lambda: None)
    repo = tmp_path / "repo"
    with pytest.raises(TensorRTUnavailableError) as err:
        export(ExportConfig(source=str(ckpt), repository=str(repo), to="tensorrt"))
    assert "tensorrt)" not in str(err.value)
    assert "NVIDIA GPU driver" in str(err.value) or "CUDA device" in str(err.value)
    assert fake_trt.builds == 0 and not repo.exists()


def test_cli_tensorrt_error_is_one_line(tmp_path: Path, ckpt: Path) -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    r = subprocess.run(
        [sys.executable, "-m", "plantdx", "export", str(ckpt), "--to", "tensorrt",
         "--repository", str(tmp_path / "repo")],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "error: cannot build a TensorRT engine here" in r.stderr
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"to": "tensorrt", "target": "local"}, "no TensorRT backend"),
        ({"to": "tensorrt", "kind": "cpu"}, "GPUs only"),
        ({"to": "tensorrt", "precision": "int8"}, "--calibration"),
        ({"precision": "fp16"}, "--to tensorrt --precision fp16"),
        ({"precision": "int8"}, "calibrated TensorRT build"),
        ({"kind": "gpu"}, "GPU instances need --target triton"),
        ({"trt_accelerator": True}, "--trt-accelerator is for"),
        ({"max_batch": 4, "opt_batch": 8}, "--opt-batch <= --max-batch"),
        ({"opset": 13}, "17 or newer"),
        ({"version_policy": "specific"}, "--versions"),
    ],
)
def test_impossible_combinations_are_refused(
    tmp_path: Path, ckpt: Path, kw: dict, message: str
) -> None:
    repo = tmp_path / "repo"
    with pytest.raises(ConfigError, match=message.replace("+", r"\+")):
        export(ExportConfig(source=str(ckpt), repository=str(repo), **kw))
    assert not repo.exists()


# ---------------------------------------------------------------------------------------------
# The real thing, on a GPU node.


def _real_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


@pytest.mark.gpu
@pytest.mark.skipif(not _real_tensorrt(), reason="needs TensorRT and a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_tensorrt_build_and_gate(
    tmp_path: Path, ckpt: Path, synth_dir: Path, precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLANTDX_CACHE", str(tmp_path / "cache"))
    repo = tmp_path / "repo"
    result = export(trt_cfg(ckpt, repo, synth_dir, precision=precision))
    assert result.gate is not None and result.gate["passed"]
    gpu = trt_export.detect_gpu()
    assert gpu is not None
    assert dict(classifier(repo).cc_model_filenames) == {
        gpu.compute_capability: trt_export.plan_filename(gpu)
    }
    assert validate_repository(repo) == []
