#!/usr/bin/env bash
# What a GPU session runs, in device-tool calls of under 10 minutes each. Every stage first
# builds (scripts/bootstrap.sh: a no-op when the build is current). Logs and JSON go to $OUT
# (the device tool's output folder) or /tmp/fusedgru-gpu.
#   bash scripts/gpu_check.sh tests   # build, then the cuda-marked tests (the CPU ones run in CI)
#   bash scripts/gpu_check.sh bench   # bench_gru (gru, packed, layernorm, cell, per-step path) and
#                                     # bench_conv vs cuDNN
#   bash scripts/gpu_check.sh all     # both, for machines without the 10-minute limit
set -uo pipefail
cd "$(dirname "$0")/.."
stage=${1:-all}
OUT=${OUT:-/tmp/fusedgru-gpu}
mkdir -p "$OUT"
export MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
PY=.venv/bin/python
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
start=$(date +%s)
bash scripts/bootstrap.sh > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s; $(tail -1 "$OUT/build.log")"

if [ "$stage" = tests ] || [ "$stage" = all ]; then
  $PY -m pytest tests -q -rs -m cuda -p no:cacheprovider > "$OUT/tests.log" 2>&1
  grep -E "^(FAILED|ERROR)|passed|failed|error" "$OUT/tests.log" | tail -25
fi

if [ "$stage" = bench ] || [ "$stage" = all ]; then
  for variant in gru packed layernorm cell; do
    extra=()
    [ "$variant" = gru ] || extra=(--N 16 64 256 --tf32 off)
    [ "$variant" = cell ] && extra=(--N 1 16 64 --tf32 off)
    $PY benchmarks/bench_gru.py --device cuda --variant "$variant" "${extra[@]}" --plot \
      --out "$OUT/bench_gru-$variant.json" > "$OUT/bench_gru-$variant.log" 2>&1
    echo "== bench_gru --variant $variant"; grep -vE "it/s\]|s/it\]" "$OUT/bench_gru-$variant.log" | tail -30
  done
  FUSEDGRU_PERSISTENT=0 $PY benchmarks/bench_gru.py --device cuda --N 1 16 64 --tf32 off \
    --out "$OUT/bench_gru-per-step.json" > "$OUT/bench_gru-per-step.log" 2>&1
  echo "== bench_gru, per-step path (FUSEDGRU_PERSISTENT=0)"
  grep -vE "it/s\]|s/it\]" "$OUT/bench_gru-per-step.log" | tail -14
  $PY benchmarks/bench_conv.py --device cuda --out "$OUT/bench_conv.json" \
    > "$OUT/bench_conv.log" 2>&1
  echo "== bench_conv"; grep -vE "it/s\]|s/it\]" "$OUT/bench_conv.log" | tail -20
fi
echo "total: $(( $(date +%s) - start )) s"
