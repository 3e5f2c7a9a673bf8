#!/usr/bin/env bash
# plantdx GPU check: one script, under 8 minutes, on a machine with an NVIDIA GPU.
#
#   scripts/gpu_check.sh            run it from anywhere inside a copy of the working tree
#   OUT=/some/dir scripts/gpu_check.sh    also writes gpu_check.txt and gpu_check.json there
#
# It needs no network and installs nothing: it uses a Python that already has PyTorch
# ($PLANTDX_PYTHON, else .venv/bin/python, else python3; one whose torch sees CUDA first) and
# makes this tree importable as `plantdx` through a folder of symlinks. Steps whose packages
# are missing are skipped with the reason. Model weights are never downloaded:
# efficientnet_lite0 starts from ImageNet weights only if the weights package is installed.
#
# Steps: environment; synthetic leaves (plantdx data synth); one training epoch with mixed
# precision on the GPU for test_tiny and efficientnet_lite0; ONNX export with the parity
# check; GPU-versus-CPU outputs (PyTorch FP32, FP16 autocast, onnxruntime CUDA); images/s;
# TensorRT FP32/FP16/INT8 builds with the precision gate and `repo validate` when tensorrt
# imports; the `gpu`-marked tests when pytest is there.
#
# GPU_CHECK_ALLOW_CPU=1 runs the same steps on the CPU to check the script itself; its
# report says CPU MODE, and none of its numbers are GPU numbers.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUDGET_S="${GPU_CHECK_BUDGET_S:-420}"  # the Python part; setup and report fit in the rest
WORK="$(mktemp -d "${TMPDIR:-/tmp}/plantdx-gpu-check.XXXXXX")"
REPORT="$WORK/gpu_check.txt"
export PLANTDX_CACHE="$WORK/cache" MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db"
export PLANTDX_LOG="${PLANTDX_LOG:-ERROR}" PYTHONDONTWRITEBYTECODE=1

note() { echo "$*" | tee -a "$REPORT"; }

finish() {
    local rc=$1
    if [ -n "${OUT:-}" ]; then
        mkdir -p "$OUT"
        cp "$REPORT" "$OUT/gpu_check.txt"
        [ -f "$WORK/gpu_check.json" ] && cp "$WORK/gpu_check.json" "$OUT/gpu_check.json"
        note "report written to $OUT/gpu_check.txt"
    fi
    note "work directory: $WORK"
    exit "$rc"
}

note "plantdx GPU check — $(date -u +%Y-%m-%dT%H:%M:%SZ) — tree $ROOT"
if command -v nvidia-smi >/dev/null 2>&1; then
    note "$(nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv 2>&1)"
else
    note "nvidia-smi: not found"
fi

# --- a Python with PyTorch, preferring one whose torch sees a CUDA device -------------------
PY=""
for want in cuda any; do
    for cand in "${PLANTDX_PYTHON:-}" "$ROOT/.venv/bin/python" python3 python; do
        [ -n "$cand" ] || continue
        command -v "$cand" >/dev/null 2>&1 || continue
        if [ "$want" = cuda ]; then
            "$cand" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
                >/dev/null 2>&1 && PY="$cand" && break 2
        else
            "$cand" -c "import torch" >/dev/null 2>&1 && PY="$cand" && break 2
        fi
    done
done
if [ -z "$PY" ]; then
    note "FAILED: no Python with PyTorch found (set PLANTDX_PYTHON); nothing else can run"
    finish 1
fi
note "python: $(command -v "$PY") ($("$PY" --version 2>&1))"

