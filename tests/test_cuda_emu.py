"""The CUDA kernels and their launch code, run on the CPU under the host emulator of
tests/cuda_emu (no GPU needed): tiling, halos, 16-byte vector paths, shared-memory padding,
barriers, warp shuffles, the partial-sum reductions and every fallback, checked against the
pure-PyTorch references. The same kernels run for real in the cuda-marked tests on a GPU.

The emulator runs one block at a time with one std::thread per CUDA thread, so sizes here are
small; shared memory is NaN-filled before each block, so a read of a slot nobody wrote shows."""

import os

import pytest
import torch
from gru_testing import rel_err
from torch.utils import cpp_extension

from fusedgru import reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACT = {None: 0, "silu": 1, "relu": 2}


@pytest.fixture(scope="session")
def emu():
    build = os.path.join(ROOT, "build", "cuda_emu")
    os.makedirs(build, exist_ok=True)
    return cpp_extension.load(
        "fusedgru_cuda_emu",
        [os.path.join(ROOT, "tests", "cuda_emu", "emu_ops.cpp"),
         os.path.join(ROOT, "csrc", "conv_common.cpp")],
        extra_include_paths=[os.path.join(ROOT, "csrc"), os.path.join(ROOT, "tests", "cuda_emu")],
        extra_cflags=["-O1"], build_directory=build)


def make_x(layout, N, C, L, dtype):
    if layout == "channels_last":
        return torch.randn(N, L, C, dtype=dtype).transpose(1, 2)
    if layout == "misaligned":  # time-contiguous rows that start off a 16-byte boundary
        return torch.randn(N, C, L + 1, dtype=dtype)[:, :, 1:]
    if layout == "strided":  # neither dim contiguous: the op copies
        return torch.randn(N, 2 * C, 2 * L, dtype=dtype)[:, ::2, ::2]
    return torch.randn(N, C, L, dtype=dtype)


def conv_case(emu, suffix, N, C, L, W, d, bias, act, init, layout, dtype, gy_layout=None):
    """Forward and backward under the emulator, in dtype, and the float64 reference."""
    x = make_x(layout, N, C, L, torch.float64)
    w = torch.randn(C, W, dtype=torch.float64) / W ** 0.5
    b = torch.randn(C, dtype=torch.float64) if bias else None
    S = (W - 1) * d
    s = torch.randn(N, C, S, dtype=torch.float64) if init else None
    gy = make_x(gy_layout or layout, N, C, L, torch.float64)
    low = [t.to(dtype) if t is not None else None for t in (x, w, b, s, gy)]
    y = getattr(emu, "causal_conv1d_fwd" + suffix)(*low[:4], d, ACT[act])
    grads = getattr(emu, "causal_conv1d_bwd" + suffix)(low[4], *low[:4], d, ACT[act])
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, w, b, s)]
    y_ref = reference.causal_conv1d(*leaves[:3], d, act, leaves[3])
    g_ref = torch.autograd.grad(y_ref, [t for t in leaves if t is not None], gy)
    return (y, *[g for g, t in zip(grads, (x, w, b, s)) if t is not None]), (y_ref, *g_ref)


# (N, C, L, W, d, layout): lengths around the tile sizes (NCL: 128 threads x 16 bytes; channel-
# last: 64 steps x 128 channels), partial channel blocks, widths across the register-window
# chunks, dilations, misaligned and strided inputs.
SHAPES = [
    (2, 3, 1, 1, 1, "ncl"),
    (2, 3, 17, 4, 1, "ncl"),
    (1, 2, 1000, 4, 1, "ncl"),
    (2, 2, 300, 7, 3, "ncl"),
    (1, 3, 130, 17, 1, "ncl"),
    (2, 2, 130, 64, 1, "ncl"),
    (1, 2, 64, 16, 8, "ncl"),
    (2, 3, 129, 3, 2, "misaligned"),
    (2, 3, 33, 4, 1, "strided"),
    (2, 5, 3, 4, 1, "channels_last"),
    (2, 136, 130, 4, 1, "channels_last"),
    (1, 130, 70, 33, 2, "channels_last"),
    (1, 16, 200, 2, 40, "channels_last"),
]
OPTIONS = [(True, "silu", True), (False, None, False), (True, "relu", False)]


@pytest.mark.parametrize("N, C, L, W, d, layout", SHAPES,
                         ids=[f"N{s[0]}-C{s[1]}-L{s[2]}-W{s[3]}-d{s[4]}-{s[5]}" for s in SHAPES])
@pytest.mark.parametrize("bias, act, init", OPTIONS, ids=["bias-silu-init", "plain", "bias-relu"])
def test_conv_kernels_float64(emu, N, C, L, W, d, layout, bias, act, init):
    ours, ref = conv_case(emu, "", N, C, L, W, d, bias, act, init, layout, torch.float64)
    for i, (o, r) in enumerate(zip(ours, ref)):
        assert o.shape == r.shape and o.dtype == torch.float64
        assert rel_err(o, r) <= 1e-12, f"output {i}: {rel_err(o, r)}"
    if layout == "channels_last":
        assert ours[0].transpose(1, 2).is_contiguous() and ours[1].transpose(1, 2).is_contiguous()


