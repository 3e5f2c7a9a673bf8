"""The GPU check's program (scripts/gpu_check.sh): its records, its report and its stop on a
machine without a GPU. The steps themselves need a GPU (GPU_CHECK_ALLOW_CPU=1 runs them on a
CPU, for minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from plantdx.bench.gpu_record import (
    Check,
    Skip,
    format_entry,
    format_summary,
    need,
    no_device_message,
    version,
)

ROOT = Path(__file__).resolve().parents[2]


def test_steps_are_recorded_printed_and_saved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    check = Check(tmp_path, ROOT, budget_s=60, cpu_mode=True)
    ok = check.step("adds", lambda: {"sum": 3})
    assert ok["status"] == "ok" and ok["result"] == {"sum": 3}

    def missing() -> None:
        raise Skip("tensorrt is not installed")

    def broken() -> None:
        raise ValueError("bad plan")

    assert check.step("trt", missing)["status"] == "skipped"
    failed = check.step("breaks", broken)
    assert failed["status"] == "failed" and failed["reason"] == "ValueError: bad plan"
    assert "ValueError" in failed["trace"]
    late = check.step("long", lambda: 1, needs_s=3600)
    assert late["status"] == "skipped" and late["reason"].startswith("out of time (")
    out = capsys.readouterr().out
    assert '\n== adds: OK (0.0 s)\n{\n  "sum": 3\n}' in out
    assert "\n== trt: SKIPPED (0.0 s)\n   tensorrt is not installed" in out
    assert "\n== breaks: FAILED (0.0 s)\n   ValueError: bad plan" in out
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["cpu_mode"] is True and [s["step"] for s in saved["steps"]] == [
        "adds", "trt", "breaks", "long",
    ]  # fmt: skip
    assert check.finish() == 1  # a failed step fails the check
    assert "1 ok, 1 failed, 2 skipped" in capsys.readouterr().out


def test_report_formatting() -> None:
    entry = {"step": "env", "status": "ok", "seconds": 1.5, "result": {"p": Path("/x")}}
    assert format_entry(entry) == '\n== env: OK (1.5 s)\n{\n  "p": "/x"\n}'
    results = [
        {"step": "a", "status": "ok"},
        {"step": "b", "status": "failed"},
        {"step": "c", "status": "skipped"},
    ]
    assert format_summary(results, 12.4, cpu_mode=False) == (
        "\n== summary: 1 ok, 1 failed, 1 skipped in 12 s\n   failed: b"
    )
    assert format_summary(results[:1], 3, cpu_mode=True).endswith("in 3 s (CPU MODE)")
    assert no_device_message("2.1", None) == (
        "FAILED: PyTorch sees no CUDA device (torch 2.1, CUDA build None); "
        "set GPU_CHECK_ALLOW_CPU=1 to check the script on CPU"
    )


def test_missing_packages_skip() -> None:
    with pytest.raises(Skip, match="no_such_module_xyz is not installed"):
        need("no_such_module_xyz")
    assert version("no_such_module_xyz") == "missing (ModuleNotFoundError)"
    assert version("tempfile") == "present"  # a module without __version__


def test_tensorrt_steps_skip_without_a_gpu(tmp_path: Path) -> None:
    from plantdx.bench.gpu_speed import trt_speed
    from plantdx.bench.gpu_steps import Steps

    steps = Steps(Check(tmp_path, ROOT, 60, cpu_mode=True), device="cpu")
    with pytest.raises(Skip, match="TensorRT needs a CUDA device"):
        steps.trt_export("fp16")
    with pytest.raises(Skip, match="TensorRT needs a CUDA device"):
        trt_speed(steps.device, steps.trt)
    with pytest.raises(Skip, match="no trained checkpoint"):
        steps.checkpoint()


def test_compare_reports_agreement() -> None:
    import numpy as np

    from plantdx.bench.gpu_speed import compare

    ref = np.array([[1.0, 0.0], [0.0, 2.0]])
    same = compare(ref, ref.astype(np.float32))
    assert same == {"max_abs_logits": 0.0, "max_abs_probs": 0.0, "top1_agreement": 1.0}
    assert compare(ref, ref[:, ::-1])["top1_agreement"] == 0.0


def test_without_a_gpu_it_stops_at_once(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    env = {k: v for k, v in os.environ.items() if k != "GPU_CHECK_ALLOW_CPU"}
    r = subprocess.run(
        [sys.executable, "-m", "plantdx.bench.gpu_check", str(tmp_path), str(ROOT), "60"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stdout.startswith("FAILED: PyTorch sees no CUDA device")
    assert not (tmp_path / "gpu_check.json").exists()


def test_usage_and_the_shell_script_calls_the_module() -> None:
    from plantdx.bench.gpu_check import main

    assert main([]) == 2
    script = (ROOT / "scripts" / "gpu_check.sh").read_text()
    assert "-m plantdx.bench.gpu_check" in script and "<<'PYTHON'" not in script
