"""Write an untrained-head checkpoint of a registered model, for serving benchmarks only.

Throughput and latency do not depend on the head's weights, so the ImageNet-pretrained
backbone with a fresh 15-class head stands in for a fine-tuned model (no training needed):

    python scripts/bench_checkpoint.py /tmp/bench/best.pt --model efficientnet_lite0
    plantdx export /tmp/bench/best.pt --to onnx --repository /tmp/bench/repo
"""

from __future__ import annotations

import argparse

import torch

from plantdx.checkpoint import Checkpoint, save_checkpoint
from plantdx.models import create_model, get_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--classes", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    spec = get_spec(args.model)
    model = create_model(args.model, num_classes=args.classes, pretrained=True)
    ckpt = Checkpoint(
        model_name=args.model,
        class_names=[f"class_{i:02d}" for i in range(args.classes)],
        preprocessing=spec.preprocessing(),
        state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        model_kwargs=dict(getattr(model, "plantdx_kwargs", None) or {}),
    )
    print(save_checkpoint(ckpt, args.out))


if __name__ == "__main__":
    main()
