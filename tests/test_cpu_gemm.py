"""The CPU's packed fp32 GEMM (csrc/cpu/packed_gemm.h): the GRU's step products, its input
projection and the backward's GEMMs take it for fp32 when at least 32 rows reuse the packed
operand (and K <= 4096 for a one-off product); FUSEDGRU_PACKED_GEMM=0 switches it off (ATen),
=avx2 takes the AVX2 tiles on an AVX-512 CPU too. Every path against float64 nn.GRU, outputs and
every gradient, on shapes that reach every tile remainder (rows mod 8 and mod 6, columns mod 16
and mod 48, one or two thread blocks, both sides of the thresholds); the packed path's claims of
bitwise independence of the thread count, of the weights' strides and of the instruction set.
bf16/fp16 forwards of at most 8 rows per step run their recurrent products on the same panels
in fp32 (the weights widened once per call). (On a CPU without AVX-512 "packed" and
"packed-avx2" run the same tiles; without AVX2 both run ATen.)"""

import os

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from gru_testing import TOL, assert_close, rel_err, run_with_grads
from torch import nn
from torch.profiler import ProfilerActivity, profile

import fusedgru

# (T, N, C, H) and what each reaches: rows = N per step and T N in the projection.
SHAPES = [
    (1, 40, 7, 17),     # one step of 40 rows (5 full tiles), 3H = 51 columns: a partial panel
    (4, 8, 33, 1),      # H = 1: one 16-column panel, 3 of them used
    (9, 1, 5, 130),     # T N = 9 < 32: the steps stay on ATen, the projection too
    (40, 1, 5, 130),    # T N = 40: one-row steps on the packed path, 2 thread blocks
    (6, 13, 300, 64),   # 13 rows = 8 + 5, K = 300 in the projection
    (3, 17, 20, 200),   # 17 = 2 x 8 + 1 rows; 2 blocks of 112 / 88 units
    (70, 70, 3, 33),    # T N = 4900 > 4096: the weight gradients' K goes to ATen
]


def shape_id(s):
    return "T{}-N{}-C{}-H{}".format(*s)


GEMM_ENV = {"packed": "1", "packed-avx2": "avx2", "aten": "0"}


@pytest.fixture(params=list(GEMM_ENV))
def gemm(request, monkeypatch):
    monkeypatch.setenv("FUSEDGRU_PACKED_GEMM", GEMM_ENV[request.param])
    return request.param


def fp64_pair(C, H, **kwargs):
    ref = nn.GRU(C, H, **kwargs).double()
    ours = fusedgru.GRU(C, H, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_fp32_against_float64(gemm, shape, bidirectional):
    T, N, C, H = shape
    ref, ours = fp64_pair(C, H, num_layers=2, bidirectional=bidirectional)
    D = 2 if bidirectional else 1
    x = torch.randn(T, N, C, dtype=torch.float64)
    hx = torch.randn(2 * D, N, H, dtype=torch.float64)
    go = torch.randn(T, N, D * H, dtype=torch.float64)
    gh = torch.randn(2 * D, N, H, dtype=torch.float64)
    r_out, r_h, r_grads = run_with_grads(ref, x.requires_grad_(), hx.requires_grad_(), go, gh)
    o_out, o_h, o_grads = run_with_grads(
        ours, x.detach().float().requires_grad_(), hx.detach().float().requires_grad_(),
        go.float(), gh.float())
    tol = TOL[torch.float32]
    assert_close(o_out.double(), r_out, tol, f"{gemm} output")
    assert_close(o_h.double(), r_h, tol, f"{gemm} h_n")
    for i, (a, b) in enumerate(zip(o_grads, r_grads)):
        assert_close(a.double(), b, tol, f"{gemm} grad {i}")


@pytest.mark.parametrize("shape", [(40, 1, 5, 130), (6, 13, 300, 64), (3, 17, 20, 200)],
                         ids=shape_id)
def test_lengths_and_layer_norm_against_float64(gemm, shape):
    T, N, C, H = shape
    lengths = torch.randint(0, T + 1, (N,))
    ref, ours = fp64_pair(C, H)
    x = torch.randn(T, N, C, dtype=torch.float64)
    go = torch.randn(T, N, H, dtype=torch.float64)
    mask = (torch.arange(T)[:, None] < lengths[None, :]).double()[:, :, None]
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths.clamp_min(1), enforce_sorted=False)
    r_out = nn.utils.rnn.pad_packed_sequence(ref(packed)[0], total_length=T)[0] * mask
    o_out = ours(x.float(), lengths=lengths)[0]
    assert_close(o_out.double() * mask, r_out, TOL[torch.float32], f"{gemm} output")
    # LayerNormGRU: the same products feed its normalizations (its own reference is the float64
    # module: tests/test_ln_gru.py holds it against its pure-PyTorch reference).
    ln = fusedgru.LayerNormGRU(C, H)
    ln64 = fusedgru.LayerNormGRU(C, H).double()
    ln64.load_state_dict(ln.state_dict())
    xl = x.float().requires_grad_()
    xl64 = x.clone().requires_grad_()
    out, out64 = ln(xl)[0], ln64(xl64)[0]
    assert_close(out.double(), out64, TOL[torch.float32], f"{gemm} LayerNormGRU output")
    g, g64 = torch.autograd.grad((out * go.float()).sum(), [xl, *ln.parameters()]), \
        torch.autograd.grad((out64 * go).sum(), [xl64, *ln64.parameters()])
    for i, (a, b) in enumerate(zip(g, g64)):
        assert_close(a.double(), b, 10 * TOL[torch.float32], f"{gemm} LayerNormGRU grad {i}")


