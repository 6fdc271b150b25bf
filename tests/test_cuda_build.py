"""Compile check of every CUDA source with the machine's nvcc against torch's headers (no GPU
needed): a CUDA syntax or template error turns CI red even on CPU-only machines. ptxas's
resource report is checked too: no kernel may spill registers or use local memory at all (the
persistent GRU kernels keep their W_hh slices in registers; local memory there would be a silent
slowdown). The report's registers and static shared memory per kernel must equal the table the
emulator computes occupancy from (tests/cuda_emu/ptxas_sm90.txt), so a kernel change that moves
them is caught here; regenerate the table with FUSEDGRU_UPDATE_PTXAS_TABLE=1 (this file's tests
then rewrite their sources' lines)."""

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
PTXAS_TABLE = os.path.join(ROOT, "tests", "cuda_emu", "ptxas_sm90.txt")
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
           f"-D_GLIBCXX_USE_CXX11_ABI={abi}", "-keep", f"-keep-dir={tmp_path}",
           *[f"-I{p}" for p in includes], "-c", source, "-o", str(tmp_path / "out.o")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"nvcc failed:\n{result.stderr[-6000:]}"
    # ptxas -v, per kernel: "Compiling entry function '<mangled>' for 'sm_90'", then "N bytes
    # stack frame, M bytes spill stores, ..." and "Used R registers, [S bytes smem, ]...". A stack
    # frame is local memory (a dynamically indexed local array, or spills): DRAM traffic in a hot
    # loop, never intended.
    kernels = ptxas_report(result.stderr)
    assert kernels, f"no ptxas resource report:\n{result.stderr[-2000:]}"
    spilling = [name for name, k in kernels.items() if k["spill_stores"] > 0]
    assert not spilling, f"kernels spilling registers: {spilling}"
    local = [name for name, k in kernels.items() if k["stack_frame"] > 0]
    assert not local, f"kernels using local memory (stack frame): {local}"
    check_ptxas_table(os.path.basename(source), kernels, nvcc_release())
    ptx = list(tmp_path.glob("*.ptx"))
    assert len(ptx) == 1, f"expected one PTX file kept by nvcc -keep, got {ptx}"
    checked = check_hot_loop_instructions(ptx[0].read_text(), kernels)
    expected = {f for f, where in HOT_LOOP_SOURCES.items() if where == os.path.basename(source)}
    assert expected <= checked, f"kernel families not found in the PTX: {expected - checked}"


# Instructions the hot loops must compile to, per kernel family (a regex over the kernel's
# mangled name: PTX it must contain). The tensor-core persistent forward: its products as
# mma.sync (m16n8k16 for bf16/fp16, m16n8k8 for TF32) and the per-step staging of h_{t-1} as
# 16-byte loads that bypass L1 and 16-byte shared stores. A regression to scalar code fails here.
HOT_LOOP_INSTRUCTIONS = {
    r"gru_persistent_tc_forward_kernelIN3c10(8BFloat16|4Half)": [
        r"mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.(bf16|f16)",
        r"ld\.global\.cg\.v4\.u32", r"st\.shared\.v4\.u32"],
    r"gru_persistent_tc_forward_kernelIf": [
        r"mma\.sync\.aligned\.m16n8k8\.row\.col\.f32\.tf32", r"cvt\.rna\.tf32\.f32",
        r"ld\.global\.cg\.v4\.u32", r"st\.shared\.v4\.u32"],
    r"gru_persistent_tc_backward_kernelIN3c10(8BFloat16|4Half)": [
        r"mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.(bf16|f16)",
        r"ld\.global\.cg\.v4\.u32", r"st\.shared\.v4\.u32"],
    r"gru_persistent_tc_backward_kernelIf": [
        r"mma\.sync\.aligned\.m16n8k8\.row\.col\.f32\.tf32", r"ld\.global\.cg\.v4\.u32"],
}
# The source each family must be found in.
HOT_LOOP_SOURCES = dict(zip(HOT_LOOP_INSTRUCTIONS, ["gru_forward.cu", "gru_forward.cu",
                                                    "gru_backward.cu", "gru_backward.cu"]))


def ptx_functions(ptx):
    """{mangled entry name: its PTX body} of a PTX file."""
    bodies = {}
    for part in re.split(r"(?=\.visible \.entry )", ptx)[1:]:
        bodies[re.match(r"\.visible \.entry (\w+)", part)[1]] = part
    return bodies


