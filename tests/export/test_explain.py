"""Class-activation maps: the exact CAM per architecture, the heatmap normalisation, the export
(second ONNX output, heatmap parity gating publication) and the repository's explain models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from plantdx.exceptions import ExplainUnavailableError, ParityError
from plantdx.export import ExportConfig, export
from plantdx.heatmap import class_heatmaps, normalize_heatmap
from plantdx.model_repository.config import parse_pbtxt
from plantdx.model_repository.repository import validate_repository
from plantdx.models import create_model
from plantdx.models.cam import cam_model, cam_supported

from helpers.export import snapshot, tiny_checkpoint


def _identity(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=4, image_size=size).eval()
    wrapped = cam_model(model, name).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        plain = model(x)
        logits, cams = wrapped(x)
    assert torch.equal(plain, logits)  # the wrapper's logits are the plain model's, bit for bit
    assert cams.dtype == torch.float32 and cams.shape[:2] == (2, 4)
    # The CAM is an exact decomposition: its spatial mean is the logit.
    torch.testing.assert_close(cams.mean(dim=(2, 3)), logits, rtol=1e-5, atol=1e-5)


def test_cam_identity_tiny() -> None:
    _identity("test_tiny", 64)


def test_cam_identity_efficientnet_lite0() -> None:
    _identity("efficientnet_lite0", 160)  # random weights: the identity holds for any weights


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0", "efficientnet_lite1"])
def test_cam_identity_other_families(name: str) -> None:
    _identity(name, 96)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "mobilenet_v3_large", "vgg16", "vit"])
def test_cam_unavailable_for_mlp_heads(name: str) -> None:
    assert not cam_supported(name)
    model = torch.nn.Linear(2, 2)  # never looked at: the architecture decides
    with pytest.raises(ExplainUnavailableError, match=f"not available for architecture {name}"):
        cam_model(model, name)


def test_normalize_heatmap() -> None:
    cam = np.array([[[-1.0, 2.0], [0.5, 4.0]], [[-3.0, -1.0], [-2.0, 0.0]]])
    out = normalize_heatmap(cam)
    np.testing.assert_allclose(out[0], [[0.0, 0.5], [0.125, 1.0]])
    assert out.dtype == np.float32 and not out[1].any()  # max ≤ 0: all zero
    cams = np.stack([cam, -cam])  # [B=2, C=2, 2, 2]
    logits = np.array([[0.0, 1.0], [5.0, 0.0]])
    heat = class_heatmaps(cams, logits)
    np.testing.assert_allclose(heat[0], normalize_heatmap(cam[1]))
    np.testing.assert_allclose(heat[1], normalize_heatmap(-cam[0]))
    np.testing.assert_allclose(class_heatmaps(cams, logits, np.array([0, -1]))[0], out[0])
    with pytest.raises(ValueError, match="out of range"):
        class_heatmaps(cams, logits, np.array([2, 0]))


def test_export_has_cams_and_heatmap_parity(tmp_path: Path, tiny_ckpt: Path) -> None:
    import onnxruntime as ort

    repo = tmp_path / "repo"
    result = export(ExportConfig(source=str(tiny_ckpt), repository=str(repo)))
    assert result.explain is not None and result.explain["passed"]
    assert result.explain["max_abs_diff_heatmap"] <= result.explain["tolerance"] == 1e-3
    parity = json.loads((repo / "classifier/1/parity.json").read_text())
    provenance = json.loads((repo / "classifier/1/provenance.json").read_text())
    assert parity["heatmap"] == result.explain
    assert provenance["explain"]["heatmap_parity"] == result.explain
    session = ort.InferenceSession(str(repo / "classifier/1/model.onnx"))
    assert [o.name for o in session.get_outputs()] == ["logits", "cams"]
    clf = parse_pbtxt((repo / "classifier/config.pbtxt").read_text())
    assert [(o.name, list(o.dims)) for o in clf.output] == [
        ("LOGITS", [3]),
        ("CAMS", [3, 16, 16]),
    ]
    assert [i.name for i in clf.input] == ["PIXELS", "EXPLAIN_PIXELS"]
    ens = parse_pbtxt((repo / "plantdx_explain/config.pbtxt").read_text())
    assert [o.name for o in ens.output] == ["PROBABILITIES", "DECISION", "HEATMAP"]
    assert [s.model_version for s in ens.ensemble_scheduling.step] == [-1, -1, -1, -1]
    assert (repo / "heatmap/1/model.py").is_file()
    assert validate_repository(repo) == []


def test_failing_heatmap_parity_publishes_nothing(
    tmp_path: Path, tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import plantdx.export.explain as explain

    real = explain.class_heatmaps
    calls = {"n": 0}

    def skewed(cams: np.ndarray, logits: np.ndarray, classes: object = None) -> np.ndarray:
        calls["n"] += 1
        out = real(cams, logits, classes)  # type: ignore[arg-type]
        return out + 0.01 if calls["n"] % 2 == 0 else out  # the onnxruntime side is off

    repo = tmp_path / "repo"
    export(ExportConfig(source=str(tiny_ckpt), repository=str(repo)))
    before = snapshot(repo)
    monkeypatch.setattr(explain, "class_heatmaps", skewed)
    with pytest.raises(ParityError, match=r"heatmaps disagree.*nothing was published"):
        export(ExportConfig(source=str(tiny_ckpt), repository=str(repo)))
    assert snapshot(repo) == before


def test_unsupported_architecture_exports_without_explanations(
    tmp_path: Path, tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import plantdx.export.explain as explain

    monkeypatch.setattr(explain, "cam_supported", lambda name: False)
    repo = tmp_path / "repo"
    result = export(ExportConfig(source=str(tiny_ckpt), repository=str(repo)))
    assert result.explain is None
    assert any("explanations are unavailable" in n for n in result.notes)
    provenance = json.loads((repo / "classifier/1/provenance.json").read_text())
    assert provenance["explain"]["heatmap_parity"] is None
    assert "unavailable" in provenance["explain"]["note"]
    assert not (repo / "plantdx_explain").exists() and not (repo / "heatmap").exists()
    clf = parse_pbtxt((repo / "classifier/config.pbtxt").read_text())
    assert [o.name for o in clf.output] == ["LOGITS"]
    assert validate_repository(repo) == []


def test_older_version_without_cams_stays_valid(
    tmp_path: Path, tiny_ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import plantdx.export.explain as explain

    repo = tmp_path / "repo"
    with monkeypatch.context() as m:
        m.setattr(explain, "cam_supported", lambda name: False)
        export(ExportConfig(source=str(tiny_ckpt), repository=str(repo), latest_versions=2))
    export(ExportConfig(source=str(tiny_ckpt), repository=str(repo), latest_versions=2))
    assert (repo / "plantdx_explain").is_dir()
    assert validate_repository(repo) == []  # version 1 (logits only) is still served


def test_validate_checks_the_explain_ensemble(tmp_path: Path, tiny_ckpt: Path) -> None:
    repo = tmp_path / "repo"
    export(ExportConfig(source=str(tiny_ckpt), repository=str(repo)))
    broken = tmp_path / "broken"
    shutil.copytree(repo, broken)
    cfg = broken / "plantdx_explain/config.pbtxt"
    cfg.write_text(cfg.read_text().replace('key: "CAMS"', 'key: "CAMZ"', 1))
    assert any("CAMZ" in p for p in validate_repository(broken))

    lone = tmp_path / "lone"
    shutil.copytree(repo, lone)
    shutil.rmtree(lone / "heatmap")
    assert any("without heatmap" in p for p in validate_repository(lone))

    no_cams = tmp_path / "no_cams"
    shutil.copytree(repo, no_cams)
    clf = no_cams / "classifier/config.pbtxt"
    text = clf.read_text()
    clf.write_text(
        text[: text.index('output {\n  name: "CAMS"')] + text[text.index("instance_group") :]
    )
    assert any("no CAMS output" in p for p in validate_repository(no_cams))

    labels = tmp_path / "labels"
    shutil.copytree(repo, labels)
    (labels / "plantdx_explain/labels.txt").write_text("x\ny\nz\n")
    assert any("labels differ" in p for p in validate_repository(labels))


def test_evaluate_explain_writes_overlays_of_mistakes(
    tmp_path: Path, synth_dir: Path, tiny_ckpt: Path
) -> None:
    from PIL import Image

    from plantdx.data import scan_image_folder
    from plantdx.training import EvaluateConfig, evaluate_checkpoint

    classes = tuple(scan_image_folder(synth_dir).class_names)
    ckpt = tiny_checkpoint(tmp_path / "synth.pt", classes=classes)
    report = evaluate_checkpoint(
        EvaluateConfig(
            checkpoint=str(ckpt), data=str(synth_dir), out=str(tmp_path / "ev"), explain=3
        )
    )
    assert report["misclassified"], "a random network gets some wrong"
    written = [Path(p) for p in report["explanations"]]
    assert len(written) == min(3, len(report["misclassified"]))
    assert all(p.parent == tmp_path / "ev" / "explanations" for p in written)
    for p, row in zip(written, report["misclassified"], strict=False):
        assert Path(row["file"]).stem in p.name
        with Image.open(p) as img, Image.open(row["file"]) as src:
            assert img.size[0] == src.size[0]


def test_efficientnet_lite_export_publishes_static_cam_shape(tmp_path: Path) -> None:
    """EfficientNet-Lite's "same" padding leaves the exported maps' size symbolic; the export
    states it (the input size is fixed), so the config and the ONNX file agree and it publishes."""
    from plantdx.checkpoint import Checkpoint, save_checkpoint
    from plantdx.models import get_spec, model_kwargs_for_checkpoint

    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", num_classes=3, image_size=160)
    ckpt = Checkpoint(
        "efficientnet_lite0",
        ["a", "b", "c"],
        get_spec("efficientnet_lite0").preprocessing(160),
        model.state_dict(),
        model_kwargs_for_checkpoint(model),
    )
    path = save_checkpoint(ckpt, tmp_path / "lite0.pt")
    repo = tmp_path / "repo"
    result = export(ExportConfig(source=str(path), repository=str(repo), check_images=4))
    assert result.version == 1 and validate_repository(repo) == []
    cfg = parse_pbtxt((repo / "classifier" / "config.pbtxt").read_text())
    cams = next(o for o in cfg.output if o.name == "CAMS")
    assert list(cams.dims) == [3, 5, 5]
