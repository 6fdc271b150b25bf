"""fp32 on the CPU under torch's bf16 matmul precision (torch.backends.mkldnn.matmul.fp32_precision
= "bf16", which torch.set_float32_matmul_precision("medium") sets too). nn.GRU's products then
run on oneDNN with bf16 operands wherever ATen's heuristics send them there (csrc/cpu/
packed_gemm.h, fp32_products_in_bf16): so do the fused ops' fp32 products, every path (the packed
steps, the input projection, the backward's GEMMs, the single-step dot products). Checked against
float64 nn.GRU (outputs and every gradient): as close as nn.GRU in the same mode is, and no
closer where nn.GRU rounded (the bf16 products were taken, not strict fp32 ones). Where torch does
not round (oneDNN switched off, the flag unset or "tf32", float64) the results are bitwise those
without the flag. On a CPU that torch does not let round (mkldnn::_is_mkldnn_bf16_supported false)
nothing rounds and every check still holds."""

import pytest
import torch
from gru_testing import rel_err, run_with_grads
from test_ln_gru import randomize, reference_stack
from torch import nn

import fusedgru
from fusedgru import reference

# An error of nn.GRU's above this (relative, against float64) means its products rounded to bf16
# (strict fp32 stays near 1e-7 at these sizes; bf16 operands give ~1e-3).
ROUNDED = 1e-4
# Floor of the upper bound (err(ours) <= 2 err(nn.GRU) + EPS) and the factor of the lower bound
# (err(ours) >= err(nn.GRU) / CLOSER where nn.GRU rounded).
EPS, CLOSER = 1e-5, 4.0

# (T, N, C, H, layers, bidirectional) and the path each reaches without the flag.
CASES = [
    (40, 1, 5, 130, 2, False),   # one row per step on the packed panels, 2 thread blocks
    (6, 13, 300, 64, 1, True),   # 13 rows, K = 300 in the projection
    (3, 17, 20, 200, 2, True),   # 2 blocks of 112 / 88 units
    (12, 3, 17, 17, 1, False),   # T N = 36: packed steps of 3 rows
    (1, 3, 7, 33, 2, False),     # one step of 3 rows: the cell step's dot products (inference)
    (1, 1, 256, 256, 1, True),   # one step of one row, bidirectional
    (32, 1, 8, 16, 1, False),    # grad W_ih's n part alone would reduce over 16 rows (fp32)
]


def case_id(c):
    return "T{}-N{}-C{}-H{}-L{}{}".format(*c[:5], "-bi" if c[5] else "")


@pytest.fixture
def matmul_precision():
    """Sets torch.backends.mkldnn.matmul.fp32_precision (a descriptor pytest's monkeypatch
    cannot restore) and gives the test's value back afterwards."""
    flags = torch.backends.mkldnn.matmul
    before = flags.fp32_precision

    def set_to(value):
        flags.fp32_precision = value
    try:
        yield set_to
    finally:
        flags.fp32_precision = before


@pytest.fixture
def bf16_matmul(matmul_precision):
    matmul_precision("bf16")


def grads_of(module, x, hx, go, gh, dtype):
    xi, hi = x.to(dtype).requires_grad_(), hx.to(dtype).requires_grad_()
    out, h_n, grads = run_with_grads(module, xi, hi, go.to(dtype), gh.to(dtype))
    return [out, h_n, *grads]


def check_like_nn(got, peer, want, names):
    """Each of ours within twice nn.GRU's error of float64 (plus EPS), and no more than CLOSER
    times closer where nn.GRU's products rounded."""
    for name, o, t, w in zip(names, got, peer, want, strict=True):
        e_o, e_t = rel_err(o, w), rel_err(t, w)
        assert e_o <= 2 * e_t + EPS, f"{name}: {e_o:.3g} against nn.GRU's {e_t:.3g}"
        if e_t > ROUNDED:
            assert e_o >= e_t / CLOSER, \
                f"{name}: {e_o:.3g}, strict fp32 where nn.GRU's products rounded ({e_t:.3g})"