# Histories too long for a tile in 48 KB of shared memory: the direct kernels.
FALLBACK = [(2, 3, 50, 3, 5000, "ncl"), (1, 5, 40, 2, 400, "channels_last"),
            (2, 3, 20, 64, 200, "ncl")]


@pytest.mark.parametrize("N, C, L, W, d, layout", FALLBACK,
                         ids=[f"W{s[3]}-d{s[4]}-{s[5]}" for s in FALLBACK])
@pytest.mark.parametrize("bias, act, init", OPTIONS, ids=["bias-silu-init", "plain", "bias-relu"])
def test_conv_direct_kernels(emu, N, C, L, W, d, layout, bias, act, init):
    ours, ref = conv_case(emu, "_small_smem", N, C, L, W, d, bias, act, init, layout,
                          torch.float64)
    for i, (o, r) in enumerate(zip(ours, ref)):
        assert rel_err(o, r) <= 1e-12, f"output {i}: {rel_err(o, r)}"


@pytest.mark.parametrize("gy_layout", ["ncl", "channels_last", "strided"])
@pytest.mark.parametrize("layout", ["ncl", "channels_last"])
def test_conv_backward_takes_grad_in_any_layout(emu, layout, gy_layout):
    ours, ref = conv_case(emu, "", 2, 24, 100, 4, 1, True, "silu", True, layout, torch.float64,
                          gy_layout)
    for i, (o, r) in enumerate(zip(ours, ref)):
        assert rel_err(o, r) <= 1e-12, f"output {i}: {rel_err(o, r)}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("layout", ["ncl", "channels_last"])
def test_conv_kernels_low_precision(emu, dtype, layout):
    """16-byte vectors of 4 or 8 elements; error within twice the torch-op reference's own."""
    C = 136 if layout == "channels_last" else 12  # channel-last: two channel blocks
    x = make_x(layout, 2, C, 200, torch.float64)
    w, b = torch.randn(C, 4, dtype=torch.float64), torch.randn(C, dtype=torch.float64)
    s, gy = torch.randn(2, C, 3, dtype=torch.float64), torch.randn(2, C, 200, dtype=torch.float64)
    lows = [t.to(dtype) for t in (x, w, b, s, gy)]
    y = emu.causal_conv1d_fwd(*lows[:4], 1, ACT["silu"])
    ours = (y, *emu.causal_conv1d_bwd(lows[4], *lows[:4], 1, ACT["silu"]))
    results = []
    for dt in (torch.float64, dtype):
        leaves = [t.to(dt).requires_grad_() for t in (x, w, b, s)]
        y_r = reference.causal_conv1d(*leaves[:3], 1, "silu", leaves[3])
        results.append((y_r, *torch.autograd.grad(y_r, leaves, gy.to(dt))))
    ref, torch_low = results
    for i, (o, r, t) in enumerate(zip(ours, ref, torch_low)):
        assert o.dtype == dtype and o.shape == r.shape
        assert rel_err(o, r) <= 2 * rel_err(t, r) + 1e-6, f"output {i}"


@pytest.mark.parametrize("W, d", [(1, 1), (4, 1), (3, 4)])
def test_conv_update_kernel_streams_like_full(emu, W, d):
    N, C, L = 2, 5, 12
    x = torch.randn(N, C, L, dtype=torch.float64)
    w, b = torch.randn(C, W, dtype=torch.float64), torch.randn(C, dtype=torch.float64)
    s0 = torch.randn(N, C, (W - 1) * d, dtype=torch.float64)
    y_full = reference.causal_conv1d(x, w, b, d, "silu", s0)
    state = torch.randn(N, 2 * C, (W - 1) * d, dtype=torch.float64)[:, ::2]
    state.copy_(s0)
    ys = [emu.causal_conv1d_update(x[:, :, t], state, w, b, d, ACT["silu"]) for t in range(L)]
    assert torch.allclose(torch.stack(ys, 2), y_full, rtol=0, atol=1e-12)
    full = torch.cat([s0, x], 2)
    assert torch.equal(state, full[:, :, full.shape[2] - state.shape[2]:])


def test_conv_bad_input_is_refused_before_launch(emu):
    x = torch.randn(2, 3, 10)
    with pytest.raises(RuntimeError, match="weight has 4 channels but x has 3"):
        emu.causal_conv1d_fwd(x, torch.randn(4, 2), None, None, 1, 0)
    with pytest.raises(ValueError, match="dilation must be >= 1"):
        emu.causal_conv1d_fwd(x, torch.randn(3, 2), None, None, 0, 0)