# Where the CPU has AVX512-BF16 (Linux's name for the flag), "packed" multiplies bf16 weights in
# bf16 pairs where that pays (bf16_dot_pays, csrc/cpu/packed_gemm.h) and "packed-fp32" keeps
# them on fp32 panels; elsewhere both run the fp32 panels.
REDUCED_GEMM_ENV = {"packed": "1", "packed-fp32": "fp32", "packed-avx2": "avx2", "aten": "0"}
CPU_FLAGS = set(next((line.split() for line in open("/proc/cpuinfo") if line.startswith("flags")),
                     [])) if os.path.exists("/proc/cpuinfo") else set()
HAS_AVX512_BF16 = "avx512_bf16" in CPU_FLAGS
# Whether the CPU multiplies the dtype in hardware (cpu_multiplies, csrc/cpu/packed_gemm.h): where
# it does not, bf16/fp16 products run in fp32 on widened operands and every step on fp32 panels.
CPU_MULTIPLIES = {torch.bfloat16: HAS_AVX512_BF16, torch.float16: "avx512_fp16" in CPU_FLAGS}


@pytest.fixture(params=list(REDUCED_GEMM_ENV))
def reduced_gemm(request, monkeypatch):
    monkeypatch.setenv("FUSEDGRU_PACKED_GEMM", REDUCED_GEMM_ENV[request.param])
    return request.param


def widened(reduced_gemm, dtype):
    """Whether bf16/fp16 products run in fp32 on widened operands (and every step of T N >= 32
    rows on the panels): the CPU does not multiply the dtype, or is told so."""
    return reduced_gemm in ("packed-fp32", "packed-avx2") or (
        reduced_gemm != "aten" and not CPU_MULTIPLIES[dtype])


