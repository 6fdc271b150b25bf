#!/usr/bin/env bash
# Everything a GPU session verifies, in ONE device call of at most 8 minutes: versions, the build,
# the cuda-marked tests (each file under a timeout, never stopping at the first failure), the
# benchmark grid against cuDNN, and compute-sanitizer over every kernel family. Stages run most
# valuable first (the build, whether C++ errors raise, the GRU's tests, the main benchmark,
# memcheck, the other test files, the other benchmarks, a profile of the persistent kernels,
# racecheck and synccheck). Each stage has a
# time budget, and so has the whole call (GPU_CHECK_BUDGET seconds): a stage is cut to what is
# left of it and skipped when too little is, so the summary and the logs are always written
# before the device tool's own limit. On the 2026-12-04 H200 run the budget ran out after
# test_gradcheck (build 129 s); --only reruns the stages it cut.
# Progress goes to stdout; logs and JSON go to $OUT (the device tool's output folder; default
# /tmp/fusedgru-gpu) as at most 8 files, the device tool's limit:
#   gpu_check.json     versions, per-stage status and seconds, per-file test summaries
#   bench_gru.json     fusedgru.GRU vs nn.GRU (cuDNN): T=256, N 1/16/64/256, H 128/256/1024,
#                      bf16 and fp32 with TF32 on/off, fwd and fwd+bwd, persistent and per-step
#   bench_cell.json    GRUCell streaming vs nn.GRUCell
#   bench_bidir.json   bidirectional layers (both directions in one persistent launch) vs cuDNN
#   bench_conv.json    causal conv vs F.conv1d (cuDNN), and a copy of the same bytes
#   logs.tar.gz        the build log, every test file's log, the benchmarks', sanitizers' and
#                      Nsight Compute's logs (profile_persistent: scripts/gpu_profile.py)
#
#   bash scripts/gpu_check.sh              # the whole check (at most 8 minutes on an H100/H200)
#   bash scripts/gpu_check.sh --quick      # build, the GRU test files, 4 benchmark points (<3 min)
#   bash scripts/gpu_check.sh --dry-run    # on a CPU machine (CI): the same stages, on the CPU,
#                                          # at toy sizes; the cuda-marked tests skip
#   bash scripts/gpu_check.sh --only=test_gru,bench_gru   # the build and the stages named (a
#                                          # rerun after a fix); names as gpu_check.json's
# Environment: OUT, MAX_JOBS (default: all cores), TORCH_CUDA_ARCH_LIST (default 9.0),
# GPU_CHECK_BUDGET (seconds for the whole call; default 470, --quick 170, --dry-run 900).
set -uo pipefail
cd "$(dirname "$0")/.."

mode=full
only=""
for arg in "$@"; do
  case "$arg" in
    --quick) mode=quick ;;
    --dry-run) mode=dry ;;
    --only=*) only=",${arg#--only=}," ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

OUT=${OUT:-/tmp/fusedgru-gpu}
mkdir -p "$OUT"
LOGS=$(mktemp -d)
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
PY=.venv/bin/python
t_start=$(date +%s)
case "$mode" in full) default_budget=470 ;; quick) default_budget=170 ;; *) default_budget=900 ;; esac
# Every stage ends by this time; RESERVE seconds are kept for timeout's kill grace, the summary and
# the archive, and a stage with under MIN_STAGE seconds left is skipped.
RESERVE=20 MIN_STAGE=15
deadline=$(( t_start + ${GPU_CHECK_BUDGET:-$default_budget} - RESERVE ))
STAGES=()  # name:status:seconds

# selected NAME: whether --only (if given) names the stage.
selected() { [ -z "$only" ] || [[ "$only" == *",$1,"* ]]; }

# run_stage NAME BUDGET_SECONDS LOG COMMAND...: runs under a timeout, logs, records the outcome.
run_stage() {
  local name=$1 budget=$2 log=$3; shift 3
  local t0 rc status left
  t0=$(date +%s)
  left=$(( deadline - t0 ))
  if [ "$left" -lt "$MIN_STAGE" ]; then
    STAGES+=("$name:skipped (out of time):0")
    echo "[gpu_check] $name: skipped, ${left} s left of the call's budget"
    echo "skipped: out of time" > "$log"
    return 1
  fi
  [ "$budget" -gt "$left" ] && budget=$left
  timeout --kill-after=15 "$budget" "$@" > "$log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then status=ok
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="cut after ${budget}s"
  else status="failed (exit $rc)"
  fi
  STAGES+=("$name:$status:$(( $(date +%s) - t0 ))")
  echo "[gpu_check] $name: $status, $(( $(date +%s) - t0 )) s (total $(( $(date +%s) - t_start )) s)"
  [ $rc -eq 0 ]
}

