"""The CUDA kernels and their launch code, run on the CPU under the host emulator of
tests/cuda_emu (no GPU needed): tiling, halos, 16-byte vector paths, shared-memory padding,
barriers, warp shuffles, the partial-sum reductions and every fallback, checked against the
pure-PyTorch references. The same kernels run for real in the cuda-marked tests on a GPU.

The emulator runs one std::thread per CUDA thread (two blocks at a time, in a seeded random
order), so sizes here are small; shared memory and every tensor an op allocates are NaN-filled,
so a read of a slot nobody wrote shows; tests/test_cuda_emu_checks.py proves its checks."""

import os
import zlib

import pytest
import torch
from cuda_emu import emu_build
from gru_testing import SEED, rel_err

from fusedgru import reference

ACT = {None: 0, "silu": 1, "relu": 2}


# The emulated kernels are built by tests/cuda_emu/emu_build.py: FUSEDGRU_EMU_ASAN=1 builds them
# with AddressSanitizer, so any out-of-bounds access to a tensor or to shared memory aborts with
# a report (make test-emu-asan); FUSEDGRU_EMU_TSAN=1 with ThreadSanitizer, so a missing barrier
# is a data race (make test-emu-tsan).
@pytest.fixture(scope="session")
def emu():
    return emu_build.load_emulator()


@pytest.fixture(autouse=True)
def _block_order(emu, request):
    """Each test's launches take their blocks in an order drawn from FUSEDGRU_TEST_SEED and the
    test's id (cuda_emu.h), so a failure replays from the seed in the report header."""
    emu.seed_block_order(SEED, zlib.crc32(request.node.nodeid.encode()))


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
# chunks (NCL) and the register kernels for W <= 4 at d = 1 (channel-last), dilations,
# misaligned and strided inputs.
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
    (1, 9, 70, 1, 1, "channels_last"),
    (2, 8, 65, 2, 1, "channels_last"),
    (1, 24, 129, 3, 1, "channels_last"),
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


# ---------------------------------------------------------------------------------------------
# GRU: the per-step pointwise kernels (with cuBLAS replaced by ATen on the CPU), the single-
# launch cell kernel, and the layer-normalized GRU's block-per-row kernels.

def gate_gradient(layer, x, w_ih, b_ih, rest, go, gh):
    """dL/d(x W_ih^T + b_ih), [T, N, 3H], by the reference: `layer` (reference.gru_layer or
    ln_gru_layer, called as layer(input, hx, weight_ih, *rest)) run on the input projection
    itself with weight_ih = I and no input bias, differentiated by autograd."""
    T, N, C = x.shape
    G = w_ih.shape[0]
    gi = x.reshape(T * N, C) @ w_ih.t()
    gi = (gi if b_ih is None else gi + b_ih).reshape(T, N, G).detach().requires_grad_()
    out, h = layer(gi, rest[0], torch.eye(G, dtype=x.dtype), *rest[1:])[:2]
    return torch.autograd.grad((out * go).sum() + (h * gh).sum(), gi)[0]


def grad_error(o, r, name, x, w_ih, d_gi):
    """The error of a gradient relative to the size of what it is made of. The input and W_ih
    gradients are GEMMs over the gate gradient d_gi (d_gi W_ih and d_gi^T x), whose entries can
    cancel far below their terms: a layer norm over the projection of a single input feature is
    scale-invariant, so that feature's gradient is eps-sized while each term is O(1). Their
    error is measured against ||d_gi|| ||W_ih|| and ||d_gi|| ||x|| (the norms that bound a
    GEMM's rounding error); every other gradient against its own norm. (A fixed relative bound
    on them failed on ill-conditioned draws: 3.7e-10 against 1e-10, and 1.8e-7 over 300 seeds.)"""
    scale = {"input": d_gi.norm() * w_ih.norm(), "weight_ih": d_gi.norm() * x.norm()}
    diff = (o.double() - r.double()).norm()
    return (diff / max(r.double().norm(), scale.get(name, 0.0), 1e-30)).item()


def assert_gru_backward_matches(emu, path, args, ref_lengths, fwd, ref, reverse, bias=True,
                                with_grad_ws=False, tol=1e-12):
    """The emulated backward of the forward fwd = (out, h, ws) against
    reference.gru_layer_backward on the same random upstream gradients, every gradient within tol
    (grad_error: relative, or against the gradient's conditioning where it cancels). ref = the
    reference forward (out_r, h_r, ws_r); ref_lengths the lengths it ran with."""
    x, hx, w_ih, w_hh, b_ih, b_hh, lengths = args
    (out, _, ws), (out_r, h_r, ws_r) = fwd, ref
    go, gh = torch.randn_like(out_r), torch.randn_like(h_r)
    gws = torch.randn_like(ws_r) if with_grad_ws else None
    grads = getattr(emu, "gru_backward" + path)(go, gh, gws, x, hx, w_ih, w_hh, lengths, out, ws,
                                                reverse, bias, True, True)
    grads_r = reference.gru_layer_backward(go, gh, gws, x, hx, w_ih, w_hh, ref_lengths, out_r,
                                           ws_r, reverse, bias)
    d_gi = gate_gradient(reference.gru_layer, x, w_ih, b_ih,
                         (hx, w_hh, None, b_hh, ref_lengths, reverse), go, gh) \
        if not with_grad_ws else grads_r[0].new_zeros(0)
    for name, o, r in zip(GRAD_NAMES, grads, grads_r):
        if r is None:
            continue
        err = grad_error(o, r, name, x, w_ih, d_gi)
        assert o.shape == r.shape and err <= tol, f"grad {name}: {err}"


GRAD_NAMES = ["input", "hx", "weight_ih", "weight_hh", "bias_ih", "bias_hh"]
LN_GRAD_NAMES = ["input", "hx", "weight_ih", "weight_hh", "ln_ih_weight", "ln_ih_bias",
                 "ln_hh_weight", "ln_hh_bias"]