# (T, N, C, H) of bf16/fp16 forwards, and whether their steps take the packed panels: at most
# kMaxReducedPackedStepRows = 8 rows per step and T N >= 32 (csrc/cpu/packed_gemm.h).
REDUCED_SHAPES = [
    ((40, 1, 5, 130), True),    # one row per step, 2 thread blocks
    ((33, 2, 7, 17), True),     # K = 17 odd: the last pair of k is one term; a partial panel
    ((8, 4, 3, 513), True),     # 4 rows at H >= 512 (bf16 pairs where the CPU has them), K odd
    ((12, 3, 20, 33), True),    # T N = 36
    ((6, 8, 17, 17), True),     # 8 rows: the limit
    ((6, 9, 17, 17), False),    # 9 rows: ATen's product (panels where the CPU lacks the dtype)
    ((9, 1, 5, 130), False),    # T N = 9 < 32: ATen's product
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", REDUCED_SHAPES, ids=lambda c: shape_id(c[0]))
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_reduced_precision_steps_against_float64(reduced_gemm, dtype, case, bidirectional):
    """A bf16/fp16 forward (2 layers, with lengths) is as close to float64 nn.GRU as nn.GRU in
    that dtype is, on every path; the steps' products leave ATen exactly where they should (the
    profiler sees one aten::mm per step on the calling thread otherwise)."""
    (T, N, C, H), packs = case
    if T * N >= 32 and widened(reduced_gemm, dtype):
        packs = True  # any N
    ref, ours = fp64_pair(C, H, num_layers=2, bidirectional=bidirectional)
    low = nn.GRU(C, H, num_layers=2, bidirectional=bidirectional).to(dtype)
    low.load_state_dict(ours.state_dict())
    ours.to(dtype)
    D = 2 if bidirectional else 1
    x = torch.randn(T, N, C, dtype=dtype)
    hx = torch.randn(2 * D, N, H, dtype=dtype)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        got = ours(x, hx)
    want = ref(x.double(), hx.double())
    with torch.no_grad():
        peer = low(x, hx)
    eps = 1e-3 if dtype == torch.bfloat16 else 1e-4
    for what, o, w, t in zip(("output", "h_n"), got, want, peer):
        assert o.dtype == dtype
        assert rel_err(o, w) <= 2 * rel_err(t, w) + eps, (what, rel_err(o, w), rel_err(t, w))
    step_mms = sum(e.count for e in prof.key_averages() if e.key == "aten::mm")
    if packs and reduced_gemm != "aten":
        assert step_mms == 0, f"{step_mms} aten::mm calls: the steps did not take the panels"
    else:
        assert step_mms >= T, f"{step_mms} aten::mm calls for {T} steps"
    lengths = torch.randint(1, T + 1, (N,))
    mask = (torch.arange(T)[:, None] < lengths[None, :])[:, :, None]
    seq = nn.utils.rnn.pack_padded_sequence(x.double(), lengths, enforce_sorted=False)
    w_out = nn.utils.rnn.pad_packed_sequence(ref(seq, hx.double())[0], total_length=T)[0]
    with torch.no_grad():
        o_out = ours(x, hx, lengths=lengths)[0]
        t_out = nn.utils.rnn.pad_packed_sequence(
            low(nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False), hx)[0],
            total_length=T)[0]
    assert (o_out * ~mask == 0).all()
    assert rel_err(o_out, w_out) <= 2 * rel_err(t_out, w_out) + eps


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", REDUCED_SHAPES, ids=lambda c: shape_id(c[0]))
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_reduced_precision_gradients_against_float64(reduced_gemm, dtype, case, bidirectional):
    """The backward's products dh += dG W_hh take the panels where the forward's do (fp32
    panels for bf16 too, no pairs): every gradient as close to float64 nn.GRU's as nn.GRU's own
    in the dtype; the profiler sees no per-step aten::addmm_ there."""
    (T, N, C, H), packs = case
    if T * N >= 32 and widened(reduced_gemm, dtype):
        packs = True  # any N
    ref, ours = fp64_pair(C, H, bidirectional=bidirectional)
    low = nn.GRU(C, H, bidirectional=bidirectional).to(dtype)
    low.load_state_dict(ours.state_dict())
    ours.to(dtype)
    D = 2 if bidirectional else 1
    x = torch.randn(T, N, C, dtype=torch.float64)
    hx = torch.randn(D, N, H, dtype=torch.float64)
    go = torch.randn(T, N, D * H, dtype=torch.float64)
    gh = torch.randn(D, N, H, dtype=torch.float64)

    def grads(module, cast, profiled=False):
        xi, hi = x.to(cast).requires_grad_(), hx.to(cast).requires_grad_()
        out, h_n = module(xi, hi)
        loss = (out * go.to(cast)).sum() + (h_n * gh.to(cast)).sum()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            g = torch.autograd.grad(loss, [xi, hi, *module.parameters()])
        addmms = sum(e.count for e in prof.key_averages() if e.key == "aten::addmm_")
        return g, addmms

    want, _ = grads(ref, torch.float64)
    peer, _ = grads(low, dtype)
    got, addmms = grads(ours, dtype)
    eps = 1e-3 if dtype == torch.bfloat16 else 1e-4
    for i, (o, w, t) in enumerate(zip(got, want, peer, strict=True)):
        assert o.dtype == dtype
        assert rel_err(o, w) <= 2 * rel_err(t, w) + eps, (i, rel_err(o, w), rel_err(t, w))
    # Besides the steps' products, one addmm_ per direction (grad_input's second product; none
    # where it is widened: then it runs on the fp32 tiles).
    if packs and reduced_gemm != "aten":
        want_addmms = 0 if widened(reduced_gemm, dtype) else D
        assert addmms == want_addmms, f"{addmms} aten::addmm_ calls: the steps left the panels"
    else:
        assert addmms >= D * T, f"{addmms} aten::addmm_ calls for {T} steps"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", [c[0] for c in REDUCED_SHAPES if c[1]], ids=shape_id)
