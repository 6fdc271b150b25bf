"""What the compiler made of the CPU GEMM's micro-tiles, read from the built extension.

The AVX-512 fp32 tile (csrc/cpu/packed_gemm.cpp, tile<MR, NR>) loads each panel vector of B once
per k and multiplies it into MR rows. GCC 12 at -O3 folded that load into every row's FMA as a
memory operand in the 2- and 3-row tiles, MR loads of the same vector per k: a step of 3 rows
took 2.2x that of 4 rows on a 2-core Ice Lake Xeon (benchmarks/NOTES.md, twenty-third session).
The kernel pins the vectors in registers (in_register); this test turns CI red if a compiler or
an edit brings the folding back. Checked on the build that had it: it names tile<2, 3> and
tile<3, 3>.
"""

import os
import platform
import re
import shutil
import subprocess

import pytest

import fusedgru

SO = [os.path.join(os.path.dirname(fusedgru.__file__), f)
      for f in os.listdir(os.path.dirname(fusedgru.__file__)) if f.startswith("_C.")]

pytestmark = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or shutil.which("objdump") is None,
    reason="reads x86-64 code with objdump")

# The fp32 AVX-512 tiles, whether GCC kept them as functions or inlined them into the driver.
TILE_FUNCTION = re.compile(r"<(?:void )?fusedgru::cpu::\(anonymous namespace\)::"
                           r"(tile<\d+, \d+>|gemm_packed_avx512)\(")
INSTRUCTION = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")
BRANCH = re.compile(r"^([0-9a-f]+) <")
# An FMA whose first source is memory, not an embedded broadcast ({1to16}: a row of A).
FMA_FROM_MEMORY = re.compile(r"^(-?(?:0x[0-9a-f]+)?\([^)]*\)),")


def functions(disassembly):
    """{name: [(address, mnemonic, operands)]} for the tile functions."""
    found, current = {}, None
    for line in disassembly.splitlines():
        if line and not line[0].isspace():
            m = TILE_FUNCTION.search(line)
            current = found.setdefault(m.group(1), []) if m else None
            continue
        if current is not None:
            m = INSTRUCTION.match(line)
            if m:
                current.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return found


def backward_target(address, mnemonic, operands):
    """Where a jump back to an earlier address goes; None for any other instruction."""
    m = BRANCH.match(operands)
    target = int(m.group(1), 16) if mnemonic.startswith("j") and m else None
    return target if target is not None and target < address else None


def innermost_fma_loops(code):
    """Bodies of the innermost loops (a backward branch with none inside) that run zmm FMAs."""
    loops = []
    for i, ins in enumerate(code):
        start = backward_target(*ins)
        if start is None:
            continue
        body = [b for b in code[:i] if b[0] >= start]
        inner = all(backward_target(*b) is None for b in body)
        if inner and any(b[1].startswith("vfmadd") and "zmm" in b[2] for b in body):
            loops.append(body)
    return loops


def reloaded_panels(so_path):
    """The tile loops of so_path that broadcast more than one row of A and take a panel vector
    of B as an FMA's memory operand (so it is loaded once per row), and how many multi-row
    loops there were."""
    disassembly = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", so_path],
                                 capture_output=True, text=True, check=True).stdout
    bad, multi_row = [], 0
    for name, code in functions(disassembly).items():
        for body in innermost_fma_loops(code):
            rows = sum(1 for _, mnemonic, _ in body if mnemonic == "vbroadcastss")
            folded = [ops for _, mnemonic, ops in body
                      if mnemonic.startswith("vfmadd") and FMA_FROM_MEMORY.match(ops)
                      and "{1to16}" not in ops]
            if rows >= 2:
                multi_row += 1
                if folded:
                    bad.append((name, hex(body[0][0]), folded))
    return bad, multi_row


def test_multi_row_tiles_load_each_panel_vector_once():
    assert len(SO) == 1, SO
    bad, multi_row = reloaded_panels(SO[0])
    # tile<2..8, 2..3> at least (tile<1, NR> broadcasts one row; NR = 1 tiles embed theirs).
    assert multi_row >= 7, f"found {multi_row} multi-row tile loops: the parser lost them"
    assert not bad, f"panel vectors reloaded per row (FMA memory operands): {bad}"