def check_gru_like_nn(ref, peer, ours, x, hx, grad):
    """check_like_nn for a float64 nn.GRU ref, an fp32 nn.GRU peer and ours on float64 x, hx:
    the outputs (inference), or the outputs and every gradient of random output gradients."""
    if not grad:
        with torch.no_grad():
            check_like_nn(ours(x.float(), hx.float()), peer(x.float(), hx.float()),
                          ref(x, hx), ["output", "h_n"])
        return
    with torch.no_grad():
        out, h_n = ref(x, hx)
    go, gh = torch.randn_like(out), torch.randn_like(h_n)
    names = ["output", "h_n", "grad input", "grad hx",
             *(f"grad {n}" for n, _ in ref.named_parameters())]
    check_like_nn(grads_of(ours, x, hx, go, gh, torch.float32),
                  grads_of(peer, x, hx, go, gh, torch.float32),
                  grads_of(ref, x, hx, go, gh, torch.float64), names)


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_fp32_products_round_where_nn_grus_do(bf16_matmul, case, grad):
    T, N, C, H, L, bi = case
    D = 2 if bi else 1
    ref = nn.GRU(C, H, num_layers=L, bidirectional=bi).double()
    peer = nn.GRU(C, H, num_layers=L, bidirectional=bi)
    ours = fusedgru.GRU(C, H, num_layers=L, bidirectional=bi)
    peer.load_state_dict(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, N, C, dtype=torch.float64)
    hx = torch.randn(L * D, N, H, dtype=torch.float64)
    check_gru_like_nn(ref, peer, ours, x, hx, grad)


@pytest.mark.parametrize("N, H", [(1, 128), (1, 130), (2, 200), (1, 1024)])
@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_recurrent_products_round_where_nn_grus_do(bf16_matmul, N, H, grad):
    """The step products alone: inputs and W_ih exact in bf16 (so the input projection is the
    same whether it rounds or not) and a long sequence, one or two rows, widths where ATen's
    choice depends on the product's columns (a one-row product rounds from 384 columns on with
    torch 2.13 on a Xeon: nn.GRU's [1, 128] x [128, 384] rounds, halves of it would not)."""
    T, C = 24, 3
    ref = nn.GRU(C, H).double()
    with torch.no_grad():
        ref.weight_ih_l0.copy_(ref.weight_ih_l0.bfloat16())
    peer, ours = nn.GRU(C, H), fusedgru.GRU(C, H)
    peer.load_state_dict(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, N, C).bfloat16().double()
    hx = torch.randn(1, N, H, dtype=torch.float64)
    check_gru_like_nn(ref, peer, ours, x, hx, grad)


@pytest.mark.parametrize("lengths", [[30] + [1] * 19, [30, 30] + [1] * 18, [30, 17, 9, 2]],
                         ids=["one-long", "two-long", "spread"])
def test_packed_sequences_round_where_nn_grus_do(bf16_matmul, lengths):
    """A PackedSequence: nn.GRU's steps multiply only their active rows (grad W_hh one product
    of those rows per step), and so do ours, and so does the reference (reference._active_prefix)
    under autograd. Totals of more than 16 rows keep the input
    projection's products rounding in both (README Limits: ours take T N rows there)."""
    T, N, C, H = 30, len(lengths), 8, 256
    ref = nn.GRU(C, H).double()
    peer, ours = nn.GRU(C, H), fusedgru.GRU(C, H)
    peer.load_state_dict(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, N, C, dtype=torch.float64)
    go = torch.randn(T, N, H, dtype=torch.float64)

    def grads(module, dtype):
        xi = x.to(dtype).requires_grad_()
        seq = nn.utils.rnn.pack_padded_sequence(xi, torch.tensor(lengths))
        out = nn.utils.rnn.pad_packed_sequence(module(seq)[0], total_length=T)[0]
        loss = (out * go.to(dtype)).sum()
        return [out, *torch.autograd.grad(loss, [xi, *module.parameters()])]

    def reference_grads(module, dtype):  # the torch ops of forward AD and torch.func
        xi = x.to(dtype).requires_grad_()
        w = list(module.parameters())
        out, _, _ = reference.gru_layer(xi, torch.zeros(N, H).to(xi), *w,
                                        lengths=torch.tensor(lengths))
        return [out, *torch.autograd.grad((out * go.to(dtype)).sum(), [xi, *w])]

    names = ["output", "grad input", *(f"grad {n}" for n, _ in ref.named_parameters())]
    peer_grads, want = grads(peer, torch.float32), grads(ref, torch.float64)
    check_like_nn(grads(ours, torch.float32), peer_grads, want, names)
    check_like_nn(reference_grads(ours, torch.float32), peer_grads, want, names)


