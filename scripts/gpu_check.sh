#!/usr/bin/env bash
# Everything a GPU session needs in one device-tool call: build with the CUDA kernels, run the
# whole test suite (GPU tests included), then both benchmarks against cuDNN. Logs and JSON go to
# $OUT (the device tool's output folder) or /tmp/fusedgru-gpu.
#   device run: bash scripts/gpu_check.sh [quick]     (quick: tests only, no benchmarks)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/fusedgru-gpu}
mkdir -p "$OUT"
export MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
bash scripts/bootstrap.sh > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
tail -1 "$OUT/build.log"
.venv/bin/python -m pytest tests -q -rs -p no:cacheprovider > "$OUT/tests.log" 2>&1
grep -E "passed|failed|error" "$OUT/tests.log" | tail -3
[ "${1:-}" = quick ] && exit 0
.venv/bin/python benchmarks/bench_gru.py --device cuda --plot --out "$OUT/bench_gru.json" \
  > "$OUT/bench_gru.log" 2>&1; tail -40 "$OUT/bench_gru.log"
.venv/bin/python benchmarks/bench_conv.py --device cuda --out "$OUT/bench_conv.json" \
  > "$OUT/bench_conv.log" 2>&1; tail -16 "$OUT/bench_conv.log"
