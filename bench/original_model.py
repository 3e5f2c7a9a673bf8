"""The original design's server for an architecture torchvision does not have (EfficientNet-Lite).

    python -m plantdx.bench.original_model ORIGINAL_FASTAPI_PY serve --model efficientnet_lite0 ...

Runs the original design's script unchanged (FastAPI, PIL + torchvision transforms, one PyTorch
eager forward per request) with `torchvision.models.get_model` answering that one name from
`plantdx.models` (random weights, as the script's own models have): the same server, with the
architecture plantdx serves.
"""

from __future__ import annotations

import runpy
import sys
from typing import Any


def _option(argv: list[str], name: str, default: str) -> str:
    return argv[argv.index(name) + 1] if name in argv[:-1] else default


def main(argv: list[str]) -> None:
    import torchvision

    from plantdx.models import create_model

    script, args = argv[0], argv[1:]
    wanted = _option(args, "--model", "")
    size = int(_option(args, "--image-size", "224"))
    get_model = torchvision.models.get_model

    def patched(name: str, **kwargs: Any) -> Any:
        if name != wanted:
            return get_model(name, **kwargs)
        return create_model(name, num_classes=int(kwargs["num_classes"]), image_size=size)

    torchvision.models.get_model = patched
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
