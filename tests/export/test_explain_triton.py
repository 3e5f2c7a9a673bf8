"""Explanations on the NGC-container targets (`--target triton`): the classifier stays as it is
(ONNX for Triton's onnxruntime backend, or a TensorRT plan) and the class-activation graph is
published beside it as `classifier_cams` version N, which only `plantdx_explain` runs.

Triton's native backends are not in the pip wheel's Triton, so what can be verified here is:
the graph's logits and maps equal PyTorch's through onnxruntime, every config parses with
Triton's ModelConfig and the ensembles' tensors connect (`plantdx repo validate`), the two
ensembles never share a model (so never a response-cache entry), the repository layout, and
that pins carry classifier_cams (a version without one stays servable)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from plantdx.checkpoint import load_checkpoint
from plantdx.export import ExportConfig, export
from plantdx.model_repository import config as mcfg
from plantdx.model_repository.repository import validate_repository
from plantdx.models.cam import cam_model
from plantdx.preprocessing import Preprocessor

from helpers import fake_tensorrt
from helpers.export import tiny_checkpoint

CAMS = "classifier_cams"


def _cfg(repo: Path, name: str) -> mcfg.mc.ModelConfig:
    return mcfg.parse_pbtxt((repo / name / "config.pbtxt").read_text())


def _steps(repo: Path, ensemble: str) -> list[str]:
    return [s.model_name for s in _cfg(repo, ensemble).ensemble_scheduling.step]


@pytest.fixture()
def ckpt(tmp_path: Path) -> Path:
    return tiny_checkpoint(tmp_path / "run" / "best.pt")


def test_onnx_target_publishes_the_class_activation_graph_beside_the_classifier(
    tmp_path: Path, ckpt: Path, synth_dir: Path
) -> None:
    repo = tmp_path / "repo"
    done = export(
        ExportConfig(
            source=str(ckpt), repository=str(repo), target="triton", check_data=str(synth_dir)
        )
    )
    assert done.explain is not None and done.explain["passed"]
    assert not any("explanations" in n for n in done.notes)
    # Layout: version 1 of classifier_cams holds the graph; classifier's graph is the plain one.
    assert sorted(p.name for p in (repo / CAMS).iterdir()) == ["1", "config.pbtxt"]
    assert sorted(p.name for p in (repo / CAMS / "1").iterdir()) == ["model.onnx"]
    import onnx

    plain = onnx.load(str(repo / "classifier" / "1" / "model.onnx"))
    graph = onnx.load(str(repo / CAMS / "1" / "model.onnx"))
    assert [o.name for o in plain.graph.output] == ["logits"]
    assert [o.name for o in graph.graph.output] == ["logits", "cams"]
    assert [i.name for i in graph.graph.input] == [i.name for i in plain.graph.input]

    clf, cams = _cfg(repo, "classifier"), _cfg(repo, CAMS)
    assert clf.platform == cams.platform == "onnxruntime_onnx"
    assert [o.name for o in clf.output] == ["logits"]  # plain requests compute no maps
    assert [(o.name, list(o.dims)) for o in cams.output] == [
        ("logits", [3]),
        ("cams", done.explain["cam_shape"]),
    ]
    assert list(cams.input) == list(clf.input)  # what the preprocess sends, as the classifier
    assert cams.version_policy == clf.version_policy
    assert cams.default_model_filename == "model.onnx"
    # Separate models, separate response-cache entries: plantdx never runs classifier_cams,
    # plantdx_explain never runs the classifier.
    assert CAMS not in _steps(repo, "plantdx") and "classifier" in _steps(repo, "plantdx")
    assert _steps(repo, "plantdx_explain") == ["preprocess", CAMS, "postprocess", "heatmap"]
    assert validate_repository(repo) == []
    prov = json.loads((repo / "classifier" / "1" / "provenance.json").read_text())
    assert prov["explain"]["classifier_cams"]["parity"]["top1_agreement"] == 1.0


def test_the_graph_outputs_equal_pytorch_through_onnxruntime(
    tmp_path: Path, ckpt: Path, synth_dir: Path
) -> None:
    import onnxruntime as ort

    repo = tmp_path / "repo"
    export(
        ExportConfig(
            source=str(ckpt), repository=str(repo), target="triton", check_data=str(synth_dir)
        )
    )
    loaded = load_checkpoint(ckpt)
    wrapped = cam_model(loaded.build_model(), loaded.model_name).eval()
    pre = Preprocessor(loaded.preprocessing)
    photos = sorted(synth_dir.rglob("*.png"))[:12] or sorted(synth_dir.rglob("*.jpg"))[:12]
    assert photos
    pixels = np.stack([pre.pixels(p.read_bytes()) for p in photos])  # what the server sends
    session = ort.InferenceSession(
        str(repo / CAMS / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    o_logits, o_cams = session.run(["logits", "cams"], {"input": pixels})
    with torch.no_grad():
        t_logits, t_cams = wrapped(
            torch.from_numpy(np.stack([pre(p.read_bytes()) for p in photos]))
        )
    np.testing.assert_allclose(o_cams, t_cams.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(o_logits, t_logits.numpy(), rtol=1e-4, atol=1e-4)
    # ... and the classifier's own graph gives the same logits (one model, two graphs).
    plain = ort.InferenceSession(
        str(repo / "classifier" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    np.testing.assert_allclose(plain.run(["logits"], {"input": pixels})[0], o_logits, atol=1e-5)


def test_a_version_without_maps_can_be_pinned_and_pins_carry_classifier_cams(
    tmp_path: Path, ckpt: Path, synth_dir: Path
) -> None:
    import shutil

    from plantdx.model_repository.served import pin_served_version

    repo = tmp_path / "repo"
    for _ in range(2):
        export(
            ExportConfig(
                source=str(ckpt), repository=str(repo), target="triton", check_data=str(synth_dir)
            )
        )
    pin_served_version(repo, 1)
    assert list(_cfg(repo, CAMS).version_policy.specific.versions) == [1]
    shutil.rmtree(repo / CAMS / "1")  # as if version 1 had been exported without maps
    pin_served_version(repo, 2)
    pin_served_version(repo, 1)  # still servable; explanations are not
    assert list(_cfg(repo, CAMS).version_policy.specific.versions) == [1]
    assert validate_repository(repo) == []
    (repo / CAMS / "3").mkdir()
    problems = validate_repository(repo)
    assert any("classifier_cams/3: model.onnx is missing" in p for p in problems), problems
    assert any("no classifier version 3" in p for p in problems), problems


@pytest.fixture()
def fake_trt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> fake_tensorrt.Recorder:
    from plantdx.export import tensorrt as trt_export
    from plantdx.export import tensorrt_build, tensorrt_gpu

    rec = fake_tensorrt.Recorder()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt.make_module(rec))
    monkeypatch.setattr(
        tensorrt_gpu, "detect_gpu", lambda: trt_export.GpuInfo("NVIDIA Fake GPU", "9.0")
    )
    monkeypatch.setattr(tensorrt_build, "device_buffer", fake_tensorrt.host_buffer(rec))
    monkeypatch.setattr(trt_export, "PlanRunner", fake_tensorrt.FakeRunner)
    monkeypatch.setattr(fake_tensorrt.FakeRunner, "distort", staticmethod(lambda x: x))
    monkeypatch.setenv("PLANTDX_CACHE", str(tmp_path / "cache"))
    return rec


def test_tensorrt_variant_serves_explanations_from_the_fp32_graph(
    tmp_path: Path, ckpt: Path, synth_dir: Path, fake_trt: fake_tensorrt.Recorder
) -> None:
    """A TensorRT plan for the classifier (stand-in TensorRT module); the maps come from the
    FP32 class-activation graph on Triton's onnxruntime backend, on the GPU like the plan."""
    repo = tmp_path / "repo"
    done = export(
        ExportConfig(
            source=str(ckpt),
            repository=str(repo),
            to="tensorrt",
            precision="fp16",
            max_batch=16,
            opt_batch=4,
            check_data=str(synth_dir),
        )
    )
    assert done.explain is not None and done.explain["passed"]
    clf, cams = _cfg(repo, "classifier"), _cfg(repo, CAMS)
    assert clf.platform == "tensorrt_plan" and dict(clf.cc_model_filenames)
    assert cams.platform == "onnxruntime_onnx" and not dict(cams.cc_model_filenames)
    assert cams.default_model_filename == "model.onnx"
    assert not cams.HasField("optimization")  # FP32: no plan, no accelerator
    assert [g.kind for g in cams.instance_group] == [mcfg.mc.ModelInstanceGroup.KIND_GPU]
    assert cams.max_batch_size == clf.max_batch_size == 16
    assert (repo / CAMS / "1" / "model.onnx").is_file()
    assert not list((repo / CAMS / "1").glob("*.plan"))
    assert validate_repository(repo) == []


def test_trt_accelerator_leaves_the_explanations_graph_in_fp32(
    tmp_path: Path, ckpt: Path, synth_dir: Path
) -> None:
    repo = tmp_path / "repo"
    export(
        ExportConfig(
            source=str(ckpt),
            repository=str(repo),
            target="triton",
            kind="gpu",
            trt_accelerator=True,
            precision="fp16",
            check_data=str(synth_dir),
        )
    )
    assert _cfg(repo, "classifier").optimization.execution_accelerators.gpu_execution_accelerator
    assert not _cfg(repo, CAMS).HasField("optimization")
    assert validate_repository(repo) == []
