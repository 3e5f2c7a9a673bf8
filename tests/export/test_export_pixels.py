"""The classifier takes uint8 pixels and normalises them inside its graph: the same floats as
`Normalizer`, the same logits as the float graph, configs and checks that agree, and
repositories made before it (float pixels) that keep their format."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from plantdx.exceptions import RepositoryError
from plantdx.export import ExportConfig, export
from plantdx.export.onnx import check_parity, export_onnx, takes_uint8, torch_pixels
from plantdx.model_repository.config import parse_pbtxt
from plantdx.model_repository.layout import RepositoryInfo, repository_pixels
from plantdx.model_repository.repository import validate_repository
from plantdx.models import create_model, get_spec
from plantdx.preprocessing import PreprocessMeta, Preprocessor, to_chw

BACKENDS = Path(__file__).resolve().parents[2] / "model_repository/backends"
UINT8, FP32 = 2, 11  # tritonclient's DataType values


def test_the_uint8_stage_then_the_graphs_normalisation_is_the_normalizer_bit_for_bit(
    mini_photos: list[Path],
) -> None:
    meta = get_spec("efficientnet_b0").preprocessing(224)
    pre = Preprocessor(meta)
    photos = [p.read_bytes() for p in mini_photos[:6]]
    hwc = np.stack([pre.decode(b) for b in photos])
    chw = np.stack([pre.pixels(b) for b in photos])
    assert chw.dtype == np.uint8 and chw.shape == (6, 3, 224, 224)
    assert np.array_equal(chw, to_chw(hwc))
    assert np.array_equal(pre.normalize.chw(chw), pre.normalize.batch(hwc))
    assert np.array_equal(pre.normalize.chw(chw[0]), pre(photos[0]))
    assert torch_pixels(chw, meta).dtype == np.float32
    floats = pre.normalize.batch(hwc)
    assert torch_pixels(floats, meta) is floats  # float pixels reach PyTorch as they are


def test_the_uint8_graph_gives_the_float_graphs_logits(
    tmp_path: Path, mini_photos: list[Path]
) -> None:
    import onnx
    import onnxruntime as ort

    meta = get_spec("efficientnet_lite0").preprocessing(128)
    model = create_model("efficientnet_lite0", num_classes=15, pretrained=True, image_size=128)
    model = model.eval()
    plain = export_onnx(model, tmp_path / "float.onnx", image_size=128)
    served = export_onnx(model, tmp_path / "uint8.onnx", image_size=128, normalize=meta)
    first = onnx.load(str(served)).graph.input[0]
    assert first.name == "input" and first.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in first.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 128, 128]
    assert takes_uint8(served) and not takes_uint8(plain)
    pre = Preprocessor(meta)
    pixels = np.stack([pre.pixels(p.read_bytes()) for p in mini_photos])
    a = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(served), providers=["CPUExecutionProvider"])
    before = a.run(["logits"], {"input": pre.normalize.chw(pixels)})[0]
    after = b.run(["logits"], {"input": pixels})[0]
    assert np.abs(before - after).max() <= 1e-5
    report = check_parity(model, served, pixels, source="mini", meta=meta)
    assert report.passed and report.top1_agreement == 1.0, report
    # A graph that normalised differently would fail the same check.
    wrong = get_spec("efficientnet_b0").preprocessing(128)  # ImageNet mean/std, not Lite's
    off = export_onnx(model, tmp_path / "off.onnx", image_size=128, normalize=wrong)
    assert not check_parity(model, off, pixels, source="mini", meta=meta).passed


def test_a_new_repository_hands_uint8_pixels_to_the_classifier(
    tmp_path: Path, tiny_ckpt: Path
) -> None:
    repo = tmp_path / "repo"
    export(ExportConfig(source=str(tiny_ckpt), repository=str(repo)))
    assert repository_pixels(repo) == "uint8" and takes_uint8(repo / "classifier/1/model.onnx")
    pre = parse_pbtxt((repo / "preprocess/config.pbtxt").read_text())
    clf = parse_pbtxt((repo / "classifier/config.pbtxt").read_text())
    assert pre.output[0].name == "PIXELS" and pre.output[0].data_type == UINT8
    assert [(i.name, i.data_type, list(i.dims)) for i in clf.input] == [
        ("PIXELS", UINT8, [3, 64, 64]),
        ("EXPLAIN_PIXELS", UINT8, [3, 64, 64]),
    ]
    assert clf.model_warmup[0].inputs["PIXELS"].data_type == UINT8
    assert validate_repository(repo) == []
    # A config that disagrees with the graph is reported.
    text = (repo / "classifier/config.pbtxt").read_text().replace("TYPE_UINT8", "TYPE_FP32")
    (repo / "classifier/config.pbtxt").write_text(text)
    assert any("UINT8 in the graph but FP32" in p for p in validate_repository(repo))


def test_a_repository_of_float_pixels_keeps_its_format(tmp_path: Path, tiny_ckpt: Path) -> None:
    from plantdx.model_repository.repository import publish_version

    repo = tmp_path / "repo"
    repo.mkdir()
    # As a repository written before the classifier took uint8 describes itself.
    doc = {"class_names": ["a", "b", "c"], "image_size": 64, "target": "local", "kind": "cpu"}
    (repo / "plantdx-repository.json").write_text(json.dumps(doc))
    assert repository_pixels(repo) == "float32"
    for _ in range(2):
        export(ExportConfig(source=str(tiny_ckpt), repository=str(repo)))
    info = RepositoryInfo.load(repo)
    assert info is not None and info.pixels == "float32"
    assert not takes_uint8(repo / "classifier/2/model.onnx")
    clf = parse_pbtxt((repo / "classifier/config.pbtxt").read_text())
    assert clf.input[0].data_type == FP32
    assert validate_repository(repo) == []
    with pytest.raises(RepositoryError, match="take float32 pixels"):
        publish_version(
            repo,
            class_names=["a", "b", "c"],
            meta=PreprocessMeta(image_size=64),
            write_classifier_files=lambda staged: None,
            provenance={},
        )


class _Tensor:
    def __init__(self, name: str, data: np.ndarray) -> None:
        self.name, self.data = name, data

    def as_numpy(self) -> np.ndarray:
        return self.data


class _Response:
    def __init__(self, output_tensors: list[_Tensor], error: Any = None) -> None:
        self.outputs = {t.name: t.data for t in output_tensors}
        self.error = error


class _Family:
    COUNTER, HISTOGRAM = "counter", "histogram"

    def __init__(self, **_: Any) -> None:
        pass

    def Metric(self, **_: Any) -> Any:
        return types.SimpleNamespace(increment=lambda n: None, observe=lambda x: None)


@pytest.mark.parametrize("data_type", ["TYPE_UINT8", "TYPE_FP32"])
def test_the_preprocess_backend_sends_what_its_config_declares(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mini_photos: list[Path], data_type: str
) -> None:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor = _Tensor  # type: ignore[attr-defined]
    pb.InferenceResponse = _Response  # type: ignore[attr-defined]
    pb.TritonError = str  # type: ignore[attr-defined]
    pb.MetricFamily = _Family  # type: ignore[attr-defined]
    pb.get_input_tensor_by_name = lambda r, name: r.get(name)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb)
    spec = importlib.util.spec_from_file_location("preprocess_pixels", BACKENDS / "preprocess.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "1").mkdir()
    meta = PreprocessMeta(image_size=64)
    meta.save(tmp_path / "1" / "preprocessing.json")
    config = {"output": [{"name": "PIXELS", "data_type": data_type}, {"name": "CALIBRATION"}]}
    model = module.TritonPythonModel()
    model.initialize(
        {
            "model_repository": str(tmp_path),
            "model_version": "1",
            "model_name": "preprocess",
            "model_config": json.dumps(config),
        }
    )
    photos = [p.read_bytes() for p in mini_photos[:3]]
    request = {"IMAGE": _Tensor("IMAGE", np.array([[b] for b in photos], dtype=np.object_))}
    (response,) = model.execute([request])
    pre = Preprocessor(meta)
    expected = np.stack([pre.pixels(b) if data_type == "TYPE_UINT8" else pre(b) for b in photos])
    assert response.error is None
    assert response.outputs["PIXELS"].dtype == expected.dtype
    assert np.array_equal(response.outputs["PIXELS"], expected)


@pytest.mark.triton
def test_uint8_and_float_repositories_serve_the_same_probabilities(
    tmp_path: Path, tiny_ckpt: Path, mini_photos: list[Path]
) -> None:
    """The same checkpoint in a new repository (uint8 pixels) and in one of float pixels (as
    made before) answers every photo alike, and as the in-process reference does."""
    from helpers.common import onnx_probabilities
    from helpers.serving import infer, start_server

    new, old = tmp_path / "new", tmp_path / "old"
    old.mkdir()
    doc = {"class_names": ["a", "b", "c"], "image_size": 64, "target": "local", "kind": "cpu"}
    (old / "plantdx-repository.json").write_text(json.dumps(doc))
    for repo in (new, old):
        export(ExportConfig(source=str(tiny_ckpt), repository=str(repo)))
    photos = [p.read_bytes() for p in mini_photos[:8]]
    served = []
    for repo in (new, old):
        server = start_server(repo, tmp_path / f"{repo.name}.log")
        try:
            served.append(infer(server.grpc_url, photos, timeout_s=60).astype(np.float64))
        finally:
            server.stop()
        assert np.abs(served[-1] - onnx_probabilities(repo, photos)).max() <= 1e-6
    assert np.abs(served[0] - served[1]).max() <= 1e-5
