#!/usr/bin/env bash
# Packaging check (CI stage; `make check-packaging`): does what a user installing fusedgru gets
# work, away from this checkout?
#   1. the sdist, built from a copy of the files a fresh clone has (python -m build --sdist
#      --no-isolation); scripts/check_dist.py: it holds every source file of the checkout under
#      csrc/ (headers included), tests/ (helpers, emulator) and fusedgru/, and no build product;
#   2. the wheel, built from that sdist against the dev venv's torch: the one compile of the
#      extension, about 2-4 minutes on 2 cores; setuptools must not warn (deprecations);
#      check_dist.py: it holds _C, the build record, every module, the license, the torch pin;
#   3. a fresh venv that sees the dev venv's torch (a .pth, as scripts/bootstrap.sh does), the
#      wheel installed into it with pip --no-index (its requirements must accept that torch);
#   4. a smoke test (well under a minute) from outside any source tree: fusedgru imports from
#      the venv, runs GRU / GRUCell / LayerNormGRU / conv against their references, and the
#      sdist's own tests/test_docs.py and tests/test_packaging.py pass against the installed
#      package (doctests of every public object, the import checks).
# A file missing from MANIFEST.in fails step 1 by name (or, if untracked, a compile in 2 or a
# test in 4). Env: PYTHON (default .venv/bin/python, made by scripts/bootstrap.sh),
# KEEP=1 keeps the work folder, DIST=folder checks the sdist and wheel there instead of building.
set -euo pipefail
cd "$(dirname "$0")/.."
VPY=${PYTHON:-.venv/bin/python}
work=$(mktemp -d "${TMPDIR:-/tmp}/fusedgru-packaging.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
t_start=$(date +%s)
step() { echo "[check-packaging] $* ($(( $(date +%s) - t_start )) s so far)"; }

if [ -n "${DIST:-}" ]; then
  step "reusing the sdist and wheel in $DIST (DIST set: no build)"
  mkdir -p "$work/dist" && cp "$DIST"/*.tar.gz "$DIST"/*.whl "$work/dist/"
else
  if ! "$VPY" -c "import importlib.metadata as m; m.version('build')" 2>/dev/null; then
    step "installing build (the PyPA sdist/wheel front end)"
    "$VPY" -m pip install -q build
  fi
  # From a copy of what a fresh clone has (git's tracked and unignored files): setuptools also
  # packs whatever an earlier build's fusedgru.egg-info/SOURCES.txt lists, which would hide a
  # file missing from MANIFEST.in.
  mkdir -p "$work/tree"
  if git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
      if [ -e "$f" ]; then cp --parents "$f" "$work/tree/"; fi  # (a deleted tracked file)
    done
  else
    tar --exclude=./.venv --exclude=./build --exclude=./dist --exclude='*.egg-info' \
        --exclude='*.so' -cf - . | tar -xf - -C "$work/tree"
  fi
  fail_build() {
    tail -40 "$1"
    grep -m5 -E "fatal error|No such file" "$1" || true
    echo "[check-packaging] FAIL: $2 (log above)"
    exit 1
  }
  step "building the sdist"
  "$VPY" -m build --sdist --no-isolation --outdir "$work/dist" "$work/tree" \
    > "$work/build-sdist.log" 2>&1 || fail_build "$work/build-sdist.log" "the sdist does not build"
  sdist=$(ls "$work"/dist/*.tar.gz)
  "$VPY" scripts/check_dist.py "$sdist"
  step "building the wheel from the sdist: the one compile of the extension, about 2-4" \
    "minutes on 2 cores"
  mkdir -p "$work/sdist-tree"
  tar -xzf "$sdist" -C "$work/sdist-tree" --strip-components 1
  "$VPY" -m build --wheel --no-isolation --outdir "$work/dist" "$work/sdist-tree" \
    > "$work/build-wheel.log" 2>&1 \
    || fail_build "$work/build-wheel.log" "the wheel does not build from the sdist"
  if grep -E "Setuptools[A-Za-z]*Warning" "$work"/build-*.log; then
    echo "[check-packaging] FAIL: setuptools warns about the configuration (lines above)"
    exit 1
  fi
fi
sdist=$(ls "$work"/dist/*.tar.gz)
wheel=$(ls "$work"/dist/*.whl)
step "built $(basename "$sdist") and $(basename "$wheel")"
"$VPY" scripts/check_dist.py "$wheel"

step "installing the wheel into a fresh venv"
base=$("$VPY" -c "import sys; print(getattr(sys, '_base_executable', sys.executable))")
# --without-pip: the venv's own (ensurepip) pip and setuptools 65 would shadow the dev
# environment's newer ones, which torch's requirements need; pip comes from the .pth below.
"$base" -m venv --without-pip "$work/venv"
site=$("$work/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# torch (and pip, pytest, hypothesis) from the dev environment, behind the venv's own packages;
# the checkout itself stays off the path (the dev venv's editable .pth is not read from there).
"$VPY" -c "import sys; print('\n'.join(p for p in sys.path if p.endswith('-packages')))" \
  > "$site/_fusedgru_dev_site.pth"
# --no-index: the wheel's requirement (torch==<the torch it was built with>) must be met
# by what is installed. pip notes that it leaves the dev venv's editable fusedgru alone.
if ! "$work/venv/bin/python" -m pip install -q --no-index "$wheel" > "$work/install.log" 2>&1; then
  cat "$work/install.log"
  echo "[check-packaging] FAIL: the wheel does not install into a venv with this torch"
  exit 1
fi

step "smoke test of the installed wheel"
mkdir -p "$work/src" "$work/run"
tar -xzf "$sdist" -C "$work/src" --strip-components 1
cd "$work/run"
"$work/venv/bin/python" - "$work/venv" <<'EOF'
import os, sys
import torch
from torch import nn
import fusedgru
from fusedgru import _build_info, reference

venv = os.path.realpath(sys.argv[1])
assert os.path.realpath(fusedgru.__file__).startswith(venv), f"imported {fusedgru.__file__}"
assert os.path.realpath(fusedgru._C.__file__).startswith(venv), fusedgru._C.__file__
assert _build_info.torch_version == str(torch.__version__), _build_info.torch_version
torch.manual_seed(0)
ref = nn.GRU(6, 5, num_layers=2, bidirectional=True, dtype=torch.float64)
ours = fusedgru.convert(nn.GRU(6, 5, num_layers=2, bidirectional=True, dtype=torch.float64))
ours.load_state_dict(ref.state_dict())
x = torch.randn(7, 3, 6, dtype=torch.float64, requires_grad=True)
(o1, h1), (o2, h2) = ref(x), ours(x)
assert torch.allclose(o1, o2, atol=1e-10) and torch.allclose(h1, h2, atol=1e-10)
g1, = torch.autograd.grad(o1.sum(), x)
g2, = torch.autograd.grad(o2.sum(), x)
assert torch.allclose(g1, g2, atol=1e-10)
cell, ref_cell = fusedgru.GRUCell(6, 5), nn.GRUCell(6, 5)
cell.load_state_dict(ref_cell.state_dict())
xc = torch.randn(4, 6)
assert torch.allclose(cell(xc), ref_cell(xc), atol=1e-5)
ln = fusedgru.LayerNormGRU(6, 5, dtype=torch.float64)
out, _ = ln(x)
w = [getattr(ln, n) for n in ("weight_ih_l0", "weight_hh_l0", "ln_ih_weight_l0", "ln_ih_bias_l0",
                              "ln_hh_weight_l0", "ln_hh_bias_l0")]
expect, _ = reference.ln_gru_layer(x, x.new_zeros(3, 5), *w)
assert torch.allclose(out, expect, atol=1e-10)
xs, wt, b = torch.randn(2, 4, 9, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64), \
    torch.randn(4, dtype=torch.float64)
assert torch.allclose(fusedgru.causal_conv1d(xs, wt, b, activation="silu"),
                      reference.causal_conv1d(xs, wt, b, 1, "silu"), atol=1e-12)
print(f"[check-packaging] smoke ok: fusedgru {fusedgru.__version__} from "
      f"{os.path.dirname(fusedgru.__file__)}, torch {torch.__version__}, "
      f"cuda kernels: {fusedgru.has_cuda_kernels()}")
EOF
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider \
  "$work/src/tests/test_docs.py" "$work/src/tests/test_packaging.py"
step "ok"
