#!/usr/bin/env bash
# Reproduces the "Client and end-to-end serving" table of BENCHMARKS.md in one run:
#   1. a random-weight efficientnet_b0 checkpoint, exported by plantdx into a fresh repository
#   2. plantdx bench inprocess   (the machine's limit: same preprocessing + ONNX model, no server)
#   3. plantdx serve on that repository (response cache off), then plantdx bench serve over HTTP
#      and gRPC
#   4. perf_analyzer (tritonclient 2.50.0 wheel) against the same server, gRPC, each level
#      followed at once by plantdx bench serve at that level (the agreement check)
#   5. the original FastAPI + PyTorch eager server, concurrency 1 and 8
#   6. results/*.json (with the CPU other processes used in each step) and table.md
#
# Run it alone on the machine, under the shared CPU lock:
#   flock /tmp/plantdx-cpu.lock bash scripts/bench_all.sh [OUT_DIR]
# Settings (environment): DATA, DURATION (s per level, 15), LEVELS (1,4,8,16), INPROC_DURATION (10),
# PA_INTERVAL_MS (5000), PORT_BASE (8560), FASTAPI (the original server's script), PA_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
PLANTDX="$ROOT/.venv/bin/plantdx"
OUT="${1:-$ROOT/runs/bench-serving-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)"
DATA="${DATA:-$ROOT/../shared/data/plantvillage-mini}"
DURATION="${DURATION:-15}"
LEVELS="${LEVELS:-1,4,8,16}"
INPROC_DURATION="${INPROC_DURATION:-10}"
PA_INTERVAL_MS="${PA_INTERVAL_MS:-5000}"
PORT_BASE="${PORT_BASE:-8560}"
FASTAPI="${FASTAPI:-$ROOT/../shared/baselines/original_fastapi.py}"
PA_DIR="${PA_DIR:-/tmp/plantdx-perf-analyzer-2.50.0}"
HTTP_PORT=$PORT_BASE GRPC_PORT=$((PORT_BASE + 1)) METRICS_PORT=$((PORT_BASE + 2))
FASTAPI_PORT=$((PORT_BASE + 3))
RESULTS="$OUT/results"
mkdir -p "$RESULTS"
LOG="$OUT/bench_all.log"
exec > >(tee -a "$LOG") 2>&1

say() { printf '\n[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
# CPU used by processes outside this script's tree, per phase: the figures are only as good as
# the machine was quiet.
MON_PID=""
monitor() {
  "$PLANTDX" bench cpu-monitor --tree $$ --out "$RESULTS/interference_$1.json" &
  MON_PID=$!
}
end_monitor() { [ -n "$MON_PID" ] && kill -TERM "$MON_PID" && wait "$MON_PID" || true; MON_PID=""; }
[ -d "$DATA" ] || { echo "no images at $DATA (set DATA)"; exit 1; }
[ -f "$FASTAPI" ] || { echo "no original server at $FASTAPI (set FASTAPI)"; exit 1; }

say "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u +%Y-%m-%dT%H:%MZ)"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "machine: $(nproc) CPU cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
  echo "GPU: $( (command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | head -1) || echo none)"
  echo "data: $DATA"
  echo "levels: $LEVELS, $DURATION s each; in-process $INPROC_DURATION s per layout"
  echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$RESULTS/meta.txt"
# Anything else busy on the machine corrupts the figures: the log shows who was.
ps -eo pcpu,etime,args --sort=-pcpu | head -6 | cut -c1-160

# -- perf_analyzer: the binary of the tritonclient 2.50.0 manylinux wheel -------------------
PA="$PA_DIR/tritonclient-2.50.0.data/data/bin/perf_analyzer"
if [ ! -x "$PA" ]; then
  say "fetching perf_analyzer (tritonclient 2.50.0 wheel) into $PA_DIR"
  mkdir -p "$PA_DIR"
  "$PY" -m pip download -q --no-deps tritonclient==2.50.0 --platform manylinux1_x86_64 \
    --only-binary=:all: -d "$PA_DIR"
  (cd "$PA_DIR" && "$PY" -m zipfile -e tritonclient-2.50.0-py3-none-manylinux1_x86_64.whl .)
  chmod +x "$PA"
fi
LIBS="$("$PY" -c 'import pytriton, pathlib; print(pathlib.Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs")')"
mkdir -p "$PA_DIR/lib"
ln -sf "$(ls "$LIBS"/libb64-*.so.0d | head -1)" "$PA_DIR/lib/libb64.so.0d"
ln -sf "$(ls "$LIBS"/libcudart-*.so.12* | head -1)" "$PA_DIR/lib/libcudart.so.12"