# ---- versions ----
if [ "$mode" = dry ]; then
  echo "[gpu_check] dry run on the CPU: $(nproc) cores, no GPU"
  device=cpu
else
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader \
    || echo "[gpu_check] nvidia-smi failed"
  device=cuda
fi

# ---- build ----
echo "[gpu_check] build: scripts/bootstrap.sh (MAX_JOBS=$MAX_JOBS, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
if ! run_stage build 240 "$LOGS/build.log" bash scripts/bootstrap.sh; then
  tail -40 "$LOGS/build.log"
fi
cp .venv/build.log "$LOGS/pip-build.log" 2>/dev/null  # pip's own log of the extension build
"$PY" - "$device" > "$LOGS/versions.json" <<'EOF'
import json, platform, sys
info = {"python": platform.python_version()}
try:
    import torch
    info.update(torch=torch.__version__, cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    if sys.argv[1] == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, sm_count=p.multi_processor_count,
                    capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1))
    import fusedgru
    info.update(fusedgru=fusedgru.__version__, cuda_kernels=fusedgru.has_cuda_kernels())
except Exception as e:  # reported, not hidden: the stages below then fail on their own
    info["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(info))
EOF
echo "[gpu_check] versions: $(cat "$LOGS/versions.json")"

# ---- stage helpers ----
per_test=()
"$PY" -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout=90)
: > "$LOGS/tests-summary.txt"
test_budget=$([ "$mode" = full ] && echo 150 || echo 120)
# run_tests NAME FILES...: the cuda-marked tests of FILES in one pytest run.
run_tests() {
  local name=$1 line; shift
  selected "$name" || return 0
  run_stage "$name" "$test_budget" "$LOGS/$name.log" \
    "$PY" -m pytest "$@" -q -m cuda -p no:cacheprovider "${per_test[@]}"
  line=$(grep -E "[0-9]+ (passed|failed|skipped|error|deselected)" "$LOGS/$name.log" | tail -1)
  echo "$name: ${line:-no summary line}" | tee -a "$LOGS/tests-summary.txt"
  grep -E "^(FAILED|ERROR) " "$LOGS/$name.log" | head -15
}
# run_bench NAME BUDGET SCRIPT ARGS...: one benchmark, JSON to $OUT/NAME.json, its table shown.
run_bench() {
  local name=$1 budget=$2 script=$3; shift 3
  [ $# -gt 0 ] && selected "$name" || return 0
  run_stage "$name" "$budget" "$LOGS/$name.log" \
    "$PY" "benchmarks/$script" "$@" --out "$OUT/$name.json"
  grep -vE "(it|config)/s\]|s/(it|config)\]" "$LOGS/$name.log" | tail -80
}
# run_sanitizer TOOL BUDGET: scripts/gpu_sanitize.py (every kernel family, small odd sizes, each
# result checked) under compute-sanitizer's TOOL; on the CPU (dry run) the script alone.
run_sanitizer() {
  local tool=$1 budget=$2 cmd=("$PY" scripts/gpu_sanitize.py)
  selected "sanitize_$tool" || return 0
  if [ "$mode" = dry ]; then
    cmd+=(--device cpu)
  else
    cmd=("$SANITIZER" --tool "$tool" --error-exitcode 1 --print-limit 20 "${cmd[@]}")
  fi
  run_stage "sanitize_$tool" "$budget" "$LOGS/sanitize_$tool.log" "${cmd[@]}"
  tail -25 "$LOGS/sanitize_$tool.log"
}
SANITIZER=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
# run_profile BUDGET: scripts/gpu_profile.py under Nsight Compute (the persistent kernels' launches:
# warp stall reasons, scheduler issue rates, the SASS lines warps wait on); on the CPU the
# script alone.
run_profile() {
  local budget=$1 cmd=("$PY" scripts/gpu_profile.py)
  selected profile_persistent || return 0
  if [ "$mode" = dry ]; then
    cmd+=(--device cpu)
  else
    cmd=("$NCU" --clock-control none --kernel-name regex:gru_persistent --section SpeedOfLight
         --section SchedulerStats --section WarpStateStats --section SourceCounters "${cmd[@]}")
  fi
  run_stage profile_persistent "$budget" "$LOGS/profile_persistent.log" "${cmd[@]}"
  grep -E "gru_persistent|Stall|Warp Cycles|Issued|Eligible|relative error" \
    "$LOGS/profile_persistent.log" | head -60
}
NCU=$(command -v ncu || compgen -G "/opt/nvidia/nsight-compute/*/ncu" | tail -1)
NCU=${NCU:-ncu}

# ---- what each stage runs ----
# test_gru: the GRU module's files, what tests/test_gru.py held before it was split by subject
# (its conversion tests, tests/test_convert.py, have no cuda-marked test).
gru_files=(tests/test_cuda.py tests/test_gru_parity.py tests/test_gru_interface.py
           tests/test_gru_cell.py tests/test_lengths.py)
other_files=()
[ "$mode" != quick ] && other_files=(tests/test_ln_gru.py tests/test_conv.py tests/test_models.py
  tests/test_beyond_cudnn.py tests/test_transforms.py tests/test_gradcheck.py
  tests/test_opcheck.py tests/test_compile.py)
cell=() bidir=() conv=()
if [ "$mode" = dry ]; then
  grid=(--device cpu --T 4 --N 1 2 --H 8 --reps 2 --warmup 1)
  cell=(--device cpu --variant cell --T 3 --N 1 --H 8 --reps 2 --warmup 1)
  bidir=(--device cpu --bidirectional --T 4 --N 2 --H 8 --reps 2 --warmup 1)
  conv=(--device cpu --N 1 --C 8 --L 32 --reps 2 --warmup 1)
elif [ "$mode" = quick ]; then
  grid=(--device cuda --T 256 --N 1 64 --H 256 1024 --dtype bf16 --reps 10 --warmup 2)
else
  grid=(--device cuda --T 256 --N 1 16 64 256 --H 128 256 1024 --dtype bf16 fp32
        --tf32 on off --paths auto per-step --reps 10 --warmup 2)
  cell=(--device cuda --variant cell --T 64 --N 1 16 64 --H 256 1024 --dtype bf16 fp32
        --tf32 off --reps 5 --warmup 1)
  bidir=(--device cuda --bidirectional --T 256 --N 1 16 --H 256 512 --dtype bf16
         --paths auto per-step --reps 10 --warmup 2)
  conv=(--device cuda --reps 20 --warmup 3)
fi

# ---- the stages, most valuable first ----
# cxx_errors: does a C++ argument check raise, or crash the process (it crashed on the GPU
# machine on 2026-12-04; scripts/check_cxx_errors.py)?
if selected cxx_errors; then
  run_stage cxx_errors 60 "$LOGS/cxx_errors.log" "$PY" scripts/check_cxx_errors.py --device \
    $([ "$mode" = dry ] && echo cpu || echo cpu cuda)
  cat "$LOGS/cxx_errors.log"
fi
run_tests test_gru "${gru_files[@]}"
run_bench bench_gru 200 bench_gru.py "${grid[@]}"
[ "$mode" != quick ] && run_sanitizer memcheck 90
for f in "${other_files[@]}"; do
  run_tests "$(basename "$f" .py)" "$f"
done
run_bench bench_bidir 45 bench_gru.py "${bidir[@]}"
run_bench bench_cell 60 bench_gru.py "${cell[@]}"
run_bench bench_conv 60 bench_conv.py "${conv[@]}"
[ "$mode" != quick ] && run_profile 60
if [ "$mode" != quick ]; then
  run_sanitizer racecheck 90
  run_sanitizer synccheck 60
fi
# ---- summary ----
"$PY" - "$mode" "$LOGS" "$OUT/gpu_check.json" "$(( $(date +%s) - t_start ))" "${STAGES[@]}" <<'EOF'
import json, os, sys
mode, logs, out, total, stages = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
with open(os.path.join(logs, "versions.json")) as f:
    versions = json.load(f)
with open(os.path.join(logs, "tests-summary.txt")) as f:
    tests = dict(line.rstrip("\n").split(": ", 1) for line in f if ": " in line)
record = {"mode": mode, "versions": versions, "total_seconds": total, "tests": tests,
          "stages": [dict(zip(("name", "status", "seconds"), s.rsplit(":", 2))) for s in stages]}
for s in record["stages"]:
    s["seconds"] = int(s["seconds"])
with open(out, "w") as f:
    json.dump(record, f, indent=1)
bad = [s["name"] for s in record["stages"] if s["status"] != "ok"]
print(f"[gpu_check] {mode}: {len(record['stages']) - len(bad)}/{len(record['stages'])} stages ok"
      + (f", not ok: {', '.join(bad)}" if bad else "") + f"; {total} s; wrote {out}")
sys.exit(1 if bad else 0)
EOF
rc=$?
tar -czf "$OUT/logs.tar.gz" -C "$LOGS" . && rm -rf "$LOGS"
exit $rc
