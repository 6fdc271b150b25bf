"""Proofs of the host CUDA emulator's checks (tests/cuda_emu/cuda_emu.h, emu_runtime.h): for each
check, kernels with planted bugs that it must catch, and correct twins that it must let through
(tests/cuda_emu/planted.cpp); then the persistent GRU kernels' coverage: the plans an H100 / H200
would pick, and kernel runs for every number of units per block.

The ThreadSanitizer proofs run the planted kernels in child processes under the TSan build (built
there on first use): a report, or its absence, is a property of the whole process."""

import math
import os
import re
import struct
import subprocess
import sys

import pytest
import torch
from cuda_emu import emu_build
from gru_testing import SEED, rel_err

from fusedgru import reference

TESTS = os.path.dirname(os.path.abspath(__file__))
POISON_DOUBLE = struct.unpack("d", b"\xff" * 8)[0]  # a NaN: every byte emu::kPoison
SLOW_MS = 300  # a delay that makes one interleaving all but certain


def is_poison(v):
    return math.isnan(v) and struct.pack("d", v) == struct.pack("d", POISON_DOUBLE)


@pytest.fixture(scope="module")
def planted():
    module = emu_build.load_planted()
    module.seed_block_order(SEED, 0)
    return module


@pytest.fixture(scope="module")
def emu():
    return emu_build.load_emulator()


# ---------------------------------------------------------------------------------------------
# Barrier discipline: one call site per __syncthreads generation; no exit while the block (grid)
# waits at a barrier, and no barrier after a thread of the block (grid) has exited.

@pytest.mark.parametrize("name, delay_ms, match", [
    ("divergent_sync", 0, r"divergent __syncthreads: .* reached __syncthreads at "
                          r".*planted\.cpp:\d+:\d+, but .* waits at .*planted\.cpp:\d+:\d+"),
    ("exit_before_sync", 0, r"that barrier can never complete"),
    ("exit_before_sync", SLOW_MS, r"thread \(0, 0, 0\) exited while .* waits at __syncthreads"),
    ("sync_after_exit", SLOW_MS, r"reached __syncthreads at .* after block \(0, 0, 0\) thread "
                                 r"\(0, 0, 0\) exited"),
    ("uneven_loop", 0, r"that barrier can never complete"),
    ("grid_exit", 0, r"grid_sync.*can never complete"),
    ("grid_exit", SLOW_MS, r"block \(1, 0, 0\) thread \(0, 0, 0\) exited while \d+ threads wait "
                           r"at grid_sync"),
    ("grid_sync_in_plain_launch", 0, r"grid_sync\(\) in a launch that is not cooperative"),
    ("grid_vs_block_barrier", 0, r"grid_sync.*__syncthreads|__syncthreads.*grid_sync"),
], ids=["divergent", "exit", "exit-while-waiting", "sync-after-exit", "uneven-loop",
        "grid-exit", "grid-exit-while-waiting", "grid-sync-not-cooperative",
        "grid-and-block-barrier"])
def test_barrier_discipline_catches(planted, name, delay_ms, match):
    with pytest.raises(RuntimeError, match=match):
        planted.barrier_case(name, delay_ms)


def test_barrier_discipline_lets_correct_early_exits_through(planted):
    """Whole blocks returning at once; threads returning after the block's last barrier."""
    out = planted.barrier_case("legit_exits")
    assert out[:4] == [sum(range(32)), 0, sum(range(32)), 0]


def test_grid_sync_orders_the_grid(planted):
    out = planted.barrier_case("grid_rounds")
    assert out[:3] == [(b + 1) % 3 * 6.0 + 6.0 for b in range(3)]


# ---------------------------------------------------------------------------------------------
# Warp shuffles: the mask's lanes all live, at one call site with one mask; reads from outside
# the mask get poison.

@pytest.mark.parametrize("name, match", [
    ("sites", r"shuffle at .*planted\.cpp:\d+:\d+ .*wait for it at the shuffle at "
              r".*planted\.cpp:\d+:\d+"),
    ("exited_lane", r"exited"),
    ("without_own_lane", r"leaves out the caller's own lane"),
    ("mask_mismatch", r"with mask \{0,1,.*wait.* with mask"),
    ("missing_lanes", r"names lanes that do not exist \(40 threads per block\)"),
    ("vs_sync", r"__syncthreads.*a GPU hangs"),
])
def test_shuffle_rules_catch(planted, name, match):
    with pytest.raises(RuntimeError, match=match):
        planted.shuffle_case(name)


def test_shuffle_mask_mismatch_is_reported_in_every_schedule(planted):
    """The mismatch case gives the same report whatever order its lanes arrive in. Its earlier
    form (the low half over only its own half) could complete the low half's shuffle first;
    the high half's full mask then named exited lanes, 27 times in 20000 runs, enough to turn
    CI red under TSan; 2000 runs here would catch that schedule with ~93% probability."""
    for _ in range(2000):
        with pytest.raises(RuntimeError, match=r"with mask \{0,1,.*wait.* with mask"):
            planted.shuffle_case("mask_mismatch")


