"""Benchmark fixtures: checkpoints and repositories whose speed is that of a real model, with
no training. Throughput and latency do not depend on the weights.

    plantdx bench checkpoint /tmp/bench/best.pt --model efficientnet_lite0
    plantdx export /tmp/bench/best.pt --to onnx --repository /tmp/bench/repo
    plantdx bench make-repo --data DIR --out WORK --model efficientnet_b0   (both at once)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def benchmark_checkpoint(
    out: str | Path,
    model_name: str,
    class_names: Sequence[str],
    *,
    pretrained: bool = False,
    image_size: int | None = None,
) -> Path:
    """A checkpoint of `model_name` with a fresh head for `class_names` (seed 0): the ImageNet
    backbone with `pretrained`, random weights otherwise."""
    import torch

    from plantdx.checkpoint import Checkpoint, save_checkpoint
    from plantdx.models import create_model, get_spec, model_kwargs_for_checkpoint

    torch.manual_seed(0)
    model = create_model(
        model_name, num_classes=len(class_names), pretrained=pretrained, image_size=image_size
    )
    ckpt = Checkpoint(
        model_name=model_name,
        class_names=list(class_names),
        preprocessing=get_spec(model_name).preprocessing(image_size),
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        model_kwargs=model_kwargs_for_checkpoint(model),
    )
    return Path(save_checkpoint(ckpt, out))


def numbered_classes(n: int) -> list[str]:
    return [f"class_{i:02d}" for i in range(n)]


def benchmark_repository(
    data: str | Path, out: str | Path, model_name: str = "efficientnet_b0", image_size: int = 224
) -> tuple[Path, int]:
    """A random-weight checkpoint (OUT/run/best.pt) with the classes of the ImageFolder `data`,
    exported to a fresh repository (OUT/repo) with the project's own export (ONNX,
    parity-checked on `data`); returns the repository and the version."""
    from plantdx.data import scan_image_folder
    from plantdx.export import ExportConfig, export

    classes = scan_image_folder(data).class_names
    out = Path(out)
    path = benchmark_checkpoint(out / "run" / "best.pt", model_name, classes, image_size=image_size)
    result = export(
        ExportConfig(
            source=str(path),
            repository=str(out / "repo"),
            check_data=str(data),
            check_images=32,
            # Random weights give near-ties between classes; the top-1 check then only
            # measures float noise. Probabilities must still agree to 1e-4.
            min_top1_agreement=0.9,
        )
    )
    return Path(result.repository), int(result.version)
