"""The GPU check's records: each step runs once and is recorded as ok, skipped (with the
reason) or failed; the report is printed as it goes and saved after every step."""

from __future__ import annotations

import importlib
import json
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


class Skip(Exception):
    """A step that cannot run here (a package, the time or the device is missing)."""


def need(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Skip(f"{module} is not installed ({exc})") from None


def need_trt(device: str) -> None:
    """TensorRT steps need a CUDA device and the tensorrt package."""
    if device != "cuda":
        raise Skip("TensorRT needs a CUDA device")
    need("tensorrt")


def version(module: str) -> str:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "present"))
    except Exception as exc:
        return f"missing ({type(exc).__name__})"


def format_entry(entry: dict[str, Any]) -> str:
    """What a finished step prints: its status and time, then its result or the reason."""
    status = entry["status"].upper()
    head = f"\n== {entry['step']}: {status} ({entry['seconds']} s)"
    if entry["status"] == "ok":
        return head + "\n" + json.dumps(entry["result"], indent=2, default=str)
    return f"{head}\n   {entry['reason']}"


def format_summary(results: Sequence[dict[str, Any]], seconds: float, cpu_mode: bool) -> str:
    failed = [r["step"] for r in results if r["status"] == "failed"]
    skipped = [r["step"] for r in results if r["status"] == "skipped"]
    lines = [
        f"\n== summary: {len(results) - len(failed) - len(skipped)} ok, {len(failed)} failed, "
        f"{len(skipped)} skipped in {seconds:.0f} s" + (" (CPU MODE)" if cpu_mode else "")
    ]
    lines += [f"   failed: {name}" for name in failed]
    return "\n".join(lines)


def no_device_message(torch_version: str, cuda_version: str | None) -> str:
    return (
        f"FAILED: PyTorch sees no CUDA device (torch {torch_version}, CUDA build "
        f"{cuda_version}); set GPU_CHECK_ALLOW_CPU=1 to check the script on CPU"
    )


class Check:
    """The run: its work folder, the tree under test, the time budget and the steps' records."""

    def __init__(self, work: Path, root: Path, budget_s: float, cpu_mode: bool) -> None:
        self.work, self.root, self.budget_s, self.cpu_mode = work, root, budget_s, cpu_mode
        self.started = time.monotonic()
        self.results: list[dict[str, Any]] = []

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def save(self) -> None:
        doc = {
            "cpu_mode": self.cpu_mode,
            "seconds": round(time.monotonic() - self.started, 1),
            "steps": self.results,
        }
        (self.work / "gpu_check.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")

    def step(self, name: str, fn: Callable[[], Any], needs_s: float = 0.0) -> dict[str, Any]:
        """Runs `fn` at once, records ok / skipped / failed, prints it and saves the report."""
        t0 = time.monotonic()
        entry: dict[str, Any] = {"step": name}
        try:
            if self.left() < needs_s:
                raise Skip(f"out of time ({self.left():.0f} s left, needs ~{needs_s:.0f} s)")
            entry["result"] = fn()
            entry["status"] = "ok"
        except Skip as exc:
            entry["status"], entry["reason"] = "skipped", str(exc)
        except Exception as exc:
            entry["status"], entry["reason"] = "failed", f"{type(exc).__name__}: {exc}"
            entry["trace"] = traceback.format_exc(limit=4)
        entry["seconds"] = round(time.monotonic() - t0, 1)
        self.results.append(entry)
        print(format_entry(entry), flush=True)
        self.save()
        return entry

    def finish(self) -> int:
        print(format_summary(self.results, time.monotonic() - self.started, self.cpu_mode))
        self.save()
        return 1 if any(r["status"] == "failed" for r in self.results) else 0