@pytest.mark.parametrize("case", ["outside_mask_exited", "outside_mask_live"])
def test_shuffle_reads_from_outside_the_mask_are_poison(planted, case):
    """Lanes read across the half-warp masks (lane ^ 16): from exited lanes, or from live lanes
    of the other mask. Reads inside the mask (lane ^ 1) are the neighbour's value."""
    out = planted.shuffle_case(case)
    lanes = range(16) if case == "outside_mask_exited" else range(32)
    assert all(is_poison(out[lane]) for lane in lanes)
    assert [out[32 + lane] for lane in lanes] == [100.0 + (lane ^ 1) for lane in lanes]


# ---------------------------------------------------------------------------------------------
# Warp mma (the tensor-core kernels' mma.sync): the emulated product follows the fragment layouts
# as the PTX ISA states them (written out here independently, row and column of each fragment
# element per lane), and it is a warp collective with a shuffle's rules.

def _bits16(values, dtype):
    return values.to(dtype).view(torch.int16).to(torch.int64) & 0xFFFF


def _bits32(elems):
    return [int(v) for v in torch.stack(elems).view(torch.int32).to(torch.int64) & 0xFFFFFFFF]


def mma_fragments(kind, A, B, C):
    """Per lane (g = lane >> 2, q = lane % 4) the registers of A [16, K], B [K, 8], C [16, 8] as
    the PTX ISA's "Matrix Fragments for mma.m16n8k16 / mma.m16n8k8" define them."""
    a, b, c = [], [], []
    for lane in range(32):
        g, q = lane >> 2, lane % 4
        if kind == "tf32":
            # a0..a3: rows g, g+8, g, g+8, cols q, q, q+4, q+4; b0, b1: rows q, q+4, col g
            a += _bits32([A[g, q], A[g + 8, q], A[g, q + 4], A[g + 8, q + 4]])
            b += _bits32([B[q, g], B[q + 4, g]])
        else:
            # a_i: row g (i in 0, 1, 4, 5) or g+8, col 2q + (i & 1) (+8 for i >= 4); two per
            # register; b_i: row 2q + (i & 1) (+8 for i >= 2), col g
            rows = [g, g, g + 8, g + 8, g, g, g + 8, g + 8]
            cols = [2 * q + (i & 1) + (8 if i >= 4 else 0) for i in range(8)]
            ea = _bits16(torch.stack([A[r, k] for r, k in zip(rows, cols)]), kind)
            a += [int(ea[2 * i]) | int(ea[2 * i + 1]) << 16 for i in range(4)]
            brows = [2 * q + (i & 1) + (8 if i >= 2 else 0) for i in range(4)]
            eb = _bits16(torch.stack([B[k, g] for k in brows]), kind)
            b += [int(eb[2 * i]) | int(eb[2 * i + 1]) << 16 for i in range(2)]
        c += [float(C[r, 2 * q + (i & 1)]) for i, r in enumerate([g, g, g + 8, g + 8])]
    return a, b, c


def unpack_accumulator(d):
    D = torch.empty(16, 8, dtype=torch.float64)
    for lane in range(32):
        g, q = lane >> 2, lane % 4
        for i, r in enumerate([g, g, g + 8, g + 8]):
            D[r, 2 * q + (i & 1)] = d[lane * 4 + i]
    return D


@pytest.mark.parametrize("kind", ["bf16", "fp16", "tf32"])
def test_emulated_mma_follows_the_ptx_fragment_layouts(planted, kind):
    K = 8 if kind == "tf32" else 16
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32}[kind]
    A, B = torch.randn(16, K), torch.randn(K, 8)
    if kind == "tf32":  # operands already TF32 (the kernels round with cvt.rna first)
        A, B = ((t.view(torch.int32) & ~0x1FFF).view(torch.float32) for t in (A, B))
    C = torch.randn(16, 8)
    a, b, c = mma_fragments(kind if kind == "tf32" else dtype, A.to(dtype), B.to(dtype), C)
    D = unpack_accumulator(planted.mma("fp16" if kind == "fp16" else kind, a, b, c))
    expected = A.to(dtype).double() @ B.to(dtype).double() + C.double()
    assert torch.allclose(D, expected, rtol=1e-6, atol=1e-5), (D - expected).abs().max()


@pytest.mark.parametrize("name, match", [
    ("half_warp", r"mma at .* names lanes .* that have exited|exited while"),
    ("vs_shuffle", r"(mma|shuffle) at .*planted\.cpp.*but lanes .* wait .*at the (shuffle|mma)"),
])
def test_mma_is_a_warp_collective(planted, name, match):
    with pytest.raises(RuntimeError, match=match):
        planted.mma_case(name)


# ---------------------------------------------------------------------------------------------
# Poison: shared memory per block, tensors allocated by launch code.

@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_shared_memory_is_per_block_and_poisoned_for_each(planted, dynamic):
    """8 blocks on 2 slots: each block's first read of its shared memory is poison (so nothing
    carries over from the slot's previous block), and it reads back only its own writes (so
    blocks running at once share nothing)."""
    blocks = 8
    out = planted.shared_memory(dynamic, blocks)
    first, mate = out[0::2], out[1::2]
    assert all(is_poison(v) for v in first)
    assert mate == [float(b) for b in range(blocks) for _ in range(64)]


def test_tensors_that_launch_code_allocates_are_poisoned(planted):
    allocator = planted.cpu_allocator()
    values, indices = planted.even_entries(101)
    assert planted.cpu_allocator() == allocator, "the guard must restore the CPU allocator"
    assert torch.equal(values[0::2], torch.arange(0, 101, 2, dtype=torch.float64))
    assert (values.view(torch.int64)[1::2] == -1).all()  # 0xff bytes
    assert torch.equal(indices[0::2], torch.arange(0, 101, 2))
    assert (indices[1::2] == -1).all()