# -- 1. the repository --------------------------------------------------------------------
say "1/6 efficientnet_b0 (random weights) → ONNX → $OUT/work/repo"
rm -rf "$OUT/work"
"$PLANTDX" bench make-repo --data "$DATA" --out "$OUT/work" --model efficientnet_b0
REPO="$OUT/work/repo"

# -- 2. in-process limit ------------------------------------------------------------------
say "2/6 in-process limit"
monitor inprocess
"$PLANTDX" bench inprocess --repository "$REPO" --images "$DATA" --duration "$INPROC_DURATION" \
  --json "$RESULTS/inprocess.json"
end_monitor

# -- 3. Triton + plantdx bench serve ------------------------------------------------------
say "3/6 Triton on $REPO (HTTP $HTTP_PORT, gRPC $GRPC_PORT)"
"$PLANTDX" serve --repository "$REPO" --http-port "$HTTP_PORT" --grpc-port "$GRPC_PORT" \
  --metrics-port "$METRICS_PORT" --log-file "$OUT/triton.log" --no-response-cache --timeout 300 &
SERVER_PID=$!
stop_server() { kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true; }
trap 'end_monitor; stop_server' EXIT
for _ in $(seq 600); do
  "$PY" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$HTTP_PORT/v2/models/plantdx/ready', timeout=1)" 2>/dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "Triton exited; see $OUT/triton.log"; exit 1; }
  sleep 0.5
done

for proto in http grpc; do
  port=$HTTP_PORT; [ "$proto" = grpc ] && port=$GRPC_PORT
  say "    plantdx bench serve --protocol $proto --concurrency $LEVELS --duration $DURATION"
  monitor "serve_$proto"
  "$PLANTDX" bench serve --url "127.0.0.1:$port" --protocol "$proto" --images "$DATA" \
    --concurrency "$LEVELS" --duration "$DURATION" --json "$RESULTS/serve_$proto.json" \
    --plot "$RESULTS/serve_$proto.png"
  end_monitor
done

# -- 4. perf_analyzer, the same server ----------------------------------------------------
# Each perf_analyzer level is followed at once by plantdx bench serve at the same level, so the
# agreement check compares neighbours in time.
say "4/6 perf_analyzer, gRPC, concurrency 1 and 8 (each paired with plantdx bench serve)"
"$PLANTDX" bench perf-input --images "$DATA" --out "$OUT/work/pa_input.json"
monitor perf_analyzer
rows=()
for c in 1 8; do
  for stability in 10 25; do
    [ "$c" -ge 8 ] && [ "$stability" = 10 ] && continue  # concurrency 8 needs 25 here
    if LD_LIBRARY_PATH="$PA_DIR/lib" "$PA" -m plantdx -i grpc -u "127.0.0.1:$GRPC_PORT" \
      --input-data "$OUT/work/pa_input.json" --concurrency-range "$c:$c" \
      --measurement-interval "$PA_INTERVAL_MS" --max-trials 10 --stability-percentage "$stability" \
      -f "$OUT/work/pa_c$c.csv" > "$OUT/work/pa_c$c.log" 2>&1; then
      echo "perf_analyzer --concurrency-range $c:$c --stability-percentage $stability:"
      grep -E "^Concurrency: " "$OUT/work/pa_c$c.log" || true
      "$PLANTDX" bench perf-json --csv "$OUT/work/pa_c$c.csv" \
        --out "$OUT/work/pa_c$c.json" --label "perf_analyzer grpc (stability $stability%)"
      rows+=("$OUT/work/pa_c$c.json")
      break
    fi
    echo "perf_analyzer, concurrency $c, stability $stability%: no stable measurement"
    tail -3 "$OUT/work/pa_c$c.log"
  done
  "$PLANTDX" bench serve --url "127.0.0.1:$GRPC_PORT" --protocol grpc --images "$DATA" \
    --concurrency "$c" --duration "$DURATION" --json "$RESULTS/serve_grpc_paired_c$c.json"
done
end_monitor
"$PY" -c 'import json,sys; print(json.dumps([r for f in sys.argv[2:] for r in json.load(open(f))], indent=2))' \
  _ "${rows[@]}" > "$RESULTS/perf_analyzer_grpc.json"
stop_server
trap - EXIT

# -- 5. the original design ---------------------------------------------------------------
monitor fastapi
for c in 1 8; do
  say "5/6 original FastAPI + PyTorch eager, concurrency $c"
  "$PY" "$FASTAPI" bench --model efficientnet_b0 --num-classes 15 --images "$DATA" \
    --concurrency "$c" --duration "$DURATION" --port "$FASTAPI_PORT" --json "$RESULTS/fastapi_c$c.json"
done
end_monitor

# -- 6. the table -------------------------------------------------------------------------
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$RESULTS/meta.txt"
say "6/6 table"
"$PLANTDX" bench table --results "$RESULTS" --out "$OUT/table.md"
say "done: $OUT/table.md, $RESULTS/*.json"