def gru_case(T, N, C, H, dtype, batch_major, with_lengths, bias=True):
    x = torch.randn(N, T, C, dtype=dtype).transpose(0, 1) if batch_major else \
        torch.randn(T, N, C, dtype=dtype)
    hx = torch.randn(N, H, dtype=dtype)
    w_ih, w_hh = (torch.randn(3 * H, k, dtype=dtype) / k ** 0.5 for k in (C, H))
    b_ih, b_hh = (torch.randn(3 * H, dtype=dtype) if bias else None for _ in range(2))
    lengths = torch.randint(1, T + 1, (N,)) if with_lengths else None
    return x, hx, w_ih, w_hh, b_ih, b_hh, lengths


GRU_SHAPES = [(1, 1, 1, 1), (6, 3, 17, 130), (5, 33, 3, 17), (4, 10, 7, 100)]


# Shapes and variants (direction, layout, lengths, bias) the GRU kernel tests run over.
GRU_SHAPE_CASES = pytest.mark.parametrize(
    "T, N, C, H", GRU_SHAPES, ids=[f"T{s[0]}-N{s[1]}-C{s[2]}-H{s[3]}" for s in GRU_SHAPES])
GRU_VARIANTS = pytest.mark.parametrize(
    "reverse, batch_major, with_lengths, bias",
    [(False, False, False, True), (True, True, True, True), (False, True, True, False)],
    ids=["fwd", "rev-batchmajor-lengths", "batchmajor-lengths-nobias"])


def test_gru_persistent_plan(emu):
    """On the emulated device (4 co-resident blocks): which shapes the persistent kernel takes."""
    assert emu.gru_persistent_blocks(5, 3, 1, True) == 1
    assert emu.gru_persistent_blocks(5, 33, 17, True) == 3  # 8 units per block
    assert emu.gru_persistent_blocks(5, 10, 100, True) == 4  # 32 units per block, 13-wide slices
    assert emu.gru_persistent_blocks(5, 3, 130, True) == 0  # needs 5 blocks: per-step path
    assert emu.gru_persistent_blocks(5, 3, 120, False) == 4  # fp32: 15-wide slices
    assert emu.gru_persistent_blocks(0, 3, 17, True) == 0
    assert emu.gru_persistent_backward_blocks(5, 3, 1, True) == 1
    assert emu.gru_persistent_backward_blocks(5, 33, 17, True) == 3
    assert emu.gru_persistent_backward_blocks(5, 10, 100, True) == 4  # 38-wide slices of 3H
    assert emu.gru_persistent_backward_blocks(5, 3, 130, True) == 0


@pytest.mark.parametrize("path", ["", "_per_step"], ids=["persistent", "per_step"])
@GRU_SHAPE_CASES
@GRU_VARIANTS
@pytest.mark.parametrize("with_grad_ws", [False, True], ids=["", "grad_ws"])
def test_gru_kernels_float64(emu, path, T, N, C, H, reverse, batch_major, with_lengths, bias,
                             with_grad_ws):
    args = gru_case(T, N, C, H, torch.float64, batch_major, with_lengths, bias)
    out, h, ws = getattr(emu, "gru_forward" + path)(*args, reverse, True)
    out_r, h_r, ws_r = reference.gru_layer(*args, reverse)
    for name, o, r in (("output", out, out_r), ("h_n", h, h_r), ("workspace", ws, ws_r)):
        assert o.shape == r.shape and rel_err(o, r) <= 1e-12, name
    assert_gru_backward_matches(emu, path, args, args[6], (out, h, ws), (out_r, h_r, ws_r),
                                reverse, bias, with_grad_ws)


