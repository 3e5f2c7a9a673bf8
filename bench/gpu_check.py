"""The GPU check's program (scripts/gpu_check.sh runs it): the steps of gpu_steps.py, each
recorded (gpu_record.py) as ok, skipped (with the reason) or failed, the report saved after
every step.

    python -m plantdx.bench.gpu_check WORK ROOT BUDGET_S     (or: plantdx bench gpu-check)

Without a CUDA device it stops at once with exit code 1, unless GPU_CHECK_ALLOW_CPU=1 asks
for the same steps on the CPU (to check the program itself; its report says CPU MODE).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .gpu_record import Check, no_device_message


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3:
        print("usage: python -m plantdx.bench.gpu_check WORK ROOT BUDGET_S", file=sys.stderr)
        return 2
    import torch

    cpu_mode = os.environ.get("GPU_CHECK_ALLOW_CPU") == "1"
    from plantdx.choices import Device

    device: Device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not cpu_mode:
        print(no_device_message(torch.__version__, torch.version.cuda))
        return 1
    if cpu_mode:
        print("\n*** CPU MODE: checking the script itself; no number below is a GPU number ***")
    from .gpu_steps import run_steps

    check = Check(Path(args[0]), Path(args[1]), float(args[2]), cpu_mode)
    run_steps(check, device)
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