@pytest.mark.parametrize("N, H", [(1, 64), (3, 256), (8, 33), (9, 130)])
def test_cell_steps_round_where_nn_grucells_do(bf16_matmul, N, H):
    """GRUCell (up to 8 rows: the cell step's dot products without the flag) against
    nn.GRUCell; a streaming GRU call (one step: the whole-GRU op's layer-by-layer cell steps)
    against nn.GRU."""
    ref = nn.GRUCell(H, H).double()
    peer, ours = nn.GRUCell(H, H), fusedgru.GRUCell(H, H)
    peer.load_state_dict(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x, h = torch.randn(N, H, dtype=torch.float64), torch.randn(N, H, dtype=torch.float64)
    with torch.no_grad():
        check_like_nn([ours(x.float(), h.float())], [peer(x.float(), h.float())], [ref(x, h)],
                      ["h'"])
    ref = nn.GRU(H, H, num_layers=2).double()
    peer, ours = nn.GRU(H, H, num_layers=2), fusedgru.GRU(H, H, num_layers=2)
    peer.load_state_dict(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x, hx = torch.randn(1, N, H, dtype=torch.float64), torch.randn(2, N, H, dtype=torch.float64)
    with torch.no_grad():
        check_like_nn(ours(x.float(), hx.float()), peer(x.float(), hx.float()), ref(x, hx),
                      ["stream output", "stream h_n"])


def aten_keeps_fp32(M, K, N):
    """Whether ATen's fp32 product of an [M, K] and a [K, N] matrix keeps fp32 now, told by its
    error on random operands (the ops ask by another product: csrc/cpu/packed_gemm.h)."""
    a, w = torch.randn(M, K), torch.randn(N, K)
    return rel_err(nn.functional.linear(a, w), a.double() @ w.double().t()) < ROUNDED


def bf16_exact_sums(t, scale):
    """t's entries made small integers (|k| < 128) times scale: bf16 values whose products and
    sums, short ones, are exact in fp32 in any order, rounded operands or not."""
    return (t * 32).round().clamp(-127, 127) * scale


@pytest.mark.parametrize("N, H", [(1, 64), (1, 256), (2, 64)])
def test_products_that_keep_fp32_are_formed_as_in_strict_fp32(matmul_precision, N, H):
    """Where ATen keeps a step's products fp32 in the mode (oneDNN's choice by shape; on a Xeon
    with AMX and torch 2.13 one row at K = 64 or 256, not two rows at K = 64), the ops form them
    as without the flag (the cell step's dot products, packed panels, thread blocks): bitwise the
    strict results. GRUCell, a streaming step of a 2-layer GRU, and, with an input projection
    that is exact whether it rounds or not, a GRU's and a LayerNormGRU's forward and grad hx
    (which only the step products and the pointwise passes reach). Where ATen rounds, none of
    them is the strict result."""
    T, C = 40, 16  # T N >= 32: packed steps (ATen's fp32 products differ with the flag)
    cell = fusedgru.GRUCell(H, H)
    stack = fusedgru.GRU(H, H, num_layers=2)
    seq = fusedgru.GRU(C, H)
    ln = randomize(fusedgru.LayerNormGRU(C, H))
    with torch.no_grad():
        for m in (seq, ln):
            m.weight_ih_l0.copy_(bf16_exact_sums(m.weight_ih_l0, 2.0 ** -10))
        seq.bias_ih_l0.copy_(bf16_exact_sums(seq.bias_ih_l0, 2.0 ** -4))
    x1, h1 = torch.randn(N, H), torch.randn(N, H)
    xs, hs = torch.randn(1, N, H), torch.randn(2, N, H)
    xq, hq = bf16_exact_sums(torch.randn(T, N, C), 2.0 ** -6), torch.randn(1, N, H)
    go = torch.randn(T, N, H)

    def forward_and_grad_hx(m):
        h = hq.clone().requires_grad_()
        out, h_n = m(xq, h)
        return [out, h_n, torch.autograd.grad((out * go).sum(), h)[0]]

    def run():
        with torch.no_grad():
            out = [cell(x1, h1), *stack(xs, hs)]
        return out + forward_and_grad_hx(seq) + forward_and_grad_hx(ln)

    strict = run()
    matmul_precision("bf16")
    got = run()
    names = ["GRUCell", "stream output", "stream h_n", "output", "h_n", "grad hx",
             "LayerNormGRU output", "LayerNormGRU h_n", "LayerNormGRU grad hx"]
    forward = aten_keeps_fp32(N, H, 3 * H)  # [N, H] x [H, 3H], and C = H in the first three
    backward = forward and aten_keeps_fp32(N, 3 * H, H)  # dh += [N, 3H] x [3H, H]
    keeps = [forward] * 5 + [backward] + [forward] * 2 + [backward]
    for name, a, b, k in zip(names, got, strict, keeps, strict=True):
        assert torch.equal(a, b) == k, f"{name}: {'not ' if k else ''}the strict fp32 result"


@pytest.mark.parametrize("T, N, C, H, lengths", [
    (12, 3, 17, 130, None),
    (9, 40, 5, 96, None),
    # Sorted lengths: after step 2 (1) one row is active, whose product at K = 256 (64) keeps
    # fp32 on a 2-core Xeon where three (two) rows round; unsorted: every row each step.
    (40, 3, 4, 256, [40, 2, 1]),
    (30, 2, 3, 64, [30, 1]),
    (10, 4, 6, 64, [3, 10, 1, 7]),
], ids=["T12-N3", "T9-N40", "sorted-K256", "sorted-K64", "unsorted"])
def test_layer_norm_gru_rounds_where_its_reference_does(bf16_matmul, T, N, C, H, lengths):
    """LayerNormGRU against its pure-PyTorch reference (whose products are ATen's) in the same
    mode, outputs and every gradient; with lengths both multiply each step's active rows only
    where the lengths are sorted (reference._active_prefix)."""
    if lengths is not None:
        lengths = torch.tensor(lengths)
    m = randomize(fusedgru.LayerNormGRU(C, H, bidirectional=True)).double()
    x = torch.randn(T, N, C, dtype=torch.float64)
    hx = torch.randn(2, N, H, dtype=torch.float64)
    go = torch.randn(T, N, 2 * H, dtype=torch.float64)
    gh = torch.randn(2, N, H, dtype=torch.float64)

    def run(dtype, fused):
        m.to(dtype)
        xi, hi = x.to(dtype).requires_grad_(), hx.to(dtype).requires_grad_()
        out, h_n = m(xi, hi, lengths=lengths) if fused else reference_stack(m, xi, hi, lengths)
        loss = (out * go.to(dtype)).sum() + (h_n * gh.to(dtype)).sum()
        return [out, h_n, *torch.autograd.grad(loss, [xi, hi, *m.parameters()])]

    want = run(torch.float64, False)
    names = ["output", "h_n", "grad input", "grad hx", *(n for n, _ in m.named_parameters())]
    check_like_nn(run(torch.float32, True), run(torch.float32, False), want, names)


def forward_and_grads(ours, x, hx, go, gh):
    out, h_n, grads = run_with_grads(ours, x.clone().requires_grad_(),
                                     hx.clone().requires_grad_(), go, gh)
    return [out, h_n, *grads]


@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[4]], ids=case_id)
@pytest.mark.parametrize("how", ["mkldnn-off", "tf32", "float64"])
def test_bitwise_strict_where_torch_does_not_round(matmul_precision, case, how):
    """The flag changes nothing where torch would not round: with oneDNN switched off
    (torch.backends.mkldnn.enabled = False), with the CPU's "tf32" (not followed: strict fp32,
    more precise than asked), and in float64."""
    T, N, C, H, L, bi = case
    D = 2 if bi else 1
    dtype = torch.float64 if how == "float64" else torch.float32
    ours = fusedgru.GRU(C, H, num_layers=L, bidirectional=bi).to(dtype)
    x, hx = torch.randn(T, N, C, dtype=dtype), torch.randn(L * D, N, H, dtype=dtype)
    go, gh = torch.randn(T, N, D * H, dtype=dtype), torch.randn(L * D, N, H, dtype=dtype)
    with torch.no_grad():
        strict_inference = ours(x, hx)
    strict = forward_and_grads(ours, x, hx, go, gh)
    matmul_precision("tf32" if how == "tf32" else "bf16")
    with torch.backends.mkldnn.flags(enabled=how != "mkldnn-off"):
        with torch.no_grad():
            for a, b in zip(ours(x, hx), strict_inference, strict=True):
                assert torch.equal(a, b)
        for a, b in zip(forward_and_grads(ours, x, hx, go, gh), strict, strict=True):
            assert torch.equal(a, b)


def test_medium_matmul_precision_is_the_same_mode(matmul_precision):
    """torch.set_float32_matmul_precision("medium") sets the bf16 matmul precision: ours then
    rounds as under the flag, bitwise."""
    ours = fusedgru.GRU(64, 64)
    x = torch.randn(9, 5, 64)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        with torch.no_grad():
            medium = ours(x)
    finally:
        torch.set_float32_matmul_precision(before)
    matmul_precision("bf16")
    with torch.no_grad():
        bf16 = ours(x)
    for a, b in zip(medium, bf16, strict=True):
        assert torch.equal(a, b)