def check_hot_loop_instructions(ptx, kernels):
    """Checks every kernel of a family in HOT_LOOP_INSTRUCTIONS; returns the families seen."""
    bodies, seen = ptx_functions(ptx), set()
    for family, needed in HOT_LOOP_INSTRUCTIONS.items():
        for name in (k for k in kernels if re.search(family, k)):
            missing = [n for n in needed if not re.search(n, bodies[name])]
            assert not missing, f"{name}: its PTX lacks {missing}"
            seen.add(family)
    return seen


def test_hot_loop_check_catches_scalar_code():
    """The check above on a planted PTX body: staging by scalar loads must fail it."""
    name = "_ZN8fusedgru4cuda3gru32gru_persistent_tc_forward_kernelIN3c108BFloat16ELi1EEEvNS1_1P"
    good = (f".visible .entry {name}(\n mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 ..."
            "\n ld.global.cg.v4.u32 ...\n st.shared.v4.u32 ...\n}")
    check_hot_loop_instructions(good, {name: {}})
    with pytest.raises(AssertionError, match=r"ld\\\\.global"):
        check_hot_loop_instructions(good.replace("ld.global.cg.v4.u32", "ld.global.cg.u32"),
                                    {name: {}})


def ptxas_report(stderr):
    """{mangled kernel name: {stack_frame, spill_stores, registers, smem}} from ptxas -v."""
    kernels = {}
    for block in re.split(r"(?=ptxas info\s*: Compiling entry function)", stderr):
        name = re.search(r"Compiling entry function '(\w+)'", block)
        if not name:
            continue
        frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores", block)
        used = re.search(r"Used (\d+) registers(?:, used \d+ barriers)?(?:, (\d+) bytes smem)?",
                         block)
        assert frame and used, f"incomplete ptxas report for {name[1]}:\n{block}"
        kernels[name[1]] = {"stack_frame": int(frame[1]), "spill_stores": int(frame[2]),
                            "registers": int(used[1]), "smem": int(used[2] or 0)}
    return kernels


def nvcc_release():
    out = subprocess.run([NVCC, "--version"], capture_output=True, text=True).stdout
    return re.search(r"release (\d+\.\d+)", out)[1]


def read_ptxas_table():
    """(nvcc release the table was made with, {source: {kernel: (registers, smem)}})."""
    release, table = None, {}
    with open(PTXAS_TABLE) as f:
        for line in f:
            if m := re.match(r"# nvcc release (\S+)", line):
                release = m[1]
            if line.strip() and not line.startswith("#"):
                source, kernel, registers, smem = line.split()
                table.setdefault(source, {})[kernel] = (int(registers), int(smem))
    return release, table


def write_ptxas_table(release, table):
    lines = [
        "# Registers per thread and static shared memory (bytes) of every kernel in csrc/cuda/*.cu",
        "# as ptxas reports them for sm_90 (H100/H200); the CUDA emulator computes occupancy from",
        "# them (tests/cuda_emu/emu_runtime.h). Checked against nvcc by tests/test_cuda_build.py;",
        "# regenerate: FUSEDGRU_UPDATE_PTXAS_TABLE=1 pytest tests/test_cuda_build.py",
        f"# nvcc release {release}",
        "# source kernel registers static_smem"]
    for source in sorted(table):
        for kernel, (registers, smem) in sorted(table[source].items()):
            lines.append(f"{source} {kernel} {registers} {smem}")
    with open(PTXAS_TABLE, "w") as f:
        f.write("\n".join(lines) + "\n")


def check_ptxas_table(source, kernels, release):
    measured = {name: (k["registers"], k["smem"]) for name, k in kernels.items()}
    if os.environ.get("FUSEDGRU_UPDATE_PTXAS_TABLE") == "1":
        _, table = read_ptxas_table() if os.path.exists(PTXAS_TABLE) else (None, {})
        table[source] = measured
        write_ptxas_table(release, table)
    table_release, table = read_ptxas_table()
    recorded = table.get(source, {})
    hint = "regenerate tests/cuda_emu/ptxas_sm90.txt with FUSEDGRU_UPDATE_PTXAS_TABLE=1"
    assert sorted(recorded) == sorted(measured), (
        f"{source}: kernels missing from the table {sorted(set(measured) - set(recorded))}, "
        f"stale in it {sorted(set(recorded) - set(measured))}; {hint}")
    if table_release == release:  # another nvcc allocates registers differently
        changed = {k: (recorded[k], v) for k, v in measured.items() if recorded[k] != v}
        assert not changed, f"{source}: (registers, smem) table -> ptxas: {changed}; {hint}"


def test_ptxas_table_lists_exactly_the_cuda_sources():
    _, table = read_ptxas_table()
    assert sorted(table) == sorted(map(os.path.basename, SOURCES))
