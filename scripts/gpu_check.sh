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
for sub in training export model_repository serving client bench; do
    ln -s "$ROOT/$sub" "$SHIM/plantdx/$sub"
done
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"

# --- the steps ------------------------------------------------------------------------------
# The steps are plantdx/bench/gpu_check.py and gpu_steps.py (bench/ in this tree).
timeout --kill-after=10 "$BUDGET_S" "$PY" -m plantdx.bench.gpu_check "$WORK" "$ROOT" "$BUDGET_S" 2>&1 | tee -a "$REPORT"
rc=${PIPESTATUS[0]}
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    note "FAILED: the checks ran past ${BUDGET_S} s and were stopped; the report above is partial"
fi
finish "$rc"
