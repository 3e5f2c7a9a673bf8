"""Every registered architecture: builds, names its head, exports to ONNX matching PyTorch,
and finds pretrained weights offline or says clearly where it looked."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from plantdx.exceptions import ModelNotFoundError
from plantdx.models import (
    MatrixAdaptiveAvgPool2d,
    create_model,
    get_spec,
    head_module,
    list_models,
)
from plantdx.training import TrainConfig

# Small inputs and random weights keep this fast. vgg16 runs at 224 px (a 7×7 feature map under
# its 7×7 adaptive pooling) and, in EXTRA_SIZES, at the training default of 160 px (5×5), where
# the pooling is replaced by its exact matrix form (MatrixAdaptiveAvgPool2d).
SIZES: dict[str, tuple[int, dict[str, Any]]] = {
    "test_tiny": (32, {}),
    "efficientnet_lite0": (64, {}),
    "efficientnet_lite1": (64, {}),
    "efficientnet_lite2": (64, {}),
    "efficientnet_b0": (64, {}),
    "mobilenet_v3_small": (64, {}),
    "mobilenet_v3_large": (64, {}),
    "resnet50": (64, {}),
    "vgg16": (224, {}),
    "vit": (32, {"tiny": True}),
}
SLOW = {"vgg16"}  # a 528 MB ONNX file
EXTRA_SIZES = [("vgg16", TrainConfig().image_size or 160)]


def test_every_registered_model_is_covered() -> None:
    assert set(list_models()) == set(SIZES)


def _params(name: str, size: int | None = None) -> Any:
    marks = [pytest.mark.slow] if name in SLOW else []
    size = size or SIZES[name][0]
    ident = name if size == SIZES[name][0] else f"{name}-{size}px"
    return pytest.param(name, size, marks=marks, id=ident)


@pytest.mark.parametrize(
    ("name", "size"), [_params(n) for n in SIZES] + [_params(n, s) for n, s in EXTRA_SIZES]
)
def test_exports_to_onnx_and_matches_pytorch(name: str, size: int, tmp_path: Path) -> None:
    import onnxruntime as ort

    from plantdx.export.onnx import check_parity, export_onnx, require_parity

    kwargs = SIZES[name][1]
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, image_size=size, **kwargs).eval()
    path = export_onnx(model, tmp_path / "model.onnx", image_size=size)
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert got.shape == (3, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    # The batch axis is dynamic: one image works too.
    (one,) = session.run(None, {session.get_inputs()[0].name: x[:1].numpy()})
    np.testing.assert_allclose(one, expected[:1], rtol=1e-3, atol=1e-4)
    # The gate `plantdx export` applies before it publishes.
    require_parity(check_parity(model, path, x.numpy(), source="random inputs"))


# ---------------------------------------------------------------------------------------------
# Adaptive average pooling at any image size


@pytest.mark.parametrize(
    ("in_size", "out_size"),
    [((5, 5), (7, 7)), ((10, 6), (7, 7)), ((13, 3), (4, 2)), ((7, 7), (7, 7)), ((9, 9), (2, 3))],
)
def test_matrix_pool_equals_adaptive_avg_pool(
    in_size: tuple[int, int], out_size: tuple[int, int]
) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6, *in_size)
    pool = MatrixAdaptiveAvgPool2d(in_size, out_size)
    expected = nn.AdaptiveAvgPool2d(out_size)(x)
    torch.testing.assert_close(pool(x), expected, rtol=1e-6, atol=1e-6)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(pool(channels_last), expected, rtol=1e-6, atol=1e-6)
    assert pool.state_dict() == {}  # non-persistent: checkpoints do not change
    # Another input size still pools (adaptively) rather than failing.
    other = torch.randn(1, 2, in_size[0] + 3, in_size[1] + 1)
    torch.testing.assert_close(pool(other), nn.AdaptiveAvgPool2d(out_size)(other))


class _Pooled(nn.Module):
    """vgg16's layout in miniature: features, a 7×7 adaptive pool, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1), nn.BatchNorm2d(4))
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Linear(4 * 49, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def test_unexportable_adaptive_pool_is_replaced_exactly(tmp_path: Path) -> None:
    from plantdx.exceptions import ExportError
    from plantdx.export.onnx import check_parity, export_onnx, require_parity
    from plantdx.models import exportable_pooling

    torch.manual_seed(0)
    plain = _Pooled().eval()  # 20 px → a 5×5 map under the 7×7 pool
    with pytest.raises(ExportError, match="not factor of input size"):
        export_onnx(plain, tmp_path / "plain.onnx", image_size=20)
    fixed = exportable_pooling(copy.deepcopy(plain), 20)
    assert isinstance(fixed.avgpool, MatrixAdaptiveAvgPool2d)
    assert fixed.avgpool.in_size == (5, 5) and not fixed.training
    assert fixed.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(4, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(fixed(x), plain(x), rtol=1e-5, atol=1e-6)
    path = export_onnx(fixed, tmp_path / "fixed.onnx", image_size=20)
    require_parity(check_parity(fixed, path, x.numpy(), source="random inputs"))
    # A pool whose output size divides the map (28 px → 7×7) exports as it is: left alone.
    assert isinstance(exportable_pooling(_Pooled(), 28).avgpool, nn.AdaptiveAvgPool2d)


def test_vgg16_at_160_px_pools_exactly_with_the_same_state_dict() -> None:
    at_224 = create_model("vgg16", num_classes=3, image_size=224)
    at_160 = create_model("vgg16", num_classes=3, image_size=160)
    assert type(at_224.avgpool) is nn.AdaptiveAvgPool2d
    assert isinstance(at_160.avgpool, MatrixAdaptiveAvgPool2d)
    assert at_160.avgpool.in_size == (5, 5) and at_160.avgpool.out_size == (7, 7)
    # Checkpoints move between sizes unchanged, and the model trains in train mode as before.
    at_160.load_state_dict(at_224.state_dict())
    assert at_160.training
    x = torch.randn(2, 512, 5, 5)
    torch.testing.assert_close(at_160.avgpool(x), at_224.avgpool(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in SIZES if n not in SLOW])
def test_head_is_named_and_freezing_leaves_only_it_trainable(name: str) -> None:
    from plantdx.training.freezing import set_backbone_frozen

    size, kwargs = SIZES[name]
    model = create_model(name, num_classes=7, image_size=size, **kwargs)
    head = head_module(model, name)
    last = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
    assert last.out_features == 7, get_spec(name).head
    set_backbone_frozen(model, name, True)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in head.parameters()}
    assert len(trainable) < len(list(model.parameters()))


# ---------------------------------------------------------------------------------------------
# Pretrained weights, offline


def test_missing_weights_name_what_was_looked_for(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for name in ("resnet50", "efficientnet_b0", "mobilenet_v3_large", "mobilenet_v3_small"):
        with pytest.raises(ModelNotFoundError, match=rf"looked for {tmp_path}/torch/.*{name}"):
            create_model(name, num_classes=3, pretrained=True)
    with pytest.raises(ModelNotFoundError, match=r"vgg16.*never silently trains from scratch"):
        create_model("vgg16", num_classes=3, pretrained=True)
    with pytest.raises(ModelNotFoundError, match=r"google/vit-base-patch16-224.*HuggingFace"):
        create_model("vit", num_classes=3, pretrained=True)
    with pytest.raises(ModelNotFoundError, match="not a HuggingFace model directory"):
        create_model("vit", num_classes=3, pretrained=True, weights=tmp_path)


def test_cli_pretrained_without_weights_fails_instead_of_training(
    tmp_path: Path, synth_dir: Path, monkeypatch: Any, capsys: Any
) -> None:
    from plantdx.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = tmp_path / "run"
    argv = ["plantdx", "train", "--data", str(synth_dir), "--model", "mobilenet_v3_small"]
    monkeypatch.setattr(sys, "argv", [*argv, "--pretrained", "--out", str(out), "--no-mlflow"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 1
    assert "no ImageNet weights for mobilenet_v3_small" in capsys.readouterr().err
    assert not (out / "best.pt").exists()


def test_torchvision_weights_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    imagenet = create_model("mobilenet_v3_small", num_classes=1000)
    torch.save(imagenet.state_dict(), tmp_path / "w.pth")
    model = create_model("mobilenet_v3_small", num_classes=4, weights=tmp_path / "w.pth")
    a, b = imagenet.state_dict(), model.state_dict()
    assert torch.equal(a["features.0.0.weight"], b["features.0.0.weight"])
    assert torch.equal(a["classifier.0.weight"], b["classifier.0.weight"])  # pretrained too
    assert b["classifier.3.weight"].shape == (4, 1024)  # the new head
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ModelNotFoundError, match="not a readable"):
        create_model("mobilenet_v3_small", num_classes=4, weights=tmp_path / "junk.pth")
    with pytest.raises(ModelNotFoundError, match="does not hold efficientnet_b0 weights"):
        create_model("efficientnet_b0", num_classes=4, weights=tmp_path / "w.pth")


@pytest.fixture(scope="module")
def tiny_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViTForImageClassification saved the HuggingFace way (64 px, 10 labels)."""
    from transformers import ViTConfig, ViTForImageClassification

    from plantdx.models import TINY_VIT_CONFIG

    torch.manual_seed(2)
    hf = ViTForImageClassification(ViTConfig(**TINY_VIT_CONFIG, num_labels=10))
    out = tmp_path_factory.mktemp("tiny-vit")
    hf.save_pretrained(out)
    return out


def test_vit_from_local_pretrained_directory(tiny_vit_dir: Path) -> None:
    from transformers import ViTForImageClassification

    saved = ViTForImageClassification.from_pretrained(str(tiny_vit_dir)).state_dict()
    same = create_model("vit", num_classes=3, pretrained=True, weights=tiny_vit_dir, image_size=64)
    got = same.state_dict()
    for key, value in saved.items():
        if not key.startswith("classifier."):
            assert torch.equal(got[f"vit.{key}"], value), key
    assert got["vit.classifier.weight"].shape == (3, 32)
    # Another input size: the position embeddings are resampled, the rest is kept.
    small = create_model("vit", num_classes=3, pretrained=True, weights=tiny_vit_dir, image_size=32)
    pos = small.state_dict()["vit.vit.embeddings.position_embeddings"]
    assert pos.shape == (1, 1 + 4, 32)
    assert torch.equal(pos[:, 0], saved["vit.embeddings.position_embeddings"][:, 0])
    key = "vit.encoder.layer.0.attention.attention.query.weight"
    if key in saved:
        assert torch.equal(small.state_dict()[f"vit.{key}"], saved[key])
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_train_vit_with_pretrained_weights_dir_then_export(
    tmp_path: Path, synth_dir: Path, tiny_vit_dir: Path, monkeypatch: Any, capsys: Any
) -> None:
    """`plantdx train --model vit --pretrained --weights DIR`, and the checkpoint exports."""
    import onnxruntime as ort

    from plantdx.checkpoint import load_checkpoint
    from plantdx.cli import main
    from plantdx.export.onnx import export_onnx

    out = tmp_path / "run"
    argv = ["plantdx", "train", "--data", str(synth_dir), "--model", "vit", "--pretrained"]
    argv += ["--weights", str(tiny_vit_dir), "--image-size", "32", "--epochs", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out), "--no-mlflow", "--quiet"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 0, capsys.readouterr().err
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt.model_kwargs["hf_config"]["hidden_size"] == 32
    assert ckpt.model_kwargs["hf_config"]["image_size"] == 32
    model = ckpt.build_model()
    path = export_onnx(model, tmp_path / "vit.onnx", image_size=32)
    x = torch.randn(2, 3, 32, 32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-3, atol=1e-4)
