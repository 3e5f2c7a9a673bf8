"""Every architecture plantdx can train, export and serve.

`registry` holds the ModelSpec registry and `create_model`; `pooling` the ONNX-safe adaptive
pooling every model gets; one module per family registers its architectures when imported
here: `tiny` (test_tiny, a small random network for fast tests), `efficientnet_lite`,
`torchvision_models` (resnet50, efficientnet_b0, mobilenet_v3_*, vgg16) and `vit`. Everything
plantdx knows about an architecture is on its ModelSpec; `cam` (the class-activation-map
wrapper) and `weights_import` read it from there.
"""

from __future__ import annotations

from .efficientnet_lite import (
    LITE_MEAN,
    LITE_NATIVE_SIZES,
    LITE_STD,
    lite0_weights_path,
    lite_weights_path,
)
from .pooling import MatrixAdaptiveAvgPool2d, adaptive_pool_matrix, exportable_pooling
from .registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CamSplit,
    ModelSpec,
    check_weights,
    create_model,
    get_spec,
    head_module,
    list_models,
    model_kwargs_for_checkpoint,
    register_model,
)
from .tiny import TinyNet
from .torchvision_models import torch_hub_checkpoint_dir
from .vit import TINY_VIT_CONFIG, VIT_HUB_ID, HFViT

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LITE_MEAN",
    "LITE_NATIVE_SIZES",
    "LITE_STD",
    "TINY_VIT_CONFIG",
    "VIT_HUB_ID",
    "CamSplit",
    "HFViT",
    "MatrixAdaptiveAvgPool2d",
    "ModelSpec",
    "TinyNet",
    "adaptive_pool_matrix",
    "check_weights",
    "create_model",
    "exportable_pooling",
    "get_spec",
    "head_module",
    "list_models",
    "lite0_weights_path",
    "lite_weights_path",
    "model_kwargs_for_checkpoint",
    "register_model",
    "torch_hub_checkpoint_dir",
]