# --- this tree as the `plantdx` package, without installing it ------------------------------
SHIM="$WORK/pkgroot"
mkdir -p "$SHIM/plantdx"
for entry in "$ROOT"/plantdx/*; do ln -s "$entry" "$SHIM/plantdx/"; done
for sub in training export model_repository serving client; do
    ln -s "$ROOT/$sub" "$SHIM/plantdx/$sub"
done
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"

# --- the steps ------------------------------------------------------------------------------
timeout --kill-after=10 "$BUDGET_S" "$PY" - "$WORK" "$ROOT" "$BUDGET_S" <<'PYTHON' 2>&1 | tee -a "$REPORT"
import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

WORK, ROOT, BUDGET = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
STARTED = time.monotonic()
CPU_MODE = os.environ.get("GPU_CHECK_ALLOW_CPU") == "1"
results: list[dict] = []


class Skip(Exception):
    pass


def left() -> float:
    return BUDGET - (time.monotonic() - STARTED)


def save() -> None:
    doc = {"cpu_mode": CPU_MODE, "seconds": round(time.monotonic() - STARTED, 1), "steps": results}
    (WORK / "gpu_check.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")


# @step("name") runs the function at once, records ok / skipped / failed and saves the report.
def step(name: str, needs_s: float = 0.0):
    def wrap(fn):
        t0 = time.monotonic()
        entry = {"step": name}
        try:
            if left() < needs_s:
                raise Skip(f"out of time ({left():.0f} s left, needs ~{needs_s:.0f} s)")
            entry["result"] = fn()
            entry["status"] = "ok"
        except Skip as exc:
            entry["status"], entry["reason"] = "skipped", str(exc)
        except Exception as exc:
            entry["status"], entry["reason"] = "failed", f"{type(exc).__name__}: {exc}"
            entry["trace"] = traceback.format_exc(limit=4)
        entry["seconds"] = round(time.monotonic() - t0, 1)
        results.append(entry)
        status = entry["status"].upper()
        print(f"\n== {name}: {status} ({entry['seconds']} s)", flush=True)
        if entry["status"] == "ok":
            print(json.dumps(entry["result"], indent=2, default=str), flush=True)
        else:
            print(f"   {entry['reason']}", flush=True)
        save()
        return entry
    return wrap


def need(module: str) -> object:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Skip(f"{module} is not installed ({exc})") from None


def version(module: str) -> str:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "present"))
    except Exception as exc:
        return f"missing ({type(exc).__name__})"


import torch  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not CPU_MODE:
    print("FAILED: PyTorch sees no CUDA device (torch " + torch.__version__ + ", CUDA build "
          + str(torch.version.cuda) + "); set GPU_CHECK_ALLOW_CPU=1 to check the script on CPU")
    sys.exit(1)
if CPU_MODE:
    print("\n*** CPU MODE: checking the script itself; no number below is a GPU number ***")
LEAVES, CHECK = WORK / "leaves", WORK / "check"
RUNS: dict[str, Path] = {}


@step("environment")
def _env():
    info = {
        "device": DEVICE,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if DEVICE == "cuda" else None,
    }
    if DEVICE == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["compute_capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
    for m in ("plantdx", "onnx", "onnxruntime", "tensorrt", "tritonclient", "mlflow",
              "albumentations", "cv2", "onnxslim", "pytest"):
        info[m] = version(m)
    try:
        import onnxruntime as ort

        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    return info


@step("synthetic leaves (plantdx data synth)", 20)
def _synth():
    from plantdx.synth import generate_dataset

    train = generate_dataset(LEAVES, per_class=60, size=192, seed=0)
    check = generate_dataset(CHECK, per_class=10, size=192, seed=1)
    return {"train_images": sum(train.values()), "check_images": sum(check.values()),
            "classes": len(train)}


def train_one_epoch(model: str, image_size: int, pretrained: bool) -> dict:
    if not LEAVES.is_dir():
        raise Skip("no synthetic data")
    need("albumentations")
    from plantdx.training import TrainConfig, train
    from plantdx.training.progress import Reporter

    out = WORK / f"run-{model}"
    cfg = TrainConfig(data=str(LEAVES), out=str(out), model=model, pretrained=pretrained,
                      image_size=image_size, epochs=1, batch_size=32, lr=2e-3, device=DEVICE,
                      amp=True, channels_last=True, mlflow=False, warmup_epochs=0.2)
    t0 = time.perf_counter()
    result = train(cfg, reporter=Reporter(quiet=True))
    history = json.loads((out / "history.json").read_text())
    RUNS[model] = out / "best.pt"
    return {"device": result.metrics.get("device"), "amp": DEVICE == "cuda",
            "pretrained": pretrained, "seconds": round(time.perf_counter() - t0, 1),
            "train_img_per_s": round(history[-1]["train_img_per_s"], 1),
            "val_acc": round(result.metrics["val_acc"], 3),
            "test_acc": round(result.metrics["test_acc"], 3)}


@step("train test_tiny, 1 epoch, mixed precision", 20)
def _tiny():
    return train_one_epoch("test_tiny", 64, pretrained=False)


@step("train efficientnet_lite0, 1 epoch, mixed precision", 60)
def _lite0():
    try:
        from plantdx.models import lite0_weights_path

        lite0_weights_path()
        pretrained = True
    except Exception:
        pretrained = False  # no weights package: random init, the speed is what counts here
    return train_one_epoch("efficientnet_lite0", 224, pretrained=pretrained)


def checkpoint() -> Path:
    for name in ("efficientnet_lite0", "test_tiny"):
        if name in RUNS:
            return RUNS[name]
    raise Skip("no trained checkpoint")


@step("ONNX export + parity (plantdx export --to onnx)", 30)
def _onnx():
    need("onnx"), need("onnxruntime"), need("tritonclient")
    from plantdx.export import ExportConfig, export
    from plantdx.model_repository.repository import validate_repository

    repo = WORK / "repo-onnx"
    t0 = time.perf_counter()
    r = export(ExportConfig(source=str(checkpoint()), repository=str(repo),
                            check_data=str(CHECK), simplify=True))
    return {"seconds": round(time.perf_counter() - t0, 1), "parity": r.parity,
            "simplify": r.provenance["simplify"], "notes": r.notes,
            "validate": validate_repository(repo) or "ok"}


def check_batch(meta) -> "np.ndarray":
    import numpy as np
    from plantdx.preprocessing import Preprocessor

    from plantdx.data import is_image_file

    pre = Preprocessor(meta)
    files = sorted(p for p in CHECK.rglob("*") if is_image_file(p))
    return np.stack([pre(p.read_bytes()) for p in files])


def compare(ref, got) -> dict:
    import numpy as np

    ref, got = ref.astype(np.float64), got.astype(np.float64)
    p = lambda x: np.exp(x - x.max(1, keepdims=True)) / np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)  # noqa: E731
    return {"max_abs_logits": float(np.abs(ref - got).max()),
            "max_abs_probs": float(np.abs(p(ref) - p(got)).max()),
            "top1_agreement": float((ref.argmax(1) == got.argmax(1)).mean())}


@step("GPU versus CPU outputs", 30)
def _compare():
    from plantdx.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint())
    x = torch.from_numpy(check_batch(ckpt.preprocessing))
    model = ckpt.build_model().eval()
    out = {"model": ckpt.model_name, "images": len(x)}
    with torch.no_grad():
        cpu = model(x).numpy()
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False  # FP32 on the GPU means FP32 here
        dev = model.to(DEVICE)
        out["torch_fp32_vs_cpu"] = compare(cpu, dev(x.to(DEVICE)).float().cpu().numpy())
        torch.backends.cudnn.allow_tf32 = tf32
        with torch.autocast(DEVICE, dtype=torch.float16 if DEVICE == "cuda" else torch.bfloat16):
            out["torch_autocast_vs_cpu"] = compare(cpu, dev(x.to(DEVICE)).float().cpu().numpy())
    onnx_file = WORK / "repo-onnx" / "classifier" / "1" / "model.onnx"
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None and onnx_file.is_file():
        cpu_s = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        ref = cpu_s.run(None, {"input": x.numpy()})[0]
        out["onnxruntime_cpu_vs_torch_cpu"] = compare(cpu, ref)
        if "CUDAExecutionProvider" in ort.get_available_providers():
            cuda_s = ort.InferenceSession(str(onnx_file), providers=["CUDAExecutionProvider"])
            out["onnxruntime_cuda_vs_cpu"] = compare(ref, cuda_s.run(None, {"input": x.numpy()})[0])
        else:
            out["onnxruntime_cuda_vs_cpu"] = "skipped: onnxruntime has no CUDAExecutionProvider"
    return out


def images_per_s(fn, batch: int, iters: int, sync) -> float:
    for _ in range(3):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return round(batch * iters / (time.perf_counter() - t0), 1)


@step("inference images/s (efficientnet_lite0, 224 px)", 40)
def _speed():
    from plantdx.models import create_model

    model = create_model("efficientnet_lite0", num_classes=15, pretrained=False, image_size=224)
    model = model.eval()
    out = {}
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    with torch.no_grad():
        x = torch.randn(8, 3, 224, 224)
        out["torch_cpu_batch8"] = images_per_s(lambda: model(x), 8, 3, lambda: None)
        if DEVICE == "cuda":
            m = model.to("cuda").to(memory_format=torch.channels_last)
            for b in (1, 64):
                xg = torch.randn(b, 3, 224, 224, device="cuda").contiguous(
                    memory_format=torch.channels_last)
                out[f"torch_gpu_fp32_batch{b}"] = images_per_s(lambda: m(xg), b, 30, sync)
                with torch.autocast("cuda", dtype=torch.float16):
                    out[f"torch_gpu_fp16_batch{b}"] = images_per_s(lambda: m(xg), b, 30, sync)
    return out


def trt_export(precision: str, **kw) -> dict:
    from plantdx.export import ExportConfig, export
    from plantdx.model_repository.repository import validate_repository

    repo = WORK / "repo-trt"
    t0 = time.perf_counter()
    r = export(ExportConfig(source=str(checkpoint()), repository=str(repo), to="tensorrt",
                            precision=precision, check_data=str(CHECK), max_batch=64,
                            opt_batch=16, **kw))
    plan = next(iter(p for p in r.plans.values() if "carried_from_version" not in p))
    return {"version": r.version, "seconds": round(time.perf_counter() - t0, 1),
            "build_seconds": plan["build_seconds"], "plan_mb": round(plan["bytes"] / 1e6, 1),
            "gate": r.gate, "validate": validate_repository(repo) or "ok", "repo": str(repo),
            "file": plan["file"]}


TRT: dict = {}


def need_trt() -> None:
    if DEVICE != "cuda":
        raise Skip("TensorRT needs a CUDA device")
    need("tensorrt")


@step("TensorRT FP32 plan + gate", 60)
def _trt32():
    need_trt()
    TRT["fp32"] = trt_export("fp32")
    return TRT["fp32"]


@step("TensorRT FP16 plan + gate", 60)
def _trt16():
    need_trt()
    TRT["fp16"] = trt_export("fp16")
    return TRT["fp16"]


@step("TensorRT INT8 plan (entropy calibration) + gate", 60)
def _trt8():
    need_trt()
    TRT["int8"] = trt_export("int8", calibration=str(LEAVES), calibration_images=256)
    return TRT["int8"]


@step("TensorRT plan images/s (batch 64)", 20)
def _trt_speed():
    need_trt()
    if not TRT:
        raise Skip("no plan was built")
    import numpy as np
    import tensorrt as trt

    from plantdx.export.tensorrt import PlanRunner

    x = np.random.default_rng(0).standard_normal((64, 3, 224, 224)).astype(np.float32)
    out = {}
    for precision, built in TRT.items():
        plan = Path(built["repo"]) / "classifier" / str(built["version"]) / built["file"]
        runner = PlanRunner(trt, plan, max_batch=64)
        # Includes host↔device copies of the batch, like a serving call would.
        out[precision] = images_per_s(lambda: runner(x), 64, 20, torch.cuda.synchronize)
    return out


@step("pytest -m gpu (tests that need a GPU)", 60)
def _pytest():
    need("pytest")
    tests = [str(ROOT / "tests" / "test_export_tensorrt.py")]
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "gpu", *tests],
        capture_output=True, text=True, cwd=ROOT, timeout=max(10, left() - 5),
    )
    tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
    if r.returncode not in (0, 5):
        raise RuntimeError("; ".join(tail))
    if " passed" not in tail[-1]:
        raise Skip(tail[-1])
    return {"exit_code": r.returncode, "summary": tail}


failed = [r["step"] for r in results if r["status"] == "failed"]
skipped = [r["step"] for r in results if r["status"] == "skipped"]
print(f"\n== summary: {len(results) - len(failed) - len(skipped)} ok, {len(failed)} failed, "
      f"{len(skipped)} skipped in {time.monotonic() - STARTED:.0f} s"
      + (" (CPU MODE)" if CPU_MODE else ""))
for name in failed:
    print(f"   failed: {name}")
save()
sys.exit(1 if failed else 0)
PYTHON
rc=${PIPESTATUS[0]}
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    note "FAILED: the checks ran past ${BUDGET_S} s and were stopped; the report above is partial"
fi
finish "$rc"
