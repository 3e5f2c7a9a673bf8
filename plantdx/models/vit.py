"""Vision Transformer from HuggingFace transformers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plantdx.exceptions import ConfigError, ModelNotFoundError

from .registry import ModelSpec, register_model

VIT_HUB_ID = "google/vit-base-patch16-224"


class HFViT(nn.Module):
    """Wraps ViTForImageClassification so forward(x) returns plain logits (exportable)."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.vit = hf_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(pixel_values=x).logits  # type: ignore[no-any-return]


TINY_VIT_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 16,
    "image_size": 64,
}


def _vit_weights_dir(weights: str | Path) -> str | Path:
    """--weights for vit: a local HuggingFace directory, or a hub id (org/name) to find in the
    offline HuggingFace cache. A path that is neither is an error naming it."""
    text = str(weights)
    path = Path(text).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} is not a HuggingFace model directory (no config.json)"
            )
        return path
    looks_like_hub_id = (
        not path.is_absolute()
        and not text.startswith((".", "~"))
        and text.count("/") <= 1
        and path.suffix.lower() not in {".pt", ".pth", ".bin", ".safetensors", ".ckpt"}
    )
    if not looks_like_hub_id:
        raise ModelNotFoundError(f"ViT weights directory {path} does not exist")
    return text


def vit_import_dir() -> Path:
    """Where `plantdx weights import DIR --model vit` puts ViT weights and training looks first
    when no --weights is given: plantdx/vit in the torch hub directory ($TORCH_HOME/hub)."""
    return Path(torch.hub.get_dir()) / "plantdx" / "vit"


def import_vit_weights(source: str | Path) -> Path:
    """Check that `source` is a HuggingFace ViT directory whose weights load into
    ViTForImageClassification (strict except the classifier head), then copy it to
    `vit_import_dir()`. Nothing is copied when it does not."""
    import shutil

    from transformers import ViTForImageClassification

    path = Path(source).expanduser()
    if not path.is_dir():
        raise ModelNotFoundError(
            f"{path} is not a directory: ViT weights are a HuggingFace model directory "
            "(save_pretrained of e.g. google/vit-base-patch16-224), not a single file"
        )
    _vit_weights_dir(path)  # has a config.json
    try:
        loaded: Any = ViTForImageClassification.from_pretrained(
            str(path), local_files_only=True, output_loading_info=True
        )
        info: dict[str, list[str]] = loaded[1]
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelNotFoundError(f"{path} does not hold ViT weights: {exc}") from exc
    missing = [k for k in info["missing_keys"] if not k.startswith("classifier.")]
    unexpected = [
        k for k in info["unexpected_keys"] if not k.startswith(("pooler.", "vit.pooler."))
    ]
    if missing or unexpected:
        raise ModelNotFoundError(
            f"{path} does not hold ViT weights (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    dest = vit_import_dir()
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(path, partial)
    shutil.rmtree(dest, ignore_errors=True)
    partial.replace(dest)
    return dest


def _vit_from_pretrained(weights: Any, num_classes: int) -> Any:
    """A local HuggingFace directory (--weights DIR), else the imported weights
    (`vit_import_dir()`), else the offline HuggingFace cache."""
    from transformers import ViTForImageClassification

    imported = vit_import_dir()
    if weights:
        source = str(_vit_weights_dir(weights))
    elif (imported / "config.json").is_file():
        source = str(imported)
    else:
        source = VIT_HUB_ID
    try:
        return ViTForImageClassification.from_pretrained(
            source, num_labels=num_classes, ignore_mismatched_sizes=True, local_files_only=True
        )
    except OSError as exc:
        hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise ModelNotFoundError(
            f"no pretrained ViT weights: looked for {source!r} as a local directory and in the "
            f"HuggingFace cache (HF_HOME={hf_home}); put a model saved with save_pretrained "
            "(e.g. google/vit-base-patch16-224) in place with `plantdx weights import DIR "
            "--model vit`, or pass --weights DIR. plantdx never downloads at training time and "
            "never silently trains from scratch."
        ) from exc


def _resize_vit(hf: Any, image_size: int) -> Any:
    """The same ViT for another input size: position embeddings resampled (bicubic)."""
    import copy

    from transformers import ViTForImageClassification

    config = copy.deepcopy(hf.config)
    patch = int(config.patch_size)
    if image_size % patch:
        raise ConfigError(f"ViT image size {image_size} is not a multiple of its patch {patch}")
    config.image_size = image_size
    resized = ViTForImageClassification(config)
    state = hf.state_dict()
    key = "vit.embeddings.position_embeddings"
    pos = state[key]
    old = round((pos.shape[1] - 1) ** 0.5)
    new = image_size // patch
    grid = pos[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = nn.functional.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    state[key] = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, new * new, -1)], 1)
    resized.load_state_dict(state)
    return resized


def _build_vit(
    *,
    num_classes: int,
    pretrained: bool,
    image_size: int,
    weights: Any,
    hf_config: dict[str, Any] | None = None,
    tiny: bool = False,
) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    hf: Any
    if pretrained or weights:
        hf = _vit_from_pretrained(weights, num_classes)
        if int(hf.config.image_size) != image_size:
            hf = _resize_vit(hf, image_size)
    else:
        base = dict(TINY_VIT_CONFIG) if tiny else {}
        base.update(hf_config or {})
        base["image_size"] = image_size
        base["num_labels"] = num_classes
        hf = ViTForImageClassification(ViTConfig(**base))
    cfg = hf.config.to_dict()
    keep = {
        k: cfg[k]
        for k in ViTConfig().to_dict()
        if k in cfg and isinstance(cfg[k], int | float | str | bool)
    }
    keep.pop("num_labels", None)
    model = HFViT(hf)
    model.plantdx_kwargs = {"hf_config": keep}  # type: ignore[assignment]
    return model


register_model(
    ModelSpec(
        "vit",
        _build_vit,
        default_image_size=224,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        interpolation="bilinear",
        description="Vision Transformer (HuggingFace ViTForImageClassification)",
        head="vit.classifier",
        weights_check=_vit_weights_dir,
        import_weights=import_vit_weights,
        any_input_size=False,  # position embeddings for one grid of patches
    )
)