@pytest.mark.parametrize("forward", ["gru_forward", "gru_forward_per_step"],
                         ids=["persistent", "per_step"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gru_kernels_low_precision(emu, restore_tf32_flags, forward, dtype):
    """Strict fp32 GEMMs (the RNN flag off; the TF32 choice has its own tests below)."""
    torch.backends.cudnn.rnn.fp32_precision = "ieee"
    args64 = gru_case(9, 4, 24, 40, torch.float64, False, True)
    args = [a.to(dtype) if a is not None and a.is_floating_point() else a for a in args64]
    out, h, ws = getattr(emu, forward)(*args, False, True)
    ref = reference.gru_layer(*args64)
    low = reference.gru_layer(*args)
    for i, (o, r, t) in enumerate(zip((out, h), ref, low)):
        assert o.dtype == dtype
        assert rel_err(o, r) <= 2 * rel_err(t, r) + 1e-6, f"output {i}"


TC_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# One unit in the last place of each tensor-core format (TF32 keeps 10 mantissa bits, as fp16).
TC_ULP = {"bf16": 2.0 ** -7, "fp16": 2.0 ** -10, "fp32": 2.0 ** -10}


def low_precision_bound(ours, peer, ref, ulp):
    """err(ours, ref) <= 2 err(peer, ref) + eps, the project's rule for low precision, with
    eps = 8 ulp / sqrt(numel). On a tensor of one number (T = N = H = 1) which of two
    computations rounds closer is luck: over 300 draws the existing per-step path exceeded twice
    the torch reference's error by up to 3.9 ulp there (the gates amplify the rounding of the
    stored input projection), the tensor-core path by 3.0; over many numbers such noise averages
    out of the norm, and both stayed below 2 err(peer) by 0.4 ulp at T=5, N=33, H=17."""
    eps = 8 * ulp / ours.numel() ** 0.5
    return rel_err(ours, ref) <= 2 * rel_err(peer, ref) + eps


@pytest.mark.parametrize("dtype", TC_DTYPES, ids=str)
@GRU_SHAPE_CASES
@GRU_VARIANTS
def test_gru_tensor_core_forward(emu, restore_tf32_flags, dtype, T, N, C, H, reverse, batch_major,
                                 with_lengths, bias):
    """The tensor-core persistent forward (bf16, fp16; fp32 in TF32 as the RNN flag allows) and
    the backward run on what it saved, against the float64 reference: each output and gradient
    within twice the error of the same computation done the other way in the same precision
    (bf16/fp16: the torch-op reference in that dtype; TF32: the per-step path's TF32 GEMMs)."""
    torch.backends.cudnn.rnn.fp32_precision = "tf32"
    low = TC_DTYPES[dtype]
    # The 4-SM device, or 8 SMs where TF32's wider registers need more blocks (H = 130).
    dev = next(emu.devices()[d] for d in ("h100", "sms8")
               if emu.gru_tc_plan(emu.devices()[d], T, N, H, dtype)[0] > 0)
    args64 = gru_case(T, N, C, H, torch.float64, batch_major, with_lengths, bias)
    args = [a.to(low) if a is not None and a.is_floating_point() else a for a in args64]
    fwd = emu.gru_forward_on(dev, *args, reverse, True)
    ref = reference.gru_layer(*args64, reverse)
    peer = emu.gru_forward_per_step(*args, reverse, True) if dtype == "fp32" else \
        reference.gru_layer(*args, reverse)
    for name, o, p, r in zip(("output", "h_n", "workspace"), fwd, peer, ref):
        assert o.dtype == low and low_precision_bound(o, p, r, TC_ULP[dtype]), (
            name, rel_err(o, r), rel_err(p, r))
    x, hx, w_ih, w_hh, _, _, lengths = args
    go64, gh64 = torch.randn_like(ref[0]), torch.randn_like(ref[1])
    go, gh = go64.to(low), gh64.to(low)
    grads = emu.gru_backward_on(dev, go, gh, None, x, hx, w_ih, w_hh, lengths, fwd[0], fwd[2],
                                reverse, bias, True, True)
    peer_fwd = emu.gru_forward_per_step(*args, reverse, True)
    peer_grads = emu.gru_backward_per_step(go, gh, None, x, hx, w_ih, w_hh, lengths, peer_fwd[0],
                                           peer_fwd[2], reverse, bias, True, True)
    grads_r = reference.gru_layer_backward(go64, gh64, None, *args64[:4], args64[6], ref[0],
                                           ref[2], reverse, bias)
    for name, o, p, r in zip(GRAD_NAMES, grads, peer_grads, grads_r):
        if r is not None:
            assert low_precision_bound(o, p, r, TC_ULP[dtype]), (name, rel_err(o, r),
                                                                 rel_err(p, r))


@pytest.mark.parametrize("N", [1, 3, 32, 33], ids=lambda n: f"N{n}")
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gru_cell_kernel(emu, N, bias):
    """N <= 32: the warp-per-unit kernel (shuffle reductions); above: the per-step path."""
    import fusedgru  # noqa: F401  (registers the CPU ops)
    _, hx, w_ih, w_hh, b_ih, b_hh, _ = gru_case(1, N, 70, 45, torch.float64, False, False, bias)
    x = torch.randn(N, 2 * 70, dtype=torch.float64)[:, ::2]
    h = emu.gru_cell(x, hx, w_ih, w_hh, b_ih, b_hh)
    _, h_r, _ = reference.gru_layer(x[None], hx, w_ih, w_hh, b_ih, b_hh)
    assert h.shape == h_r.shape and rel_err(h, h_r) <= 1e-12
    assert torch.allclose(h, torch.ops.fusedgru.gru_cell(x, hx, w_ih, w_hh, b_ih, b_hh),
                          rtol=0, atol=1e-12)


@pytest.mark.parametrize("T, N, C, H", [(1, 1, 1, 1), (5, 3, 7, 130)],
                         ids=["T1-N1-C1-H1", "T5-N3-C7-H130"])
@pytest.mark.parametrize("reverse, batch_major, with_lengths", [(False, False, False),
                                                                (True, True, True)],
                         ids=["fwd", "rev-batchmajor-lengths"])
def test_ln_gru_kernels_match_the_cpu_op(emu, T, N, C, H, reverse, batch_major, with_lengths):
    """Same shared host code as the CPU op (verified against reference.ln_gru_layer): the
    forward's saved activations and every gradient must agree (both take the row variance in
    two passes; gradients measured by grad_error)."""
    import fusedgru  # noqa: F401
    x, hx, w_ih, w_hh, _, _, lengths = gru_case(T, N, C, H, torch.float64, batch_major,
                                                with_lengths)
    ln = [torch.randn(3 * H, dtype=torch.float64) for _ in range(4)]
    ours = emu.ln_gru_forward(x, hx, w_ih, w_hh, *ln, lengths, reverse, 1e-5, True)
    cpu = torch.ops.fusedgru.ln_gru_forward(x, hx, w_ih, w_hh, *ln, lengths, reverse, 1e-5, True)
    for name, o, r in zip(["output", "h_n", "workspace"], ours, cpu):
        assert o.shape == r.shape and rel_err(o, r) <= 1e-10, name
    out_r, h_r = reference.ln_gru_layer(x, hx, w_ih, w_hh, *ln, lengths, reverse)
    assert rel_err(ours[0], out_r) <= 1e-10 and rel_err(ours[1], h_r) <= 1e-10
    go, gh = torch.randn_like(ours[0]), torch.randn_like(ours[1])
    rest = (x, hx, w_ih, w_hh, ln[0], ln[2], ln[3], lengths)
    g = emu.ln_gru_backward(go, gh, *rest, *ours[0:1], ours[2], reverse, True, True)
    g_cpu = torch.ops.fusedgru.ln_gru_backward(go, gh, *rest, cpu[0], cpu[2], reverse, True, True)
    d_gi = gate_gradient(reference.ln_gru_layer, x, w_ih, None,
                         (hx, w_hh, *ln, lengths, reverse), go, gh)
    for name, o, r in zip(LN_GRAD_NAMES, g, g_cpu):
        err = grad_error(o, r, name, x, w_ih, d_gi)
        assert o.shape == r.shape and err <= 1e-10, f"grad {name}: {err}"


@pytest.mark.parametrize("path", ["", "_per_step"], ids=["persistent", "per_step"])
def test_gru_backward_without_weight_grads(emu, path):
    """No W_hh gradient asked: the kernels skip saving h_{t-1}; input and hx grads unchanged."""
    args = gru_case(5, 10, 7, 100, torch.float64, True, True)
    x, hx, w_ih, w_hh, _, _, lengths = args
    out, h, ws = reference.gru_layer(*args)
    go, gh = torch.randn_like(out), torch.randn_like(h)
    grads = getattr(emu, "gru_backward" + path)(go, gh, None, x, hx, w_ih, w_hh, lengths, out,
                                                ws, False, True, True, False)
    grads_r = reference.gru_layer_backward(go, gh, None, x, hx, w_ih, w_hh, lengths, out, ws,
                                           False, True)
    assert rel_err(grads[0], grads_r[0]) <= 1e-12 and rel_err(grads[1], grads_r[1]) <= 1e-12
    assert all(g.numel() == 0 for g in grads[2:])


# ---------------------------------------------------------------------------------------------
# Deterministic mode: the GEMMs run in our fixed-order kernel instead of cuBLAS.

@pytest.mark.parametrize("M, K, N", [(1, 1, 1), (130, 17, 65), (64, 64, 64), (3, 200, 129)],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("layout", ["rowmajor", "transposed", "strided"])
@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
def test_gemm_kernel(emu, M, K, N, layout, beta):
    def mat(r, c):
        if layout == "transposed":
            return torch.randn(c, r, dtype=torch.float64).t()
        if layout == "strided":
            return torch.randn(2 * r, 3 * c, dtype=torch.float64)[::2, ::3]
        return torch.randn(r, c, dtype=torch.float64)
    a, b, out = mat(M, K), mat(K, N), mat(M, N)
    expected = beta * out + a @ b
    emu.gemm(out, a, b, beta)
    assert rel_err(out, expected) <= 1e-13


@pytest.fixture
def deterministic():
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(prev)


@pytest.mark.parametrize("path", ["", "_per_step"], ids=["persistent", "per_step"])
def test_gru_kernels_in_deterministic_mode(emu, deterministic, monkeypatch, path):
    """cuBLAS would refuse (no CUBLAS_WORKSPACE_CONFIG): every GEMM runs in gemm_kernel."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    args = gru_case(5, 10, 7, 100, torch.float64, True, True)
    out, h, ws = getattr(emu, "gru_forward" + path)(*args, True, True)
    out_r, h_r, ws_r = reference.gru_layer(*args, True)
    assert rel_err(out, out_r) <= 1e-12 and rel_err(h, h_r) <= 1e-12
    assert_gru_backward_matches(emu, path, args, args[6], (out, h, ws), (out_r, h_r, ws_r), True)


def test_ln_gru_kernels_in_deterministic_mode(emu, deterministic, monkeypatch):
    import fusedgru  # noqa: F401
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    x, hx, w_ih, w_hh, _, _, lengths = gru_case(4, 3, 7, 33, torch.float64, False, True)
    ln = [torch.randn(3 * 33, dtype=torch.float64) for _ in range(4)]
    ours = emu.ln_gru_forward(x, hx, w_ih, w_hh, *ln, lengths, False, 1e-5, True)
    out_r, h_r = reference.ln_gru_layer(x, hx, w_ih, w_hh, *ln, lengths, False)
    assert rel_err(ours[0], out_r) <= 1e-10 and rel_err(ours[1], h_r) <= 1e-10


# ---------------------------------------------------------------------------------------------
# What a GPU user would hit first: the TF32 choice under legacy and new precision flags, lengths
# outside [0, T], the shared-memory opt-in and the deterministic-mode decision. The launcher
# under test is StreamLauncher itself, over the emulated CUDA runtime (tests/cuda_emu/
# emu_runtime.h), which enforces a GPU's launch rules.

def _read_flags():
    """Every TF32-related flag as the user would read it back (a read that raises, as the legacy
    getters do on mixed settings, reads as its error message)."""
    b = torch.backends
    reads = {
        "cudnn.rnn": lambda: b.cudnn.rnn.fp32_precision,
        "cudnn.conv": lambda: b.cudnn.conv.fp32_precision,
        "cudnn": lambda: b.cudnn.fp32_precision,
        "cuda.matmul": lambda: b.cuda.matmul.fp32_precision,
        "generic": lambda: b.fp32_precision,
        "matmul_precision": torch.get_float32_matmul_precision,
        "cudnn.allow_tf32": lambda: b.cudnn.allow_tf32,
        "cuda.matmul.allow_tf32": lambda: b.cuda.matmul.allow_tf32,
    }
    out = {}
    for name, read in reads.items():
        try:
            out[name] = read()
        except RuntimeError as e:
            out[name] = f"raises: {str(e)[:60]}"
    return out


@pytest.fixture
def restore_tf32_flags():
    b = torch.backends
    saved = (b.cudnn.rnn.fp32_precision, b.cudnn.conv.fp32_precision,
             b.cuda.matmul.fp32_precision, torch.get_float32_matmul_precision())
    yield
    b.cudnn.rnn.fp32_precision, b.cudnn.conv.fp32_precision = saved[0], saved[1]
    torch.set_float32_matmul_precision(saved[3])
    b.cuda.matmul.fp32_precision = saved[2]


def _set_tf32(new_api, legacy, how):
    """how: "new-tf32" / "new-ieee" through new_api.fp32_precision, "legacy-on" / "legacy-off"
    through legacy.allow_tf32, else torch.set_float32_matmul_precision(how) (matmul only)."""
    if how.startswith("new-"):
        new_api.fp32_precision = how.removeprefix("new-")
    elif how.startswith("legacy-"):
        legacy.allow_tf32 = how == "legacy-on"
    else:
        torch.set_float32_matmul_precision(how)


RNN_FLAGS = ["new-tf32", "new-ieee", "legacy-on", "legacy-off"]
MATMUL_FLAGS = ["new-tf32", "new-ieee", "legacy-on", "legacy-off", "high", "highest"]


@pytest.mark.parametrize("matmul", MATMUL_FLAGS)
@pytest.mark.parametrize("rnn", RNN_FLAGS)
def test_tf32_follows_the_rnn_flag_like_nn_gru(emu, restore_tf32_flags, rnn, matmul):
    """nn.GRU on CUDA takes TF32 iff the cuDNN RNN precision is tf32; so do the GRU ops, in
    every mix of legacy and new flags (the legacy getters raise on some), for the whole call,
    and no flag anywhere reads differently during or after the call."""
    b = torch.backends
    _set_tf32(b.cuda.matmul, b.cuda.matmul, matmul)
    _set_tf32(b.cudnn.rnn, b.cudnn, rnn)
    expect_tf32 = torch.backends.cudnn.rnn.fp32_precision == "tf32"
    assert emu.rnn_allows_tf32() == expect_tf32
    before = _read_flags()
    args64 = gru_case(6, 5, 24, 40, torch.float64, True, True)
    args = [a.float() if a is not None and a.is_floating_point() else a for a in args64]
    tf32_calls = emu.gemm_calls("tf32")
    emu.snapshot_flags(True)  # every emulated cuBLAS call checks the flags still read so
    try:
        out, h, ws = emu.gru_forward_per_step(*args, False, True)
        go, gh = torch.randn_like(out), torch.randn_like(h)
        x, hx, w_ih, w_hh, _, _, lengths = args
        emu.gru_backward_per_step(go, gh, None, x, hx, w_ih, w_hh, lengths, out, ws, False,
                                  True, True, True)
    finally:
        emu.snapshot_flags(False)
    calls = emu.gemm_calls("tf32") - tf32_calls
    assert _read_flags() == before
    # Forward: input projection + T recurrent GEMMs; backward: T recurrent GEMMs, then the
    # all-steps ones (gru_backward_gemms): grad_input in 2 parts, W_ih in 2, W_hh in 1.
    assert calls == (1 + 6 + 6 + 5 if expect_tf32 else 0)
    out_r = reference.gru_layer(*args64)[0]
    err = rel_err(out, out_r)
    # TF32 keeps 10 mantissa bits (~5e-4 relative per operand), strict fp32 23.
    assert (1e-5 < err < 1e-2) if expect_tf32 else err < 1e-5, err


def test_tf32_gemm_arguments_for_every_layout(emu, restore_tf32_flags):
    """The cuBLAS arguments of the TF32 GEMMs (column-major terms, transposes, leading dims)
    for row-major, column-major, sliced and non-unit-stride operands and outputs: checked by
    the emulated cublasGemmEx's own argument rules, then against torch.mm on TF32-rounded
    operands (emu.tf32_matmul runs matmul.cuh's mapping)."""
    torch.backends.cudnn.rnn.fp32_precision = "tf32"

    def tf32(t):
        return (t.view(torch.int32).add(0xFFF).add((t.view(torch.int32) >> 13) & 1)
                & ~0x1FFF).view(torch.float32)

    def mat(r, c, layout):
        if layout == "row":
            return torch.randn(r, c)
        if layout == "col":
            return torch.randn(c, r).t()
        if layout == "sliced":
            return torch.randn(r + 2, c + 3)[1:r + 1, 2:c + 2]
        return torch.randn(2 * r, 2 * c)[::2, ::2]  # no unit stride: copied first

    for M, K, N in [(1, 1, 1), (7, 5, 3), (1, 9, 4), (6, 1, 2), (33, 17, 1)]:
        for la in ("row", "col", "sliced", "strided"):
            for lb in ("row", "col", "strided"):
                for lo in ("row", "col", "strided"):
                    a, b, out = mat(M, K, la), mat(K, N, lb), mat(M, N, lo)
                    for beta in (0.0, 0.5):
                        expected = beta * out + tf32(a.contiguous()) @ tf32(b.contiguous())
                        ours = out.clone() if lo != "strided" else out
                        emu.tf32_matmul(ours, a, b, beta)
                        assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-5), \
                            (M, K, N, la, lb, lo, beta)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=["tensor_cores", "fma"])
def test_a_refused_cooperative_launch_takes_the_per_step_path(emu, dtype):
    """A device may refuse a cooperative grid its occupancy query said fits (under MPS, or in a
    green context with fewer SMs): the forward and backward then run the per-step path, with
    its results to the bit, and raise nothing."""
    args = gru_case(5, 3, 7, 17, dtype, False, True)
    x, hx, w_ih, w_hh, _, _, lengths = args
    want = emu.gru_forward_per_step(*args, False, True)
    emu.refuse_cooperative_launches(1)
    got = emu.gru_forward(*args, False, True)
    assert emu.refuse_cooperative_launches(0) == 0, "the launch was not refused"
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    go, gh = torch.randn_like(want[0]), torch.randn_like(want[1])
    bwd = (go, gh, None, x, hx, w_ih, w_hh, lengths, want[0], want[2], False, True, True, True)
    want_grads = emu.gru_backward_per_step(*bwd)
    emu.refuse_cooperative_launches(1)
    got_grads = emu.gru_backward(*bwd)
    assert emu.refuse_cooperative_launches(0) == 0, "the launch was not refused"
    assert all(torch.equal(g, w) for g, w in zip(got_grads, want_grads))


def bidirectional_case(T, N, C, H, dtype, batch_major, with_lengths, bias):
    """gru_case's arguments for both directions: (input, hx [2, N, H], forward weights,
    reverse weights, lengths)."""
    x, hx, *fwd, lengths = gru_case(T, N, C, H, dtype, batch_major, with_lengths, bias)
    _, hx_r, *rev, _ = gru_case(T, N, C, H, dtype, batch_major, False, bias)
    return x, torch.stack([hx, hx_r]), fwd, rev, lengths


def one_direction_each(forward, x, hx, fwd, rev, lengths):
    """The bidirectional op's results from two one-direction calls of `forward`."""
    out0, h0, ws0 = forward(x, hx[0], *fwd, lengths, False, True)
    out1, h1, ws1 = forward(x, hx[1], *rev, lengths, True, True)
    return torch.cat([out0, out1], 2), torch.stack([h0, h1]), ws0, ws1


# (T, N, C, H, dtype): the FMA kernel (fp64), the tensor-core kernel (bf16; fp32 in TF32).
BIDIRECTIONAL_CASES = [(6, 3, 17, 23, torch.float64), (5, 33, 3, 17, torch.float64),
                       (5, 3, 7, 17, torch.bfloat16), (4, 10, 7, 30, torch.float32)]


@pytest.mark.parametrize("T, N, C, H, dtype", BIDIRECTIONAL_CASES,
                         ids=[f"T{c[0]}-N{c[1]}-C{c[2]}-H{c[3]}-{c[4]}".replace("torch.", "")
                              for c in BIDIRECTIONAL_CASES])
@pytest.mark.parametrize("batch_major, with_lengths, bias",
                         [(False, False, True), (True, True, True), (False, True, False)],
                         ids=["plain", "batchmajor-lengths", "lengths-nobias"])
def test_both_directions_share_one_persistent_launch(emu, monkeypatch, restore_tf32_flags, T, N,
                                                     C, H, dtype, batch_major, with_lengths,
                                                     bias):
    """gru_forward_bidirectional: blocks [0, B) run the forward direction and [B, 2 B) the
    reverse, in ONE cooperative launch of 2 B blocks (8-SM device), each writing its half of the
    [T, N, 2H] output in the input's layout. Each half is the bitwise result of that direction
    launched alone with the same plan (on the 4-SM device). gru_backward_bidirectional likewise:
    one launch, each direction's gradients gru_backward's alone to the bit (the input gradient
    their sum), within 1e-12 of the float64 reference. If the device refuses a joint launch,
    each direction runs alone; on the per-step path the results are the one-direction ops'."""
    monkeypatch.setenv("FUSEDGRU_PERSISTENT", "1")
    torch.backends.cudnn.rnn.fp32_precision = "tf32"
    dev = emu.devices()["sms8"]
    x, hx, fwd, rev, lengths = bidirectional_case(T, N, C, H, dtype, batch_major, with_lengths,
                                                  bias)
    emu.cooperative_grids()
    got = emu.gru_forward_bidirectional_on(dev, x, hx, *fwd, *rev, lengths, True)
    grids = emu.cooperative_grids()
    kernel = emu.gru_path(dev, T, N, H, {torch.float64: "fp64", torch.bfloat16: "bf16",
                                         torch.float32: "fp32"}[dtype], False, 2)[0]
    assert kernel in ("tc", "fma") and len(grids) == 1 and grids[0] % 2 == 0, (kernel, grids)
    # Alone, each direction on the 4-SM device: half the co-resident blocks, hence the plan of
    # half of the joint grid.
    half_device = emu.devices()["h100"]
    want = one_direction_each(lambda *a: emu.gru_forward_on(half_device, *a), x, hx, fwd, rev,
                              lengths)
    singles = emu.cooperative_grids()
    assert singles == [grids[0] // 2] * 2, "the joint launch used another plan than one direction"
    out = got[0]
    assert out.shape == (T, N, 2 * H) and out.transpose(0, 1).is_contiguous() == batch_major
    for name, g, w in zip(("output", "h_n", "workspace", "workspace_reverse"), got, want):
        assert torch.equal(g, w), name

    emu.refuse_cooperative_launches(1)  # the joint launch is refused: one direction at a time
    again = emu.gru_forward_bidirectional_on(half_device, x, hx, *fwd, *rev, lengths, True)
    assert emu.refuse_cooperative_launches(0) == 0 and emu.cooperative_grids() == singles
    assert all(torch.equal(g, w) for g, w in zip(again, want))

    per_step = emu.gru_forward_bidirectional_per_step(x, hx, *fwd, *rev, lengths, True)
    per_step_want = one_direction_each(emu.gru_forward_per_step, x, hx, fwd, rev, lengths)
    assert all(torch.equal(g, w) for g, w in zip(per_step, per_step_want))

    if dtype == torch.float64:
        ref = reference.gru_layer(x, hx[0], *fwd, lengths, False)
        ref_r = reference.gru_layer(x, hx[1], *rev, lengths, True)
        assert rel_err(out, torch.cat([ref[0], ref_r[0]], 2)) <= 1e-12

    # The backward: one launch for both directions too, each direction's gradients those of
    # gru_backward alone (same plan) to the bit; the input gradient their sum.
    go, gh = torch.randn_like(out), torch.randn_like(got[1])
    bwd = (go, gh, None, None, x, hx, *fwd[:2], *rev[:2], lengths, out, got[2], got[3], bias,
           True, True)
    grads = emu.gru_backward_bidirectional_on(dev, *bwd)
    grids = emu.cooperative_grids()
    assert len(grids) == 1 and grids[0] % 2 == 0, grids

    def alone(backward):
        return [backward(go[..., d * H:(d + 1) * H], gh[d], None, x, hx[d], *w[:2], lengths,
                         out[..., d * H:(d + 1) * H], got[2 + d], d == 1, bias, True, True)
                for d, w in enumerate((fwd, rev))]

    def side_by_side(g0, g1):
        return [g0[0] + g1[0], torch.stack([g0[1], g1[1]]), *g0[2:], *g1[2:]]

    want = side_by_side(*alone(lambda *a: emu.gru_backward_on(half_device, *a)))
    assert emu.cooperative_grids() == [grids[0] // 2] * 2
    for i, (g, w) in enumerate(zip(grads, want)):
        assert torch.equal(g, w), i
    emu.refuse_cooperative_launches(1)
    again = emu.gru_backward_bidirectional_on(half_device, *bwd)
    assert emu.refuse_cooperative_launches(0) == 0 and len(emu.cooperative_grids()) == 2
    assert all(torch.equal(g, w) for g, w in zip(again, want))
    per_step = emu.gru_backward_bidirectional_per_step(*bwd)
    per_step_want = side_by_side(*alone(emu.gru_backward_per_step))
    assert all(torch.equal(g, w) for g, w in zip(per_step, per_step_want))
    if dtype == torch.float64:  # against the reference, on what the joint launch saved
        for d, (w, r) in enumerate(((fwd, ref), (rev, ref_r))):
            half = out[..., d * H:(d + 1) * H]
            args = (x, hx[d], *w, lengths)
            assert_gru_backward_matches(emu, "", args, lengths, (half, got[1][d], got[2 + d]), r,
                                        d == 1, bias, False)


@pytest.mark.parametrize("both", [True, False], ids=["both", "one-sided"])
def test_double_backward_of_both_directions(emu, monkeypatch, both):
    """The bidirectional backward given the saved activations' gradients (double backward; the
    FMA kernel's grad_workspace variant): for both directions, one launch of 2B blocks, each
    direction's gradients bitwise those of its backward alone; for one direction only, the two
    directions read different things, so each runs alone (two launches), same results."""
    monkeypatch.setenv("FUSEDGRU_PERSISTENT", "1")
    dev, half_device = emu.devices()["sms8"], emu.devices()["h100"]
    T, N, C, H = 5, 3, 7, 17
    x, hx, fwd, rev, lengths = bidirectional_case(T, N, C, H, torch.float64, False, True, True)
    out, h, ws, ws_r = emu.gru_forward_bidirectional_on(dev, x, hx, *fwd, *rev, lengths, True)
    go, gh = torch.randn_like(out), torch.randn_like(h)
    gws = [torch.randn_like(ws), torch.randn_like(ws_r) if both else None]
    emu.cooperative_grids()
    grads = emu.gru_backward_bidirectional_on(dev, go, gh, *gws, x, hx, *fwd[:2], *rev[:2],
                                              lengths, out, ws, ws_r, True, True, True)
    grids = emu.cooperative_grids()
    assert len(grids) == (1 if both else 2), grids
    alone = [emu.gru_backward_on(half_device if both else dev, go[..., d * H:(d + 1) * H], gh[d],
                                 gws[d], x, hx[d], *w[:2], lengths, out[..., d * H:(d + 1) * H],
                                 (ws, ws_r)[d], d == 1, True, True, True)
             for d, w in enumerate((fwd, rev))]
    assert emu.cooperative_grids() == ([grids[0] // 2] * 2 if both else grids)
    want = [alone[0][0] + alone[1][0], torch.stack([alone[0][1], alone[1][1]]), *alone[0][2:],
            *alone[1][2:]]
    for i, (g, w) in enumerate(zip(grads, want)):
        assert torch.equal(g, w), i


def test_the_cost_model_chooses_the_path_and_the_environment_overrides_it(emu, monkeypatch):
    """gru_cost.cuh: a persistent plan that fits runs only where the model predicts it faster
    than the per-step path (here strict fp32, N = 256, H = 64 on the 4-SM device: 32 chunks of
    gate passes per step, predicted slower, so no cooperative launch is even tried) and at
    N = 3 (predicted faster); FUSEDGRU_PERSISTENT=1 takes the plan anyway, =0 never. Every
    path's results stay within fp32 of the float64 reference."""
    monkeypatch.delenv("FUSEDGRU_PERSISTENT", raising=False)
    dev = emu.devices()["h100"]
    saved = torch.backends.cudnn.rnn.fp32_precision
    torch.backends.cudnn.rnn.fp32_precision = "ieee"  # strict fp32: the FMA kernel
    try:
        assert emu.gru_path(dev, 2, 256, 64, "fp32", False)[0::3] == ("fma", False)
        assert emu.gru_path(dev, 2, 3, 64, "fp32", False)[0::3] == ("fma", True)
        for N, setting, persistent in ((256, None, False), (256, "1", True), (3, None, True),
                                       (3, "0", False)):
            if setting is not None:
                monkeypatch.setenv("FUSEDGRU_PERSISTENT", setting)
            args64 = gru_case(2, N, 5, 64, torch.float64, False, True)
            args = [a.float() if a is not None and a.is_floating_point() else a for a in args64]
            emu.refuse_cooperative_launches(1)  # a tried launch consumes the refusal
            refused = emu.gru_forward_on(dev, *args, False, True)
            tried = emu.refuse_cooperative_launches(0) == 0
            assert tried == persistent, (N, setting)
            got = emu.gru_forward_on(dev, *args, False, True)
            want = reference.gru_layer(*args64, False)
            for o, r, o2 in zip(got, want, refused):
                assert rel_err(o, r) <= 1e-5 and rel_err(o2, r) <= 1e-5, (N, setting)
            monkeypatch.delenv("FUSEDGRU_PERSISTENT", raising=False)
    finally:
        torch.backends.cudnn.rnn.fp32_precision = saved


def test_a_failed_launch_raises_and_leaves_every_flag(emu, restore_tf32_flags):
    torch.backends.cudnn.rnn.fp32_precision = "tf32"
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    before = _read_flags()
    args = [a.float() if a is not None and a.is_floating_point() else a
            for a in gru_case(4, 3, 5, 7, torch.float64, False, False)]
    emu.fail_next_launch()
    with pytest.raises(RuntimeError, match="CUDA error"):
        emu.gru_forward_per_step(*args, False, True)
    assert _read_flags() == before
    emu.gru_forward_per_step(*args, False, True)  # and the next call works


LENGTH_CASES = [("past-T", lambda T: [T + 1, 2, T + 5]), ("negative", lambda T: [-1, 3, T]),
                ("zero", lambda T: [0, T, 1])]


@pytest.mark.parametrize("path", ["", "_per_step"], ids=["persistent", "per_step"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("batch_major", [False, True], ids=["timemajor", "batchmajor"])
@pytest.mark.parametrize("case, make", LENGTH_CASES, ids=[c[0] for c in LENGTH_CASES])
def test_gru_lengths_out_of_range_act_as_clamped(emu, path, reverse, batch_major, case, make):
    """On CUDA the lengths stay on the device, unchecked (a check would synchronize): entries
    outside [0, T] must act as the nearest bound, never index past the buffers (the
    AddressSanitizer build turns any such access into an abort)."""
    T = 5
    args = list(gru_case(T, 3, 4, 9, torch.float64, batch_major, False))
    args[6] = torch.tensor(make(T))
    clamped = args[6].clamp(0, T)
    out, h, ws = getattr(emu, "gru_forward" + path)(*args, reverse, True)
    ref_args = args[:6] + [clamped]
    out_r, h_r, ws_r = reference.gru_layer(*ref_args, reverse)
    assert rel_err(out, out_r) <= 1e-12 and rel_err(h, h_r) <= 1e-12
    assert_gru_backward_matches(emu, path, args, clamped, (out, h, ws), (out_r, h_r, ws_r),
                                reverse)


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("case, make", LENGTH_CASES, ids=[c[0] for c in LENGTH_CASES])
def test_ln_gru_lengths_out_of_range_act_as_clamped(emu, reverse, case, make):
    import fusedgru  # noqa: F401
    T = 4
    x, hx, w_ih, w_hh, _, _, _ = gru_case(T, 3, 5, 6, torch.float64, True, False)
    lengths = torch.tensor(make(T))
    clamped = lengths.clamp(0, T)
    ln = [torch.randn(18, dtype=torch.float64) for _ in range(4)]
    ours = emu.ln_gru_forward(x, hx, w_ih, w_hh, *ln, lengths, reverse, 1e-5, True)
    cpu = torch.ops.fusedgru.ln_gru_forward(x, hx, w_ih, w_hh, *ln, clamped, reverse, 1e-5, True)
    for o, r in zip(ours, cpu):
        assert rel_err(o, r) <= 1e-10
    go, gh = torch.randn_like(ours[0]), torch.randn_like(ours[1])
    g = emu.ln_gru_backward(go, gh, x, hx, w_ih, w_hh, ln[0], ln[2], ln[3], lengths, ours[0],
                            ours[2], reverse, True, True)
    g_cpu = torch.ops.fusedgru.ln_gru_backward(go, gh, x, hx, w_ih, w_hh, ln[0], ln[2], ln[3],
                                               clamped, cpu[0], cpu[2], reverse, True, True)
    for i, (o, r) in enumerate(zip(g, g_cpu)):
        assert rel_err(o, r) <= 1e-10, f"grad {i}"


def test_shared_memory_opt_in_is_set_once_per_kernel_to_its_maximum(emu):
    """Launches of one kernel with different sizes above 48 KB: the attribute is set once per
    (device, kernel), to the device's opt-in maximum (setting each launch's own size races
    between host threads). Checked over every attribute call of the session so far."""
    for d in (5, 20):  # channel-last fp64 tiles of (64 + 2d) x 128 values: 74 KB and 104 KB
        x = make_x("channels_last", 1, 128, 300, torch.float64)
        w = torch.randn(128, 3, dtype=torch.float64)
        y = emu.causal_conv1d_fwd(x, w, None, None, d, 0)
        assert rel_err(y, reference.causal_conv1d(x, w, None, d, None, None)) <= 1e-12
    sets = emu.smem_attribute_sets()
    assert sets, "no launch above 48 KB ran"
    keys = [(dev, kernel) for dev, kernel, _, _ in sets]
    assert len(keys) == len(set(keys)), "an attribute set twice for one kernel"
    # The opt-in maximum covers static and dynamic shared memory together.
    assert all(v + static == emu.device_smem_optin(dev) for dev, _, v, static in sets), sets


@pytest.mark.parametrize("rule", ["smem-without-opt-in", "smem-over-opt-in", "threads",
                                  "grid-y", "cooperative-too-large", "cooperative-unsupported"])
def test_the_emulated_runtime_refuses_what_a_gpu_refuses(emu, rule):
    """Planted bugs for the checker: launches a GPU would refuse must fail, with CUDA's error."""
    with pytest.raises(RuntimeError, match="CUDA error"):
        emu.launch_probe(rule)
    emu.launch_probe("ok")


PTXAS_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_emu",
                           "ptxas_sm90.txt")
CSRC_KERNEL = "_ZN8fusedgru4cuda"  # mangled prefix of namespace fusedgru::cuda


def ptxas_table():
    """{mangled kernel: (registers, static smem)} of tests/cuda_emu/ptxas_sm90.txt, which
    tests/test_cuda_build.py keeps equal to ptxas's report."""
    with open(PTXAS_TABLE) as f:
        rows = [line.split() for line in f if line.strip() and not line.startswith("#")]
    return {name: (int(regs), int(smem)) for _, name, regs, smem in rows}


def h100_blocks_per_sm(registers, static_smem, threads, smem):
    """An H100's resident blocks per SM (CUDA occupancy calculator: 64 K registers allocated
    per warp in units of 256, 2048 threads, 32 blocks, 228 KB shared memory less 1 KB per
    block)."""
    warps = -(-threads // 32)
    per_warp = -(-registers * 32 // 256) * 256
    return min(32, 2048 // (warps * 32), 65536 // (per_warp * warps),
               228 * 1024 // (smem + static_smem + 1024))


def test_kernel_resources_are_ptxas_reports(emu):
    """Occupancy (hence the persistent planner's choice and the co-resident limit of cooperative
    grids) and the shared-memory rules see each csrc kernel's registers and static shared memory
    as ptxas reports them for the sm_90 build, found by mangled name: run a kernel of every
    family, then every csrc kernel resolved so far must have come from the table."""
    x, hx, w_ih, w_hh, b_ih, b_hh, lengths = gru_case(4, 3, 5, 9, torch.float32, False, True)
    for path in ("", "_per_step"):
        out, h, ws = getattr(emu, "gru_forward" + path)(x, hx, w_ih, w_hh, b_ih, b_hh, lengths,
                                                        False, True)
        getattr(emu, "gru_backward" + path)(torch.randn_like(out), torch.randn_like(h), None, x,
                                            hx, w_ih, w_hh, lengths, out, ws, False, True, True,
                                            True)
    conv_case(emu, "", 2, 3, 17, 4, 1, True, "silu", True, "ncl", torch.float32)
    table = ptxas_table()
    resolved = {name: (regs, smem, origin) for name, regs, smem, origin in emu.resolved_kernels()}
    ours = {name: v for name, v in resolved.items() if name.startswith(CSRC_KERNEL)}
    assert any("gru_persistent_forward_kernel" in n for n in ours), sorted(ours)
    assert any("causal" in n or "conv" in n for n in ours), sorted(ours)
    for name, (regs, smem, origin) in ours.items():
        assert origin == "ptxas" and (regs, smem) == table[name], name
    persistent = next(n for n in ours if "gru_persistent_forward_kernel" in n)
    regs, static = table[persistent]
    h100 = emu.devices()["h100"]
    for threads, smem in [(256, 0), (256, 48 * 1024), (128, 0), (64, 96 * 1024)]:
        assert emu.occupancy(persistent, h100, threads, smem) == \
            h100_blocks_per_sm(regs, static, threads, smem), (threads, smem)


def test_deterministic_decision_is_atens(emu, monkeypatch):
    """cuBLAS is replaced by the fixed-order GEMM exactly when ATen would refuse it: not under
    warn_only (ATen warns and runs cuBLAS), and CUBLAS_WORKSPACE_CONFIG is read once, as ATen
    reads it."""
    prev = (torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        torch.use_deterministic_algorithms(False)
        assert not emu.cublas_refuses()
        torch.use_deterministic_algorithms(True, warn_only=True)
        assert not emu.cublas_refuses()
        torch.use_deterministic_algorithms(True)
        first = emu.cublas_refuses()
        assert first == (os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (":4096:8", ":16:8"))
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8" if first else "bogus")
        assert emu.cublas_refuses() == first
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])
