"""Compile check of every CUDA source with the machine's nvcc against torch's headers (no GPU
needed): a CUDA syntax or template error turns CI red even on CPU-only machines. ptxas's
resource report is checked too: no kernel may spill registers or use local memory at all (the
persistent GRU kernels keep their W_hh slices in registers; local memory there would be a silent
slowdown)."""

import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest
import torch
import torch.utils.cpp_extension as cpp_ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
NVCC = shutil.which("nvcc") or (os.path.join(cpp_ext.CUDA_HOME, "bin", "nvcc")
                                 if cpp_ext.CUDA_HOME else None)


def cxx_standard():
    m = re.search(r"C\+\+ Version: (\d+)", torch.__config__.show())
    return "c++20" if m and int(m.group(1)) >= 202002 else "c++17"


def test_there_are_cuda_sources():
    assert SOURCES, "csrc/cuda/*.cu is empty"


def library_headers():
    """Where cublas_v2.h and the other CUDA library headers torch's CUDA headers include live:
    the toolkit, NVIDIA's wheels (CUDA builds of torch), or the header-only copy that
    scripts/bootstrap.sh makes next to a CPU build of torch."""
    candidates = [os.path.join(cpp_ext.CUDA_HOME, "include")] if cpp_ext.CUDA_HOME else []
    candidates += glob.glob(os.path.join(sysconfig.get_paths()["purelib"], "nvidia", "*",
                                         "include"))
    candidates.append(os.path.join(sys.prefix, "cuda-library-headers"))
    found = [p for p in candidates if os.path.exists(os.path.join(p, "cublas_v2.h"))]
    assert found, ("no cublas_v2.h in the CUDA toolkit, NVIDIA's wheels or "
                   f"{candidates[-1]}: run scripts/bootstrap.sh (it fetches the headers)")
    return found[:1]


# FUSEDGRU_CHECK_TORCH_INCLUDE=<site-packages>/torch/include compiles against another torch's
# headers than the running one's (e.g. the GPU machine's torch 2.11.0+cu130, unpacked from its
# wheel), to catch API differences between the versions we support.
TORCH_INCLUDE = os.environ.get("FUSEDGRU_CHECK_TORCH_INCLUDE")


@pytest.mark.skipif(NVCC is None or not os.path.exists(NVCC), reason="nvcc not installed")
@pytest.mark.parametrize("source", SOURCES, ids=os.path.basename)
def test_cuda_source_compiles(source, tmp_path):
    torch_includes = ([TORCH_INCLUDE, os.path.join(TORCH_INCLUDE, "torch", "csrc", "api",
                                                    "include")]
                      if TORCH_INCLUDE else cpp_ext.include_paths())
    includes = torch_includes + library_headers() + [sysconfig.get_paths()["include"],
                                                     os.path.join(ROOT, "csrc")]
    generated = "c10/cuda/impl/cuda_cmake_macros.h"
    if not any(os.path.exists(os.path.join(p, generated)) for p in includes):
        # CPU wheels of torch ship the c10/cuda headers but not this file, which torch's CUDA
        # build generates from c10/cuda/impl/cuda_cmake_macros.h.in; write what it generates.
        shim = tmp_path / generated
        shim.parent.mkdir(parents=True)
        shim.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        includes.append(str(tmp_path))
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cmd = [NVCC, f"-std={cxx_standard()}", "-O1", "--expt-relaxed-constexpr",
           "-gencode=arch=compute_90,code=sm_90", "-Xptxas", "-v", "-Xcompiler", "-fPIC",
           f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
           *[f"-I{p}" for p in includes], "-c", source, "-o", str(tmp_path / "out.o")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"nvcc failed:\n{result.stderr[-6000:]}"
    # ptxas -v: "Compiling entry function '<mangled>' for 'sm_90'", then "N bytes stack
    # frame, M bytes spill stores, ..." for that kernel. A stack frame is local memory (a
    # dynamically indexed local array, or spills): DRAM traffic in a hot loop, never intended.
    kernels = re.findall(r"Compiling entry function '(\w+)'.*?(\d+) bytes stack frame, "
                         r"(\d+) bytes spill stores", result.stderr, flags=re.S)
    assert kernels, f"no ptxas resource report:\n{result.stderr[-2000:]}"
    spilling = [name for name, _, stores in kernels if int(stores) > 0]
    assert not spilling, f"kernels spilling registers: {spilling}"
    local = [name for name, frame, _ in kernels if int(frame) > 0]
    assert not local, f"kernels using local memory (stack frame): {local}"