def test_every_emulated_op_holds_the_poison_guard(emu, restore_rnn_precision):
    """Each op of emu_ops.cpp runs with its allocations poisoned (the guard counts itself)."""
    torch.backends.cudnn.rnn.fp32_precision = "tf32"
    x, w = torch.randn(2, 3, 20, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    g = gru_args(3, 2, 4, 5, torch.float64, None)
    args32 = [t.float() if t is not None else None for t in g]
    ln = [torch.randn(15, dtype=torch.float64) for _ in range(4)]
    fwd = emu.gru_forward(*g, False, True)
    ln_fwd = emu.ln_gru_forward(*g[:4], *ln, None, False, 1e-5, True)
    go, gh = torch.randn(3, 2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    dev = emu.devices()["h100"]
    both = (g[0], torch.stack([g[1], -g[1]]), *g[2:6], *g[2:6], g[6])
    both32 = [t.float() if t is not None and t.is_floating_point() else t for t in both]
    both_fwd = emu.gru_forward_bidirectional(*both, True)
    both_bwd = (torch.randn_like(both_fwd[0]), torch.randn_like(both_fwd[1]), None, None,
                both[0], both[1], *g[2:4], *g[2:4], None, both_fwd[0], both_fwd[2], both_fwd[3],
                True, True, True)
    ops = {
        "causal_conv1d_fwd": lambda: emu.causal_conv1d_fwd(x, w, None, None, 1, 0),
        "causal_conv1d_bwd": lambda: emu.causal_conv1d_bwd(x, x, w, None, None, 1, 0),
        "causal_conv1d_update": lambda: emu.causal_conv1d_update(
            x[:, :, 0], torch.zeros(2, 3, 3, dtype=torch.float64), w, None, 1, 0),
        "causal_conv1d_fwd_small_smem": lambda: emu.causal_conv1d_fwd_small_smem(
            x, w, None, None, 1, 0),
        "gemm": lambda: emu.gemm(torch.zeros(3, 3), torch.randn(3, 4), torch.randn(4, 3), 0.0),
        "tf32_matmul": lambda: emu.tf32_matmul(torch.zeros(3, 3), torch.randn(3, 4),
                                               torch.randn(4, 3), 0.0),
        "gru_forward": lambda: emu.gru_forward(*g, False, True),
        "gru_forward_per_step": lambda: emu.gru_forward_per_step(*args32, False, True),
        "gru_forward_on": lambda: emu.gru_forward_on(dev, *g, False, True),
        "gru_backward": lambda: emu.gru_backward(go, gh, None, *g[:4], None, fwd[0], fwd[2],
                                                 False, True, True, True),
        "gru_backward_per_step": lambda: emu.gru_backward_per_step(
            go, gh, None, *g[:4], None, fwd[0], fwd[2], False, True, True, True),
        "gru_backward_on": lambda: emu.gru_backward_on(dev, go, gh, None, *g[:4], None, fwd[0],
                                                       fwd[2], False, True, True, True),
        "gru_forward_bidirectional": lambda: emu.gru_forward_bidirectional(*both, True),
        "gru_forward_bidirectional_per_step": lambda: emu.gru_forward_bidirectional_per_step(
            *both32, True),
        "gru_forward_bidirectional_on": lambda: emu.gru_forward_bidirectional_on(dev, *both,
                                                                                 True),
        "gru_backward_bidirectional": lambda: emu.gru_backward_bidirectional(*both_bwd),
        "gru_backward_bidirectional_per_step": lambda: emu.gru_backward_bidirectional_per_step(
            *both_bwd),
        "gru_backward_bidirectional_on": lambda: emu.gru_backward_bidirectional_on(dev,
                                                                                   *both_bwd),
        "gru_cell": lambda: emu.gru_cell(g[0][0], *g[1:6]),
        "ln_gru_forward": lambda: emu.ln_gru_forward(*g[:4], *ln, None, False, 1e-5, True),
        "ln_gru_backward": lambda: emu.ln_gru_backward(go, gh, *g[:4], ln[0], ln[2], ln[3], None,
                                                       ln_fwd[0], ln_fwd[2], False, True, True),
    }
    for name, op in ops.items():
        before = emu.poison_guards_held()
        op()
        assert emu.poison_guards_held() == before + 1, name


# ---------------------------------------------------------------------------------------------
# Block order: a seeded random permutation, two blocks at a time.

def test_block_order_is_a_seeded_permutation(planted):
    order = planted.block_permutation(7, 3, 5, 100)
    assert sorted(order) == list(range(100)) and order != list(range(100))
    assert planted.block_permutation(7, 3, 5, 100) == order
    for other in [(8, 3, 5), (7, 4, 5), (7, 3, 6)]:
        assert planted.block_permutation(*other, 100) != order


def test_a_dependence_between_blocks_shows(planted):
    """Block b continues block b - 1's count: right only if the blocks ran in order, one at a
    time."""
    assert planted.block_chain(16) != [b + 1.0 for b in range(16)]


def test_two_blocks_run_at_once_each_with_its_own_shared_memory(planted):
    met0, met1, smem0, smem1 = planted.meet()
    assert met0 == met1 == 1.0
    assert smem0 != smem1


def test_errors_name_the_block_order(planted):
    planted.seed_block_order(SEED, 42)
    with pytest.raises(RuntimeError, match=rf"FUSEDGRU_TEST_SEED={SEED}, stream 42, launch 0\]"):
        planted.barrier_case("divergent_sync")


def test_the_block_order_seed_comes_from_FUSEDGRU_TEST_SEED(planted):
    code = "from cuda_emu import emu_build; print(emu_build.load_planted().block_order_seed())"
    env = dict(os.environ, FUSEDGRU_TEST_SEED="12345", PYTHONPATH=TESTS)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600, check=True)
    assert out.stdout.split()[-1] == "12345"


# ---------------------------------------------------------------------------------------------
# Kernel resources from ptxas (emu_runtime.h): a planted table (FUSEDGRU_EMU_PTXAS_TABLE) in a
# child process must change what the launch code decides, and a csrc kernel missing from it must
# be an error rather than a default.

def run_with_ptxas_table(tmp_path, edit, code):
    with open(os.path.join(TESTS, "cuda_emu", "ptxas_sm90.txt")) as f:
        lines = f.read().splitlines()
    table = tmp_path / "ptxas_planted.txt"
    table.write_text("\n".join(edit(line) for line in lines if edit(line) is not None) + "\n")
    env = dict(os.environ, FUSEDGRU_EMU_PTXAS_TABLE=str(table), PYTHONPATH=TESTS)
    prelude = "import torch; from cuda_emu import emu_build; emu = emu_build.load_emulator(); "
    return subprocess.run([sys.executable, "-c", prelude + code], env=env, capture_output=True,
                          text=True, timeout=1200)


PERSISTENT_FWD_F64 = "gru_persistent_forward_kernelIdE"
PLAN = "print(emu.gru_persistent_blocks(5, 3, 1, True), emu.gru_persistent_blocks(5, 3, 1, False))"


def test_the_planner_sees_the_ptxas_tables_resources(tmp_path):
    """With the real table the fp64 and fp32 persistent forward kernels take a 1-block plan;
    planting 227 KB of static shared memory on the fp64 one (no block fits an SM) must send
    that dtype to the per-step path and leave fp32 alone."""
    real = run_with_ptxas_table(tmp_path, lambda line: line, PLAN)
    assert real.returncode == 0, real.stderr[-3000:]
    assert real.stdout.split()[-2:] == ["1", "1"]

    def planted(line):
        if PERSISTENT_FWD_F64 in line and not line.startswith("#"):
            source, name, regs, _ = line.split()
            return f"{source} {name} {regs} {227 * 1024}"
        return line
    run = run_with_ptxas_table(tmp_path, planted, PLAN)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[-2:] == ["0", "1"]


def test_a_csrc_kernel_missing_from_the_ptxas_table_is_an_error(tmp_path):
    run = run_with_ptxas_table(
        tmp_path, lambda line: None if PERSISTENT_FWD_F64 in line else line, PLAN)
    assert run.returncode != 0
    assert re.search(r"kernel _ZN8fusedgru\w*gru_persistent_forward_kernelIdE\w* is not in the "
                     r"ptxas table", run.stderr), run.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# ThreadSanitizer: a missing barrier is a data race, also when the warps shuffle in between
# (the emulator's own locks order nothing TSan sees).

def run_race_under_tsan(mode):
    code = ("import sys; from cuda_emu import emu_build; "
            "print(emu_build.load_planted().race(sys.argv[1])[:2])")
    env = emu_build.preload_env("tsan", dict(os.environ, PYTHONPATH=TESTS))
    env.pop("FUSEDGRU_EMU_ASAN", None)
    return subprocess.run([sys.executable, "-c", code, mode], env=env, capture_output=True,
                          text=True, timeout=1200)


needs_tsan = pytest.mark.skipif(not emu_build.runtime_available("tsan"),
                                reason="gcc has no ThreadSanitizer runtime")


@needs_tsan
@pytest.mark.parametrize("mode", ["none", "shuffles"])
def test_tsan_reports_a_missing_barrier(mode):
    run = run_race_under_tsan(mode)
    assert run.returncode != 0, run.stdout + run.stderr
    assert "WARNING: ThreadSanitizer: data race" in run.stderr, run.stderr[-3000:]
    assert "race_kernel" in run.stderr and "planted.cpp" in run.stderr, run.stderr[-3000:]


@needs_tsan
def test_tsan_is_quiet_with_the_barrier():
    run = run_race_under_tsan("barrier")
    assert run.returncode == 0 and "ThreadSanitizer" not in run.stderr, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "[32.0, 33.0]"


# ---------------------------------------------------------------------------------------------
# Coverage of the persistent GRU kernels (gru_persistent.cuh): the planners' decisions on a whole
# H100 / H200 (132 SMs), derived here from the kernels' documented limits, and kernel runs on
# small emulated devices for every number of units per block J.

PERSISTENT_THREADS, PERSISTENT_WARPS, PERSISTENT_BATCH = 256, 8, 8
UNITS_PER_BLOCK = (1, 2, 4, 8, 16, 32)
MAX_SLICE = {True: 16, False: 32}  # W_hh values per gate a thread keeps: fp64, fp32
SMEM_OPTIN = 227 * 1024


def expected_plan(N, H, fp64, backward, sms):
    """(J, KS, blocks, smem): the smallest J whose slices fit the registers (KS <= max slice)
    with a grid of one block per SM (255 registers x 256 threads fill an SM), the staged
    h_{t-1} [N, H] (backward: dgh [N, 3H]) and the partial sums in shared memory; (0, 0, 0, 0)
    when none fits."""
    elem = 8 if fp64 else 4
    rows = 3 * H if backward else H
    max_slice = (3 if backward else 1) * MAX_SLICE[fp64]
    staged = -(-N * rows * elem // 16) * 16
    gates = 1 if backward else 3
    for J in UNITS_PER_BLOCK:
        KS = -(-rows // (PERSISTENT_THREADS // J))
        if KS > max_slice:
            continue
        smem = staged + PERSISTENT_WARPS * gates * PERSISTENT_BATCH * J * elem
        if smem > SMEM_OPTIN:
            return (0, 0, 0, 0)
        blocks = -(-H // J)
        if blocks <= sms:
            return (J, KS, blocks, smem)
    return (0, 0, 0, 0)


def test_persistent_plans_of_an_h100(emu):
    """Planner only (no launch): every H from 8 to 1024, forward and backward, fp64 and fp32,
    batches from 1 to 64 (at 64 the larger layers leave shared memory)."""
    dev = emu.devices()["h100_132"]
    plan = emu.gru_persistent_plan
    # Worked by hand: 132 blocks of 1 unit; one more unit needs pairs; fp32 H = 1024 in 8-unit
    # blocks of 32-wide slices; fp64 H = 1024 fits no register budget (KS 32 > 16 at J = 8).
    assert plan(dev, 5, 1, 132, True, False) == (1, 1, 132, 1056 + 1536)
    assert plan(dev, 5, 1, 133, True, False)[:3] == (2, 2, 67)
    assert plan(dev, 5, 1, 1024, False, False)[:3] == (8, 32, 128)
    assert plan(dev, 5, 1, 1024, False, True)[:3] == (8, 96, 128)
    assert plan(dev, 5, 1, 1024, True, False) == plan(dev, 5, 1, 1024, True, True) == (0, 0, 0, 0)
    picked = set()
    for fp64 in (True, False):
        for backward in (False, True):
            for N in (1, 16, 64):
                for H in range(8, 1025):
                    got = plan(dev, 5, N, H, fp64, backward)
                    assert got == expected_plan(N, H, fp64, backward, 132), (N, H, fp64, backward)
                    picked.add(got[0])
    assert picked - {0} <= set(UNITS_PER_BLOCK)
    assert picked == {0, 1, 2, 4, 8}


def gru_args(T, N, C, H, dtype, lengths):
    x = torch.randn(T, N, C, dtype=dtype)
    hx = torch.randn(N, H, dtype=dtype)
    w_ih, w_hh = (torch.randn(3 * H, k, dtype=dtype) / k ** 0.5 for k in (C, H))
    b_ih, b_hh = torch.randn(3 * H, dtype=dtype), torch.randn(3 * H, dtype=dtype)
    return x, hx, w_ih, w_hh, b_ih, b_hh, lengths


@pytest.fixture
def restore_rnn_precision():
    saved = torch.backends.cudnn.rnn.fp32_precision
    yield
    torch.backends.cudnn.rnn.fp32_precision = saved


# (device, H) whose plan has J units per block: partial last blocks, and the widest slices a
# 4-SM device allows at J = 32 (fp64: KS = 16); fp32's widest (KS = 32) needs 8 SMs.
COVERAGE = [("h100", 3, 1), ("h100", 7, 2), ("h100", 13, 4), ("h100", 29, 8), ("h100", 61, 16),
            ("h100", 128, 32)]
COVERAGE_RUNS = [(dev, H, J, fp64) for dev, H, J in COVERAGE for fp64 in (True, False)] + \
    [("sms8", 256, 32, False)]


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("device, H, J, fp64", COVERAGE_RUNS,
                         ids=[f"{d}-H{h}-J{j}-{'fp64' if f else 'fp32'}"
                              for d, h, j, f in COVERAGE_RUNS])
def test_persistent_kernels_for_every_units_per_block(emu, restore_rnn_precision, device, H, J,
                                                      fp64, reverse):
    """Forward and backward persistent kernels with J units per block, lengths 0 and T among
    the rows, against the float64 references (fp32: strict fp32 GEMMs, 1e-5 relative)."""
    torch.backends.cudnn.rnn.fp32_precision = "ieee"
    T, N, C = 3, 3, 5
    dev = emu.devices()[device]
    dtype = torch.float64 if fp64 else torch.float32
    for backward in (False, True):
        got = emu.gru_persistent_plan(dev, T, N, H, fp64, backward)
        assert got[0] == J, (backward, got)
    args64 = gru_args(T, N, C, H, torch.float64, torch.tensor([T, 0, 2]))
    args = [a.to(dtype) if a.is_floating_point() else a for a in args64]
    tol = 1e-12 if fp64 else 1e-5
    out, h, ws = emu.gru_forward_on(dev, *args, reverse, True)
    out_r, h_r, ws_r = reference.gru_layer(*args64, reverse)
    for name, o, r in (("output", out, out_r), ("h_n", h, h_r), ("workspace", ws, ws_r)):
        assert o.dtype == dtype and rel_err(o, r) <= tol, (name, rel_err(o, r))
    go, gh = torch.randn_like(out_r), torch.randn_like(h_r)
    x, hx, w_ih, w_hh, _, _, lengths = args
    grads = emu.gru_backward_on(dev, go.to(dtype), gh.to(dtype), None, x, hx, w_ih, w_hh, lengths,
                                out, ws, reverse, True, True, True)
    x64, hx64, w_ih64, w_hh64 = args64[:4]
    grads_r = reference.gru_layer_backward(go, gh, None, x64, hx64, w_ih64, w_hh64, lengths, out_r,
                                           ws_r, reverse, True)
    for i, (o, r) in enumerate(zip(grads, grads_r)):
        assert rel_err(o, r) <= tol, f"grad {i}: {rel_err(o, r)}"


# ---------------------------------------------------------------------------------------------
# The tensor-core persistent forward (gru_persistent_tc.cuh): the plans an H100 / H200 would
# pick, and kernel runs for every units-per-block J, batch chunk NT, one or several k splits and
# widths of the register-resident k-range.

def test_tensor_core_plans_of_an_h100(emu, restore_rnn_precision):
    """Planner only: the issue-13 grid (T = 256; N 1, 16, 64, 256; H 128, 256, 1024)."""
    torch.backends.cudnn.rnn.fp32_precision = "tf32"
    dev = emu.devices()["h100_132"]
    for dtype in ("bf16", "fp16"):
        for N in (1, 16, 64, 256):
            for H in (128, 256, 1024):
                J, RT, KS, KTW, NT, threads, blocks, smem = emu.gru_tc_plan(dev, 256, N, H, dtype)
                if (N, H) == (256, 1024):  # h_{t-1} staged: 256 x 1024 bf16 = 512 KB > 227 KB
                    assert J == 0
                    continue
                # 8 units per block: 128 blocks at H = 1024, 11 k-tiles of 16 per warp
                assert (J, RT, blocks) == (8, 2, -(-H // 8)) and KTW <= 12 and smem <= 227 * 1024
                assert NT == min(4, -(-N // 8)) or (N, NT) == (256, 4)
    # TF32 keeps twice the registers per weight: H = 1024 at 12 k-tiles per warp would need 22
    # warps per block at J = 8, more than a block runs (16); warps keep 16 k-tiles there
    # instead (kTcMaxKTiles: 64 registers of A fragments), 128 blocks of 16 warps. N = 64 does
    # not fit: h_{t-1} staged in fp32 is 256 KB, more than a block's shared memory.
    assert emu.gru_tc_plan(dev, 256, 16, 256, "fp32")[0] == 8
    for N in (1, 16):
        J, RT, KS, KTW, NT, threads, blocks, smem = emu.gru_tc_plan(dev, 256, N, 1024, "fp32")
        assert (J, RT, KS, KTW, threads, blocks) == (8, 2, 8, 16, 512, 128), N
        assert smem <= 227 * 1024
    assert emu.gru_tc_plan(dev, 256, 64, 1024, "fp32")[0] == 0
    assert emu.gru_tc_backward_plan(dev, 256, 16, 1024, "fp32")[0] == 0  # 3H = 3072: 24 warps
    torch.backends.cudnn.rnn.fp32_precision = "ieee"  # strict fp32: never TF32 tensor cores
    assert emu.gru_tc_plan(dev, 256, 16, 256, "fp32")[0] == 0
    assert emu.gru_tc_backward_plan(dev, 256, 16, 256, "fp32")[0] == 0
    assert emu.gru_tc_plan(dev, 256, 16, 256, "bf16")[0] == 8
    torch.backends.cudnn.rnn.fp32_precision = "tf32"
    # The backward stages dgh_t [N, 3H]: at H = 1024 up to N = 16 (N = 64: 393 KB of bf16);
    # 16 warps of 12 k-tiles cover 3H = 3072 at 8 units per block.
    for N in (1, 16):
        for H in (128, 256, 1024):
            J, RT, KS, KTW, NT, threads, blocks, smem = \
                emu.gru_tc_backward_plan(dev, 256, N, H, "bf16")
            assert (J, RT, blocks) == (8, 1, H // 8) and KS * KTW * 16 >= 3 * H, (N, H)
    assert emu.gru_tc_backward_plan(dev, 256, 64, 1024, "bf16")[0] == 0


# The first GPU measurements (H200, 132 SMs, T = 256 forward; both paths timed in one process),
# which gru_cost.cuh's fitted constants come from.
H200_RESULTS = os.path.join(TESTS, "..", "benchmarks", "results", "2026-12-04-h200.json")


# Grid points whose plan changed after that run: TF32 at H = 1024 got a tensor-core plan (16
# k-tiles per warp, kTcMaxKTiles); it ran the FMA kernel then (5.3 and 24.2 us a step at N = 1
# and 16; the model predicts 5.2 and 7.8 on tensor cores). Not measured yet.
TF32_PLANS_SINCE_H200 = {("fp32", "on", 1, 1024), ("fp32", "on", 16, 1024)}


def test_the_cost_model_reproduces_the_h200_measurements(emu, restore_rnn_precision,
                                                           monkeypatch):
    """Planner only, on the grid measured on an H200 (N 1/16/64/256, H 128/256/1024, bf16 and
    fp32 with TF32 on and off, T = 256 forward): each persistent prediction within 35% of the
    measured persistent step; the per-step path's within [0.5, 1.3] of its measured step (19-27
    us a step, one outlier of 37 at strict fp32 N = 16, H = 128; fp32 at H = 1024, N = 1: W_hh
    streamed at the H100's N = 16 cuBLAS rate, 25.6 us predicted, 20-21 measured); and wherever
    the two paths measured more than 15% apart, the planner takes the faster. The planner of
    that run took the persistent kernel wherever one fit, except strict fp32 at N = 256,
    H = 128; there the "auto" row is the per-step path. FUSEDGRU_PERSISTENT forces either."""
    import json

    monkeypatch.delenv("FUSEDGRU_PERSISTENT", raising=False)
    dev = emu.devices()["h100_132"]  # 132 SMs, as the H200
    with open(H200_RESULTS) as f:
        results = json.load(f)["results"]
    rows = {(r["dtype"], r["tf32"], r["path"], r["N"], r["H"]): r["fusedgru_us_per_step"]
            for r in results if r["mode"] == "fwd" and r["T"] == 256}
    T, checked = 256, 0
    for (dtype, tf32, path, N, H), auto_us in rows.items():
        if path != "auto":
            continue
        torch.backends.cudnn.rnn.fp32_precision = "ieee" if tf32 == "off" else "tf32"
        kernel, persistent_us, per_step_us, taken = emu.gru_path(dev, T, N, H, dtype, False)
        step_us = rows[(dtype, tf32, "per-step", N, H)]
        where = (dtype, tf32, N, H)
        if not kernel:  # no plan fits: the per-step path, as measured
            assert not taken, where
            continue
        assert 0.5 * step_us <= per_step_us / T <= 1.3 * step_us, (where, per_step_us / T, step_us)
        old_declined = (dtype, tf32, N, H) == ("fp32", "off", 256, 128)
        if where in TF32_PLANS_SINCE_H200:  # measured on the FMA kernel: predicted no slower
            assert kernel == "tc" and taken and persistent_us / T <= auto_us, where
        elif not old_declined:
            assert abs(persistent_us / T - auto_us) <= 0.35 * auto_us, \
                (where, persistent_us / T, auto_us)
            if abs(auto_us - step_us) > 0.15 * min(auto_us, step_us):
                assert taken == (auto_us < step_us), (where, auto_us, step_us, taken)
        checked += 1
    assert checked >= 25
    # Strict fp32 at N >= 16, H <= 256: the FMA kernel's chunks of 8 rows cost ~8.8 us a step
    # each, so it is declined (measured: 20-75 us a step against the per-step path's 21-33).
    torch.backends.cudnn.rnn.fp32_precision = "ieee"
    assert emu.gru_path(dev, T, 64, 256, "fp32", False)[0::3] == ("fma", False)
    assert emu.gru_path(dev, T, 1, 256, "fp32", False)[0::3] == ("fma", True)
    monkeypatch.setenv("FUSEDGRU_PERSISTENT", "1")
    assert emu.gru_path(dev, T, 64, 256, "fp32", False)[3]
    monkeypatch.setenv("FUSEDGRU_PERSISTENT", "0")
    assert not emu.gru_path(dev, T, 1, 256, "fp32", False)[3]
    assert emu.gru_path(dev, T, 1, 1024, "bf16", False)[0::3] == ("tc", False)


def test_the_cost_model_for_both_directions_in_one_launch(emu, restore_rnn_precision,
                                                        monkeypatch):
    """Planner only (132-SM device, T = 256): both directions of a bidirectional layer share one
    launch wherever 2 x the blocks of a plan are co-resident, at H <= 512, where a step is bound
    by the barrier and L2 latency, not by the SMs: predicted at most 0.7 x the time of a launch
    per direction (NOTES.md: 0.5 x at H <= 256). At H = 1024 (128 blocks per direction) no
    joint forward plan fits; the backward's takes 16 units per block. Strict fp32 at N = 32,
    H = 256 is declined for one direction (its four batch chunks cost more than the per-step
    path) but taken for two: one barrier per step then serves both."""
    monkeypatch.delenv("FUSEDGRU_PERSISTENT", raising=False)
    dev = emu.devices()["h100_132"]
    torch.backends.cudnn.rnn.fp32_precision = "tf32"
    T = 256
    for dtype in ("bf16", "fp32"):
        for N in (1, 16, 64):
            for H in (128, 256, 512):
                kernel, both_us, _, taken = emu.gru_path(dev, T, N, H, dtype, False, 2)
                alone_kernel, alone_us, _, alone_taken = emu.gru_path(dev, T, N, H, dtype, False)
                assert kernel == alone_kernel == "tc" and taken and alone_taken, (dtype, N, H)
                assert both_us <= 0.7 * 2 * alone_us, (dtype, N, H, both_us, alone_us)
        assert emu.gru_path(dev, T, 16, 1024, dtype, False, 2)[0::3] == ("", False)
        assert emu.gru_path(dev, T, 16, 1024, dtype, False)[0] != ""
    # NOTES.md: bf16 N = 16, H = 256: ~5.0 us per step for both directions, as for one.
    _, both_us, _, _ = emu.gru_path(dev, T, 16, 256, "bf16", False, 2)
    assert 4.5 < both_us / T < 5.5
    # The backward likewise (NOTES.md: bf16 N = 16, H = 256 ~2.3 us per step for both), and at
    # H = 1024 too: its joint plan takes 16 units per block (2 x 64 blocks).
    for H in (256, 1024):
        kernel, both_us, _, taken = emu.gru_path(dev, T, 16, H, "bf16", True, 2)
        assert (kernel, taken) == ("tc", True), H
        assert both_us <= 0.6 * 2 * emu.gru_path(dev, T, 16, H, "bf16", True)[1], H
    assert 4.5 < emu.gru_path(dev, T, 16, 256, "bf16", True, 2)[1] / T < 5.6
    torch.backends.cudnn.rnn.fp32_precision = "ieee"
    assert emu.gru_path(dev, T, 32, 256, "fp32", False)[0::3] == ("fma", False)
    assert emu.gru_path(dev, T, 32, 256, "fp32", False, 2)[0::3] == ("fma", True)
    monkeypatch.setenv("FUSEDGRU_PERSISTENT", "0")
    assert emu.gru_path(dev, T, 32, 256, "fp32", False, 2)[0::3] == ("fma", False)


# (dtype, device, N, H) -> (J, NT, KS, KTW) of its plan.
TC_COVERAGE = {
    ("bf16", "h100", 1, 1): (8, 1, 1, 1),      # one block, mostly padding rows
    ("bf16", "sms8", 9, 100): (8, 2, 4, 2),    # k split 4 ways
    ("bf16", "h100", 17, 17): (8, 4, 2, 1),    # 32-row batch chunks
    ("bf16", "sms8", 1, 256): (16, 1, 2, 8),   # 16 units: row tiles exactly one gate each
    ("fp16", "h100", 9, 100): (16, 2, 2, 4),
    ("fp16", "h100", 1, 130): (32, 1, 1, 9),   # 32 units, 9 k-tiles in registers
    ("fp32", "sms8", 17, 100): (8, 4, 4, 4),   # TF32
    ("fp32", "sms1", 9, 17): (16, 2, 2, 2),
    ("fp32", "sms1", 1, 64): (32, 1, 1, 8),
    ("fp32", "sms8", 3, 250): (32, 1, 2, 16),  # TF32 beyond 12 k-tiles: 16 in registers
}


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype, device, N, H", TC_COVERAGE,
                         ids=[f"{t}-{d}-N{n}-H{h}" for t, d, n, h in TC_COVERAGE])
def test_tensor_core_kernel_for_every_plan_shape(emu, restore_rnn_precision, dtype, device, N, H,
                                                 reverse):
    """Forward, then the tensor-core backward on what it saved; lengths 0 and T among the rows;
    against the float64 reference, within twice the error of the same layer in torch ops in
    the dtype (bf16, fp16) or of the per-step path's TF32 GEMMs (fp32; gradients: the per-step
    path's in the same precision)."""
    from test_cuda_emu import TC_DTYPES, TC_ULP, low_precision_bound
    torch.backends.cudnn.rnn.fp32_precision = "tf32"
    T, C = 3, 5
    dev = emu.devices()[device]
    J, _, KS, KTW, NT = emu.gru_tc_plan(dev, T, N, H, dtype)[:5]
    assert (J, NT, KS, KTW) == TC_COVERAGE[(dtype, device, N, H)]
    lengths = torch.randint(0, T + 1, (N,))
    lengths[0] = T
    if N > 1:
        lengths[-1] = 0
    args64 = gru_args(T, N, C, H, torch.float64, lengths)
    low = TC_DTYPES[dtype]
    args = [a.to(low) if a.is_floating_point() else a for a in args64]
    out = emu.gru_forward_on(dev, *args, reverse, True)
    ref = reference.gru_layer(*args64, reverse)
    peer = emu.gru_forward_per_step(*args, reverse, True) if dtype == "fp32" else \
        reference.gru_layer(*args, reverse)
    for name, o, p, r in zip(("output", "h_n", "workspace"), out, peer, ref):
        assert low_precision_bound(o, p, r, TC_ULP[dtype]), (name, rel_err(o, r), rel_err(p, r))
    if N > 1:  # a length of 0: zero outputs, h_n = hx
        assert (out[0][:, N - 1] == 0).all() and torch.equal(out[1][N - 1], args[1][N - 1])
    # The backward on tensor cores too, against the per-step path's in the same precision.
    assert emu.gru_tc_backward_plan(dev, T, N, H, dtype)[0] > 0
    go64, gh64 = torch.randn_like(ref[0]), torch.randn_like(ref[1])
    x, hx, w_ih, w_hh = args[:4]
    bwd = (go64.to(low), gh64.to(low), None, x, hx, w_ih, w_hh, lengths)
    grads = emu.gru_backward_on(dev, *bwd, out[0], out[2], reverse, True, True, True)
    peer_fwd = emu.gru_forward_per_step(*args, reverse, True)
    peer_grads = emu.gru_backward_per_step(*bwd, peer_fwd[0], peer_fwd[2], reverse, True, True,
                                           True)
    grads_r = reference.gru_layer_backward(go64, gh64, None, *args64[:4], lengths, ref[0], ref[2],
                                           reverse, True)
    for i, (o, p, r) in enumerate(zip(grads, peer_grads, grads_r)):
        assert low_precision_bound(o, p, r, TC_ULP[dtype]), (i, rel_err(o, r), rel_err(p, r))
