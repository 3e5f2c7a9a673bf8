"""Export: ONNX parity, typed configs parsed by Triton's ModelConfig, atomic versions."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from plantdx.checkpoint import Checkpoint, save_checkpoint
from plantdx.exceptions import ParityError, RepositoryError, TensorRTUnavailableError
from plantdx.export import ExportConfig, export
from plantdx.export.onnx import check_parity, export_onnx
from plantdx.model_repository import config as mcfg
from plantdx.model_repository.ensembles import ensemble_config
from plantdx.model_repository.repository import list_repository, validate_repository
from plantdx.models import create_model, get_spec


def test_onnx_parity_on_real_photos(tmp_path: Path, mini_photos: list[Path]) -> None:
    import onnx

    from plantdx.preprocessing import Preprocessor

    model = create_model(
        "efficientnet_lite0", num_classes=15, pretrained=True, image_size=128
    ).eval()
    path = export_onnx(model, tmp_path / "m.onnx", image_size=128)
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version >= 17
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not list(tmp_path.glob("*.data"))  # weights inside the one file
    pre = Preprocessor(get_spec("efficientnet_lite0").preprocessing(128))
    batch = np.stack([pre(p.read_bytes()) for p in mini_photos])
    report = check_parity(model, path, batch, source="mini")
    assert report.passed, report
    assert report.top1_agreement == 1.0 and report.max_abs_diff_probs < 1e-5


def test_parity_failure_publishes_nothing(tmp_path: Path, tiny_ckpt: Path, monkeypatch) -> None:
    repo = tmp_path / "repo"
    export(ExportConfig(source=str(tiny_ckpt), repository=str(repo)))
    before = sorted(str(p.relative_to(repo)) for p in repo.rglob("*"))

    import sys

    ex = sys.modules["plantdx.export.export"]

    real = ex.check_parity

    def broken(*args, **kwargs):  # an exporter bug: ONNX answers something else
        report = real(*args, **kwargs)
        report.top1_agreement = 0.5
        return report

    monkeypatch.setattr(ex, "check_parity", broken)
    with pytest.raises(ParityError, match="nothing was published"):
        export(ExportConfig(source=str(tiny_ckpt), repository=str(repo)))
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == before


def test_versions_count_up_and_configs_parse(tmp_path: Path, tiny_ckpt: Path) -> None:
    repo = tmp_path / "repo"
    r1 = export(ExportConfig(source=str(tiny_ckpt), repository=str(repo)))
    r2 = export(ExportConfig(source=str(tiny_ckpt), repository=str(repo)))
    assert (r1.version, r2.version) == (1, 2)
    assert validate_repository(repo) == []
    for name in ("plantdx", "preprocess", "classifier", "postprocess"):
        cfg = mcfg.parse_pbtxt((repo / name / "config.pbtxt").read_text())
        assert cfg.name == name
        if name != "plantdx":
            assert cfg.HasField("dynamic_batching")
    ens = mcfg.parse_pbtxt((repo / "plantdx" / "config.pbtxt").read_text())
    assert ens.platform == "ensemble"
    assert ens.input[0].data_type == mcfg.mc.TYPE_STRING and list(ens.input[0].dims) == [1]
    assert ens.output[0].label_filename == "labels.txt"
    assert (repo / "plantdx" / "labels.txt").read_text().splitlines() == ["a", "b", "c"]
    clf = mcfg.parse_pbtxt((repo / "classifier" / "config.pbtxt").read_text())
    assert list(clf.output[0].dims) == [3]
    prov = json.loads((repo / "classifier" / "2" / "provenance.json").read_text())
    assert prov["version"] == 2 and len(prov["checkpoint_sha256"]) == 64
    assert prov["parity"]["passed"] is True
    meta = json.loads((repo / "preprocess" / "2" / "preprocessing.json").read_text())
    assert meta["image_size"] == 64
    assert [v.version for v in list_repository(repo) if v.model == "classifier"] == [1, 2]
    assert not [p for p in repo.iterdir() if p.name.startswith(".staging")]


def test_repository_refuses_other_classes(tmp_path: Path, tiny_ckpt: Path) -> None:
    repo = tmp_path / "repo"
    export(ExportConfig(source=str(tiny_ckpt), repository=str(repo)))
    model = create_model("test_tiny", num_classes=4)
    other = Checkpoint(
        "test_tiny", list("wxyz"), get_spec("test_tiny").preprocessing(64), model.state_dict()
    )
    path = save_checkpoint(other, tmp_path / "other.pt")
    with pytest.raises(RepositoryError, match="other classes"):
        export(ExportConfig(source=str(path), repository=str(repo)))
    assert [v.version for v in list_repository(repo) if v.model == "classifier"] == [1]


def test_validate_reports_problems(tmp_path: Path, tiny_ckpt: Path) -> None:
    repo = tmp_path / "repo"
    export(ExportConfig(source=str(tiny_ckpt), repository=str(repo)))
    (repo / "plantdx" / "labels.txt").write_text("a\nb\n")
    os.remove(repo / "classifier" / "1" / "model.onnx")
    problems = validate_repository(repo)
    assert any("2 labels" in p for p in problems)
    assert any("model.onnx is missing" in p for p in problems)
    (repo / "postprocess" / "config.pbtxt").write_text("name: 'postprocess' bogus_field: 3")
    assert any("does not parse" in p for p in validate_repository(repo))


def test_triton_flavour_configs_parse() -> None:
    opts = mcfg.ServingOptions(kind="gpu")
    clf = mcfg.classifier_config(224, 15, opts, target="triton", trt_accelerator=True)
    parsed = mcfg.parse_pbtxt(mcfg.to_pbtxt(clf))
    assert parsed.platform == "onnxruntime_onnx"
    assert parsed.instance_group[0].kind == mcfg.mc.ModelInstanceGroup.KIND_GPU
    accel = parsed.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt"
    plan = mcfg.parse_pbtxt(
        mcfg.to_pbtxt(mcfg.classifier_config(224, 15, opts, target="triton", platform="tensorrt"))
    )
    assert plan.platform == "tensorrt_plan"
    ens = ensemble_config(15, opts, target="triton")
    assert dict(ens.ensemble_scheduling.step[1].input_map) == {"input": "pixels"}


def test_tensorrt_fails_fast_without_gpu(tmp_path: Path, tiny_ckpt: Path) -> None:
    import shutil

    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA driver")
    repo = tmp_path / "repo"
    with pytest.raises(TensorRTUnavailableError, match="GPU node"):
        export(ExportConfig(source=str(tiny_ckpt), repository=str(repo), to="tensorrt"))
    assert not repo.exists()


def test_parity_report_saved_beside_the_model(
    tmp_path: Path, tiny_ckpt: Path, synth_dir: Path
) -> None:
    repo = tmp_path / "repo"
    result = export(
        ExportConfig(source=str(tiny_ckpt), repository=str(repo), check_data=str(synth_dir))
    )
    parity = json.loads((repo / "classifier" / "1" / "parity.json").read_text())
    prov = json.loads((repo / "classifier" / "1" / "provenance.json").read_text())
    assert parity == prov["parity"] == result.parity
    assert parity["n_images"] == 64 and parity["source"] == str(synth_dir)
    assert parity["passed"] and parity["top1_agreement"] == 1.0
    assert prov["tools"]["onnx"] and prov["tools"]["torch"] and prov["exported_at"]
    assert prov["source_kind"] == "checkpoint" and prov["opset"] >= 17


def test_probability_drift_alone_refuses_publication(
    tmp_path: Path, tiny_ckpt: Path, monkeypatch
) -> None:
    import sys

    ex = sys.modules["plantdx.export.export"]
    real = ex.check_parity

    def drifted(*args, **kwargs):  # same top-1 everywhere, probabilities off by 2e-4
        report = real(*args, **kwargs)
        report.max_abs_diff_probs = 2e-4
        return report

    monkeypatch.setattr(ex, "check_parity", drifted)
    repo = tmp_path / "repo"
    with pytest.raises(ParityError, match=r"max \|Δp\| = 2.00e-04 \(limit 1e-04\)"):
        export(ExportConfig(source=str(tiny_ckpt), repository=str(repo)))
    assert not repo.exists()


def test_simplify_with_onnxslim(tmp_path: Path, tiny_ckpt: Path) -> None:
    pytest.importorskip("onnxslim")
    repo = tmp_path / "repo"
    result = export(ExportConfig(source=str(tiny_ckpt), repository=str(repo), simplify=True))
    simp = result.provenance["simplify"]
    assert simp["tool"].startswith("onnxslim")
    assert not [n for n in result.notes if "simplif" in n]  # simplified without a fallback
    assert simp["nodes_after"] <= simp["nodes_before"]
    assert result.parity["passed"]  # parity ran on the simplified file that was published
    import onnx

    proto = onnx.load(str(repo / "classifier" / "1" / "model.onnx"))
    assert len(proto.graph.node) == simp["nodes_after"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert validate_repository(repo) == []


def test_simplify_without_a_simplifier_falls_back_with_a_message(
    tmp_path: Path, tiny_ckpt: Path, monkeypatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnxslim", None)
    monkeypatch.setitem(sys.modules, "onnxsim", None)
    result = export(
        ExportConfig(source=str(tiny_ckpt), repository=str(tmp_path / "r"), simplify=True)
    )
    assert result.version == 1
    assert any("neither onnxslim nor onnxsim is installed" in n for n in result.notes)
    simp = result.provenance["simplify"]
    assert simp["tool"] is None and simp["nodes_after"] == simp["nodes_before"]


def test_bad_sources_are_clear_errors(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    from plantdx.exceptions import CheckpointError, ExportError

    with pytest.raises(ExportError, match="MLflow run id"):
        export(ExportConfig(source=str(tmp_path / "nope.pt"), repository=str(tmp_path / "r")))
    with pytest.raises(CheckpointError, match="cannot fetch"):
        export(ExportConfig(source="models:/no-such-model/1", repository=str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()


@pytest.fixture()
def mlflow_env(mlflow_store: str, monkeypatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    return mlflow_store


@pytest.mark.parametrize("form", ["run id", "registry version", "registry alias"])
def test_mlflow_sources_end_to_end(
    form: str, tiny_run: Path, mlflow_env: str, tmp_path: Path
) -> None:
    """Run ids and registry URIs resolve through a real SQLite MLflow store."""
    import mlflow

    from plantdx.checkpoint import file_sha256, load_checkpoint

    ckpt = load_checkpoint(tiny_run / "best.pt")
    client = mlflow.MlflowClient(tracking_uri=mlflow_env)
    (registered,) = [
        v
        for v in client.search_model_versions("name='plantdx-test'")
        if v.run_id == ckpt.mlflow_run_id
    ]
    if form == "run id":
        source = ckpt.mlflow_run_id
    elif form == "registry version":
        source = f"models:/plantdx-test/{registered.version}"
    else:
        client.set_registered_model_alias("plantdx-test", "champion", registered.version)
        source = "models:/plantdx-test@champion"
    repo = tmp_path / "repo"
    result = export(ExportConfig(source=str(source), repository=str(repo)))
    prov = json.loads((repo / "classifier" / "1" / "provenance.json").read_text())
    assert prov["mlflow_run_id"] == ckpt.mlflow_run_id
    assert prov["checkpoint_sha256"] == file_sha256(tiny_run / "best.pt")
    assert prov["source"] == source
    assert prov["source_kind"] == ("mlflow_run" if form == "run id" else "mlflow_registry")
    # The run's split.json comes from MLflow too: parity ran on its real held-out photos.
    assert ckpt.mlflow_run_id in result.parity["source"]
    assert result.parity["n_images"] == 64 and result.parity["passed"]
    assert validate_repository(repo) == []


def test_cli_export_json_and_options(tmp_path: Path, tiny_ckpt: Path, synth_dir: Path) -> None:
    import subprocess
    import sys

    repo = tmp_path / "repo"
    args = [sys.executable, "-m", "plantdx", "export", str(tiny_ckpt), "--repository", str(repo)]
    r = subprocess.run(
        [*args, "--check-data", str(synth_dir), "--max-batch", "16", "--opt-batch", "4", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["version"] == 1 and doc["parity"]["passed"] and doc["precision_gate"] is None
    r = subprocess.run(
        [*args, "--version-policy", "specific", "--versions", "1,x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "--versions takes numbers" in r.stderr
    assert "Traceback" not in r.stderr
