"""The model registry: shapes, offline pretrained weights, clear errors."""

from __future__ import annotations

import os

import pytest
import torch

from plantdx.exceptions import ModelNotFoundError
from plantdx.models import create_model, get_spec, list_models


def test_registry_lists_the_promised_models() -> None:
    for name in ("efficientnet_lite0", "test_tiny", "resnet50", "efficientnet_b0", "vit"):
        assert name in list_models()
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        get_spec("alexnet9000")


@pytest.mark.parametrize(
    "name,size", [("test_tiny", 64), ("efficientnet_lite0", 96), ("mobilenet_v3_small", 96)]
)
def test_forward_shape(name: str, size: int) -> None:
    model = create_model(name, num_classes=7, image_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)


def test_tiny_vit_forward() -> None:
    model = create_model("vit", num_classes=5, image_size=64, tiny=True).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_lite0_pretrained_weights_really_load() -> None:
    """Grace Hopper's portrait (shipped with matplotlib) is ImageNet 652, military uniform."""
    import matplotlib

    from plantdx.preprocessing import Preprocessor

    photo = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    model = create_model(
        "efficientnet_lite0", num_classes=1000, pretrained=True, image_size=224
    ).eval()
    pre = Preprocessor(get_spec("efficientnet_lite0").preprocessing(224))
    with open(photo, "rb") as fh:
        x = torch.from_numpy(pre(fh.read()))[None]
    with torch.no_grad():
        logits = model(x)
    assert int(logits.argmax()) == 652
    random_model = create_model("efficientnet_lite0", num_classes=1000, image_size=224).eval()
    with torch.no_grad():
        assert (
            int(random_model(x).argmax()) != 652 or float(random_model(x).softmax(1).max()) < 0.05
        )


def test_pretrained_new_head_keeps_backbone() -> None:
    a = create_model("efficientnet_lite0", num_classes=15, pretrained=True, image_size=128)
    b = create_model("efficientnet_lite0", num_classes=1000, pretrained=True, image_size=128)
    assert torch.equal(a.state_dict()["_conv_stem.weight"], b.state_dict()["_conv_stem.weight"])
    assert a.state_dict()["_fc.weight"].shape == (15, 1280)


def test_missing_pretrained_weights_fail_clearly(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match=r"looked for .*resnet50"):
        create_model("resnet50", num_classes=3, pretrained=True)
    with pytest.raises(ModelNotFoundError, match="no pretrained"):
        create_model("test_tiny", num_classes=3, pretrained=True)