def test_reduced_precision_layer_norm_steps_against_float64(monkeypatch, dtype, shape):
    """LayerNormGRU's forward takes the same products: on the panels (and bf16 pairs) it is as
    close to its float64 self as on ATen's per-step products."""
    T, N, C, H = shape
    ln64 = fusedgru.LayerNormGRU(C, H).double()
    ln = fusedgru.LayerNormGRU(C, H).to(dtype)
    ln.load_state_dict(ln64.state_dict())
    x = torch.randn(T, N, C, dtype=torch.float64)
    with torch.no_grad():
        want = ln64(x)[0]
        got = {}
        for env in ("1", "fp32", "0"):
            monkeypatch.setenv("FUSEDGRU_PACKED_GEMM", env)
            got[env] = ln(x.to(dtype))[0]
    eps = 1e-3 if dtype == torch.bfloat16 else 1e-4
    for env in ("1", "fp32"):
        assert rel_err(got[env], want) <= 2 * rel_err(got["0"], want) + eps, env


def profiled_training(module, cast, x, hx, go, gh):
    """One training call of module on x, hx cast to cast, under the profiler: its outputs and
    the gradients of (out * go).sum() + (h_n * gh).sum() to x, hx and every parameter, and the
    ATen products it ran (aten::mm, aten::addmm, aten::addmm_ events, shapes recorded)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        xi, hi = x.to(cast).requires_grad_(), hx.to(cast).requires_grad_()
        out, h_n = module(xi, hi)
        loss = (out * go.to(cast)).sum() + (h_n * gh.to(cast)).sum()
        g = torch.autograd.grad(loss, [xi, hi, *module.parameters()])
    products = [e for e in prof.events() if e.name in ("aten::mm", "aten::addmm_", "aten::addmm")]
    return (out, h_n, *g), products


# The most terms a product may have to be a sum of outer products, per dtype (kMaxFewTerms*,
# csrc/cpu/packed_gemm.cpp).
FEW_TERMS_MAX_K = {torch.bfloat16: 8, torch.float16: 16, torch.float32: 2}
# (T, N, C, H) of calls with products over few terms: the weight gradients' K = T N, the input
# projection's K = C. H >= 17 keeps every other product (K = H or 3H) on its usual path.
FEW_TERMS = [
    (1, 1, 130, 64),   # K = 1: a decoder's training step; the projection (C = 130) on ATen
    (2, 1, 2, 20),     # K = 2 everywhere; the projection accumulates onto the bias (beta = 1)
    (1, 2, 17, 33),    # K = 2
    (3, 1, 40, 17),    # K = 3
    (8, 1, 7, 24),     # K = 8
    (4, 4, 16, 64),    # K = 16 in the weight gradients and the projection
    (17, 1, 5, 40),    # T N = 17: the weight gradients on ATen; C = 5
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32],
                         ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("shape", FEW_TERMS, ids=shape_id)
def test_products_over_few_terms(monkeypatch, dtype, shape):
    """Products over few terms (FEW_TERMS_MAX_K) are sums of outer products, not ATen's (bf16
    ~1 ms at [3072, 1] x [1, 1024], fp16 ~18 ms) nor the packed tiles (fp32, slower than MKL's):
    outputs and every gradient as close to float64 nn.GRU's as nn.GRU's own in the dtype. In
    bf16/fp16 at K <= 2 the sum in fp32 is the exact sum rounded once (products of two bf16 or
    fp16 values are exact in fp32), so the weight gradients' products must be bitwise ATen's,
    which accumulate in fp32 (FUSEDGRU_PACKED_GEMM=0)."""
    T, N, C, H = shape
    if dtype == torch.float32 and T == 1:
        # A float32 training call of one time step is nn.GRU's own (torch.gru: GRU._run).
        T = 2
    ref, ours = fp64_pair(C, H)
    low = nn.GRU(C, H).to(dtype)
    low.load_state_dict(ours.state_dict())
    ours.to(dtype)
    x, hx = torch.randn(T, N, C, dtype=torch.float64), torch.randn(1, N, H, dtype=torch.float64)
    go, gh = torch.randn(T, N, H, dtype=torch.float64), torch.randn(1, N, H, dtype=torch.float64)

    def run(module, cast):
        results, products = profiled_training(module, cast, x, hx, go, gh)
        # A's [M, K]: mm(a, b), addmm(self, a, b, beta, alpha).
        few = sum(1 for e in products
                  if 1 <= e.input_shapes[0 if e.name == "aten::mm" else 1][1] <= kmax)
        return results, few

    kmax = FEW_TERMS_MAX_K[dtype]
    want, _ = run(ref, torch.float64)
    peer, _ = run(low, dtype)
    got, few = run(ours, dtype)
    monkeypatch.setenv("FUSEDGRU_PACKED_GEMM", "0")
    aten, aten_few = run(ours, dtype)
    assert few == 0, f"{few} ATen products over <= {kmax} terms"
    # grad W_ih in two products (r and z gates, n gate), grad W_hh, the input projection.
    expected = (3 if T * N <= kmax else 0) + (1 if C <= kmax else 0)
    assert aten_few == expected, f"{aten_few} ATen products over <= {kmax} terms, not {expected}"
    eps = {torch.bfloat16: 1e-3, torch.float16: 1e-4, torch.float32: 1e-6}[dtype]
    for i, (o, w, t, a) in enumerate(zip(got, want, peer, aten, strict=True)):
        assert o.dtype == dtype
        assert rel_err(o, w) <= 2 * rel_err(t, w) + eps, (i, rel_err(o, w), rel_err(t, w))
        # Not where the projection (beta = 1) sums few terms: ATen may start from the bias.
        # (Where the CPU does not multiply the dtype, the other products are widened: other bits.)
        if T * N <= 2 and C > kmax and dtype != torch.float32 and CPU_MULTIPLIES[dtype]:
            assert torch.equal(o, a), (i, (o.float() - a.float()).abs().max().item())


# (T, N, C, H): steps of 1 to 17 rows, odd widths, T N >= 32 (steps on the panels).
WIDENED = [(33, 1, 19, 33), (5, 17, 9, 130), (3, 16, 130, 17)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", WIDENED, ids=shape_id)
def test_reduced_precision_products_widened_to_fp32(monkeypatch, dtype, shape):
    """Where the CPU does not multiply bf16/fp16 in hardware (FUSEDGRU_PACKED_GEMM=fp32 makes
    any CPU behave so), every product over more than the few terms runs in fp32 on operands
    widened exactly and is rounded once (ATen's contract; its emulation took 2-7x longer): no
    ATen product in the dtype remains, and outputs and every gradient, bidirectional with 2
    layers, are as close to float64 nn.GRU's as nn.GRU's own in the dtype."""
    monkeypatch.setenv("FUSEDGRU_PACKED_GEMM", "fp32")
    T, N, C, H = shape
    ref, ours = fp64_pair(C, H, num_layers=2, bidirectional=True)
    low = nn.GRU(C, H, num_layers=2, bidirectional=True).to(dtype)
    low.load_state_dict(ours.state_dict())
    ours.to(dtype)
    x, hx = torch.randn(T, N, C, dtype=torch.float64), torch.randn(4, N, H, dtype=torch.float64)
    go = torch.randn(T, N, 2 * H, dtype=torch.float64)
    gh = torch.randn(4, N, H, dtype=torch.float64)
    want, _ = profiled_training(ref, torch.float64, x, hx, go, gh)
    peer, _ = profiled_training(low, dtype, x, hx, go, gh)
    got, products = profiled_training(ours, dtype, x, hx, go, gh)
    monkeypatch.setenv("FUSEDGRU_PACKED_GEMM", "0")
    _, aten_products = profiled_training(ours, dtype, x, hx, go, gh)

    def in_dtype(events):
        return [e.input_shapes for e in events
                if {"c10::BFloat16", "c10::Half"} & set(e.input_dtypes)]

    assert in_dtype(aten_products), "with ATen's products the profiler saw none in the dtype"
    assert not in_dtype(products), f"ATen products in {dtype}: {in_dtype(products)}"
    eps = {torch.bfloat16: 1e-3, torch.float16: 1e-4}[dtype]
    for i, (o, w, t) in enumerate(zip(got, want, peer, strict=True)):
        assert o.dtype == dtype
        assert rel_err(o, w) <= 2 * rel_err(t, w) + eps, (i, rel_err(o, w), rel_err(t, w))


@pytest.mark.parametrize("case", [((40, 1, 5, 130), True), ((8, 4, 3, 513), True),
                                  ((12, 4, 20, 256), False), ((12, 8, 20, 130), False)],
                         ids=lambda c: shape_id(c[0]))
def test_bf16_pairs_run_exactly_where_they_pay(monkeypatch, case):
    """Which tiles multiplied, made visible: vdpbf16ps reads a denormal bf16 as zero, so an h0
    of denormals (5e-39) times weights of 1e37 adds ~0.05 per term to step 0's gate products
    on fp32 panels and nothing on bf16 pairs. Where the pairs do not pay (or the CPU lacks
    AVX512-BF16) both settings run the same code: the same bits. (Summing the same products
    in another order alone would rarely show: a bf16 rounding flips for ~2^-16 of them.)"""
    (T, N, C, H), pays = case
    m = fusedgru.GRU(C, H).to(torch.bfloat16)
    with torch.no_grad():
        m.weight_hh_l0.fill_(1e37)
        m.bias_hh_l0.zero_()
    x = torch.randn(T, N, C, dtype=torch.bfloat16)
    hx = torch.full((1, N, H), 5e-39, dtype=torch.bfloat16)
    assert 0 < hx[0, 0, 0].item() < torch.finfo(torch.bfloat16).tiny  # a denormal
    step0 = {}
    for env in ("1", "fp32"):
        monkeypatch.setenv("FUSEDGRU_PACKED_GEMM", env)
        with torch.no_grad():
            step0[env] = m(x, hx)[0][0]
    if pays and HAS_AVX512_BF16:
        assert (step0["1"] - step0["fp32"]).abs().max() > 1e-2, "the bf16 pairs did not run"
    elif not HAS_AVX512_BF16:
        # Both settings run the fp32 panels and widened products. (With AVX512-BF16, "fp32" also
        # widens what "1" leaves to ATen: cpu_multiplies.)
        assert torch.equal(step0["1"], step0["fp32"])


def forward_backward(module, x, go):
    x = x.clone().requires_grad_()
    out, h = module(x)
    grads = torch.autograd.grad((out * go).sum() + h.sum(), [x, *module.parameters()])
    return [out, h, *grads]


@pytest.mark.parametrize("shape", SHAPES + [(5, 2, 9, 40), (4, 3, 40, 9)], ids=shape_id)
def test_avx512_and_avx2_tiles_are_bitwise_equal(monkeypatch, shape):
    """Both tile sets run one FMA chain over k per output element: the same bits (the AVX2
    tiles' row remainders 1-5 take 3, 3, 2, 1, 1 panels at a time)."""
    T, N, C, H = shape
    m = fusedgru.GRU(C, H, bidirectional=True)
    x, go = torch.randn(T, N, C), torch.randn(T, N, 2 * H)
    runs = {}
    for env in ("1", "avx2"):
        monkeypatch.setenv("FUSEDGRU_PACKED_GEMM", env)
        runs[env] = forward_backward(m, x, go)
    for i, (a, b) in enumerate(zip(runs["1"], runs["avx2"])):
        assert torch.equal(a, b), f"tensor {i} differs between the AVX-512 and AVX2 tiles"


@pytest.mark.parametrize("shape", [(40, 1, 5, 130), (12, 19, 70, 200)], ids=shape_id)
def test_packed_path_is_bitwise_independent_of_threads_and_strides(monkeypatch, shape):
    """One chain over k per output element: the same bits whatever the thread count (1 or 2
    thread blocks) and however the weights are laid out in memory (row-major weights' panels
    are packed by register transposes, column-major ones by row copies: pack_panel)."""
    monkeypatch.setenv("FUSEDGRU_PACKED_GEMM", "1")
    T, N, C, H = shape
    m = fusedgru.GRU(C, H)
    x, go = torch.randn(T, N, C), torch.randn(T, N, H)
    before = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            runs.append(forward_backward(m, x, go))
    finally:
        torch.set_num_threads(before)
    for i, (a, b) in enumerate(zip(runs[0], runs[1])):
        assert torch.equal(a, b), f"tensor {i} differs between 1 and 2 threads"
    for i, (a, b) in enumerate(zip(runs[0], runs[2])):
        assert torch.equal(a, b), f"tensor {i} differs between two runs"
    # The same weights as transposed (column-major) storage.
    t = fusedgru.GRU(C, H)
    with torch.no_grad():
        for name, p in m.named_parameters():
            q = p.detach().clone()
            if q.dim() == 2:
                q = q.t().contiguous().t()
                assert not q.is_contiguous()
            setattr(t, name, nn.Parameter(q))
    strided = forward_backward(t, x, go)
    for i, (a, b) in enumerate(zip(runs[0][:3], strided[:3])):
        assert torch.equal(a, b), f"tensor {i} differs with column-major weights"


def in_wider_rows(t, fill, gap=7):
    """A copy of t as a view into rows `gap` elements longer, the rest of each row `fill`ed
    (random numbers, or NaN)."""
    rows = torch.randn(*t.shape[:-1], t.shape[-1] + gap).to(t.dtype)
    if fill == "nan":
        rows.fill_(float("nan"))
    rows[..., :t.shape[-1]] = t
    return rows[..., :t.shape[-1]]


# (inputs, memory): inputs as tensors of their own, or as views into wider rows whose other
# elements are random or NaN; fresh memory as it comes, or NaN. Runs compared bitwise in pairs:
# the same strides, so the same kernels, only the contents nobody should read differ.
NAN_RUN_PAIRS = [(("own", "plain"), ("own", "nan")), (("random", "plain"), ("nan", "nan"))]


def as_run_input(t, inputs):
    return t.clone() if inputs == "own" else in_wider_rows(t, inputs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32],
                         ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["timemajor", "batchfirst"])
@pytest.mark.parametrize("cls", [fusedgru.GRU, fusedgru.LayerNormGRU], ids=lambda c: c.__name__)
def test_nothing_reads_memory_it_did_not_write(reduced_gemm, nan_filled_memory, dtype,
                                               batch_first, cls):
    """Forward and every gradient, padded and packed, then inference (the whole sequence, and
    one call per step carrying h: the lean paths), the same bits whether fresh memory holds
    what it held before or NaN (NAN_RUN_PAIRS), with the input and h0 as tensors of their own
    or as views into wider rows. (N, H): 33 rows per step (ATen's products, and oneDNN's AMX
    tiling beyond 16 rows), 2 rows (the panels: T N = 32 rows reach kMinPackedRows), H = 17 (odd
    K, one thread block), and H = 80 (two thread blocks of W_hh on two threads: per-block
    products into column views of dh). On an Emerald Rapids Xeon it
    caught oneDNN's AMX bf16 product reading past K in rows of a larger stride, the batch-first
    backward's dG rows of a step, whose neighbours are steps not yet written (8 failures with
    aten_matmul's copy taken out): aten_matmul now gives such an operand rows of its own."""
    T, C = 16, 13
    for N, H in ((33, 17), (2, 17), (33, 80)):
        kwargs = {"num_layers": 2, "bidirectional": True} if cls is fusedgru.GRU else {}
        m = cls(C, H, batch_first=batch_first, **kwargs).to(dtype)
        D = 2 if kwargs else 1
        x = (torch.randn(N, T, C) if batch_first else torch.randn(T, N, C)).to(dtype)
        h0 = torch.randn(D * kwargs.get("num_layers", 1), N, H).to(dtype)
        lengths = torch.randint(1, T + 1, (N,))
        lengths[0] = T
        runs = {}
        for inputs, memory in dict.fromkeys(r for pair in NAN_RUN_PAIRS for r in pair):
            nan_filled_memory(memory == "nan")
            run = []
            for packed in (False, True):
                xi = as_run_input(x, inputs).requires_grad_()
                seq = nn.utils.rnn.pack_padded_sequence(xi, lengths, batch_first=batch_first,
                                                        enforce_sorted=False) if packed else xi
                y, hn = m(seq, as_run_input(h0, inputs))
                y = y.data if packed else y
                loss = (y.float().sin().sum() + hn.float().cos().sum())
                run += [y, hn, *torch.autograd.grad(loss, [xi, *m.parameters()])]
            with torch.no_grad():  # inference: the whole sequence, then one call per step
                run += list(m(as_run_input(x, inputs), as_run_input(h0, inputs)))
                h = as_run_input(h0, inputs)
                for t in range(T):
                    xt = x[:, t:t + 1] if batch_first else x[t:t + 1]
                    y, h = m(as_run_input(xt, inputs), h)
                    run.append(y)
            runs[inputs, memory] = run
            nan_filled_memory(False)
        for a_run, b_run in NAN_RUN_PAIRS:
            for i, (a, b) in enumerate(zip(runs[a_run], runs[b_run])):
                assert torch.isfinite(a).all() and torch.equal(a, b), (
                    f"N={N} H={H}: tensor {i} differs between {a_run} and {b_run}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32],
                         ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("cls, batch_first", [
    (fusedgru.GRU, False), (fusedgru.GRU, True), (fusedgru.LayerNormGRU, False),
    (fusedgru.LayerNormGRU, True), (fusedgru.GRUCell, False)],
    ids=["GRU", "GRU-batchfirst", "LayerNormGRU", "LayerNormGRU-batchfirst", "GRUCell"])
def test_the_references_read_nothing_beyond_their_views(dtype, cls, batch_first):
    """Under forward-mode AD and torch.func.jvp the modules run the pure-PyTorch references
    (fusedgru.reference), whose products are ATen's. The input and h0 as views into rows
    padded with NaN give the same bits, primal and tangent, as views into rows padded with
    random numbers (the same strides, so the same kernels): on an AMX CPU ATen's bf16 product
    of such a view reads the padding (torch.nn.GRU returns NaN there), so the references give
    their left operands rows of their own first. 33 rows per product (oneDNN's AMX tiling
    beyond 16 rows); odd C and H."""
    T, N, C, H = 5, 33, 13, 17
    if cls is fusedgru.GRUCell:
        m = cls(C, H).to(dtype)
        x, h0 = torch.randn(N, C).to(dtype), torch.randn(N, H).to(dtype)
    else:
        kwargs = {"num_layers": 2, "bidirectional": True} if cls is fusedgru.GRU else {}
        m = cls(C, H, batch_first=batch_first, **kwargs).to(dtype)
        x = (torch.randn(N, T, C) if batch_first else torch.randn(T, N, C)).to(dtype)
        h0 = torch.randn(2 * kwargs.get("num_layers", 1) if kwargs else 1, N, H).to(dtype)
    tangent = torch.randn_like(x)

    def run(xi, hi):
        with fwAD.dual_level():
            out = m(fwAD.make_dual(xi, tangent), hi)
            outs = out if isinstance(out, tuple) else (out,)
            got = [t for o in outs for t in fwAD.unpack_dual(o)[:2]]
        first = (lambda o: o[0]) if cls is not fusedgru.GRUCell else (lambda o: o)
        got += torch.func.jvp(lambda a: first(m(a, hi)), (xi,), (tangent,))
        return got

    padded = run(in_wider_rows(x, "random"), in_wider_rows(h0, "random"))
    nan_padded = run(in_wider_rows(x, "nan"), in_wider_rows(h0, "nan"))
    for i, (a, b) in enumerate(zip(padded, nan_padded)):
        assert torch.isfinite(a).all() and torch.equal(a, b), f"tensor {i} differs"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32],
                         ids=["bf16", "fp16", "fp32"])
def test_cell_reads_nothing_beyond_its_views(nan_filled_memory, dtype):
    """GRUCell, 33 and 2 rows, training and inference, input and hx as views into NaN-padded
    rows and fresh memory NaN: the same bits as on tensors of their own."""
    C, H = 13, 17
    m = fusedgru.GRUCell(C, H).to(dtype)
    for N in (33, 2):
        x, hx = torch.randn(N, C).to(dtype), torch.randn(N, H).to(dtype)
        runs = {}
        for inputs, memory in dict.fromkeys(r for pair in NAN_RUN_PAIRS for r in pair):
            nan_filled_memory(memory == "nan")
            xi = as_run_input(x, inputs).requires_grad_()
            hi = as_run_input(hx, inputs).requires_grad_()
            h = m(xi, hi)
            runs[inputs, memory] = [
                h, *torch.autograd.grad(h.float().sin().sum(), [xi, hi, *m.parameters()])]
            with torch.no_grad():
                runs[inputs, memory].append(m(as_run_input(x, inputs), as_run_input(hx, inputs)))
            nan_filled_memory(False)
        for a_run, b_run in NAN_RUN_PAIRS:
            for i, (a, b) in enumerate(zip(runs[a_run], runs[b_run])):
                assert torch.isfinite(a).all() and torch.equal(a, b), (
                    f"N={N}: tensor {i} differs between {a_run} and {b_run}")
