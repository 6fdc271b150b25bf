"""Property-based tests (hypothesis): drawn configurations of fusedgru.GRU against torch.nn.GRU
(outputs, h_n and every gradient) and of the causal conv against F.conv1d.

The number of examples comes from the hypothesis profile (tests/conftest.py: "ci" by default,
FUSEDGRU_HYPOTHESIS_PROFILE=deep for a long run); the examples are seeded with
FUSEDGRU_TEST_SEED. Every tensor of an example comes from a generator seeded by a drawn
integer, so hypothesis can replay and shrink a failing example exactly.

Tolerances: in float64, |ours - reference| <= 1e-10 * max(1, |reference|). In float32 the bound
is derived from the reference's own float32 error: both are measured against the reference run
in float64 on the same inputs, and ours may be at most twice as far off (+ 1e-6).
"""

import copy
import dataclasses
import math

import torch
import torch.nn.functional as F
from gru_testing import SEED, max_err
from hypothesis import given, seed, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fusedgru

EXAMPLES = settings.default.max_examples  # the loaded profile's
F64_TOL = 1e-10


def check_close(what: str, ours: Tensor, ref: Tensor, ref32: Tensor | None = None,
                exact: Tensor | None = None) -> None:
    """float64: ours against ref at F64_TOL. float32: ours and ref32 (the reference in float32)
    both against exact (the reference in float64); ours at most twice ref32's error + 1e-6."""
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    assert ours.dtype == ref.dtype, f"{what}: dtype {ours.dtype} != {ref.dtype}"
    assert torch.isfinite(ours).all(), f"{what}: non-finite values"
    if exact is None:
        err = max_err(ours, ref)
        assert err <= F64_TOL, f"{what}: error {err:.3g} > {F64_TOL:.3g}"
    else:
        err, theirs = max_err(ours, exact), max_err(ref32, exact)
        assert err <= 2 * theirs + 1e-6, (
            f"{what}: error {err:.3g} against float64, nn's own float32 error {theirs:.3g}")


# ---- GRU ----

@dataclasses.dataclass
class GRUCase:
    num_layers: int
    bidirectional: bool
    batch_first: bool
    T: int
    N: int
    C: int
    H: int
    bias: bool
    mode: str  # "padded", "unbatched", "packed" (PackedSequence) or "lengths" (our keyword)
    lengths: list[int] | None
    enforce_sorted: bool
    lengths_as_list: bool
    with_hx: bool
    dtype: torch.dtype
    x_grad: bool
    hx_grad: bool
    param_grads: list[bool]  # requires_grad per parameter, in named_parameters order
    tensor_seed: int


@st.composite
def gru_cases(draw) -> GRUCase:
    num_layers, bidirectional = draw(st.integers(1, 2)), draw(st.booleans())
    bias = draw(st.booleans())
    mode = draw(st.sampled_from(["padded", "unbatched", "packed", "lengths"]))
    T = draw(st.integers(1, 6))
    N = 1 if mode == "unbatched" else draw(st.integers(1, 4))
    lengths, enforce_sorted = None, False
    if mode in ("packed", "lengths"):
        # PackedSequence needs lengths >= 1; our keyword takes 0 too (outputs zero, h_n = hx)
        low = 1 if mode == "packed" else 0
        lengths = draw(st.lists(st.integers(low, T), min_size=N, max_size=N))
        if mode == "packed":
            enforce_sorted = draw(st.booleans())
            if enforce_sorted:
                lengths.sort(reverse=True)
    with_hx = draw(st.booleans())
    D = 2 if bidirectional else 1
    return GRUCase(
        num_layers=num_layers, bidirectional=bidirectional, batch_first=draw(st.booleans()),
        T=T, N=N, C=draw(st.integers(1, 5)), H=draw(st.integers(1, 7)), bias=bias, mode=mode,
        lengths=lengths, enforce_sorted=enforce_sorted, lengths_as_list=draw(st.booleans()),
        with_hx=with_hx, dtype=draw(st.sampled_from([torch.float64, torch.float32])),
        x_grad=draw(st.booleans()), hx_grad=with_hx and draw(st.booleans()),
        param_grads=draw(st.lists(st.booleans(), min_size=num_layers * D * (4 if bias else 2),
                                  max_size=num_layers * D * (4 if bias else 2))),
        tensor_seed=draw(st.integers(0, 2**31 - 1)))


def reference_forward(ref: nn.GRU, case: GRUCase, x: Tensor, hx: Tensor | None):
    """nn.GRU's (output, h_n) for the case, output as a padded tensor (or PackedSequence)."""
    if case.mode in ("padded", "unbatched"):
        return ref(x, hx)
    batch_dim = 0 if case.batch_first else 1
    if case.mode == "packed":
        packed = pack_padded_sequence(x, torch.tensor(case.lengths), case.batch_first,
                                      case.enforce_sorted)
        return ref(packed, hx)
    # lengths: nn.GRU on the rows of nonzero length (packed); a row of length 0 has zero
    # outputs and keeps its initial state.
    D = 2 if case.bidirectional else 1
    lengths = torch.tensor(case.lengths)
    rows = lengths.nonzero().squeeze(1)
    h0 = hx if hx is not None else x.new_zeros((case.num_layers * D, case.N, case.H))
    out_shape = (case.N, case.T, D * case.H) if case.batch_first else (case.T, case.N,
                                                                      D * case.H)
    out = x.new_zeros(out_shape)
    if rows.numel() == 0:
        return out, h0
    packed = pack_padded_sequence(x.index_select(batch_dim, rows), lengths[rows],
                                  case.batch_first, enforce_sorted=False)
    p_out, p_h = ref(packed, h0.index_select(1, rows) if hx is not None else None)
    padded, _ = pad_packed_sequence(p_out, case.batch_first, total_length=case.T)
    return out.index_copy(batch_dim, rows, padded), h0.index_copy(1, rows, p_h)


def run(module: nn.Module, case: GRUCase, x: Tensor, hx: Tensor | None, grad_out: Tensor,
        grad_h: Tensor, ours: bool):
    """Forward (ours or nn.GRU's), then the gradients of <output, grad_out> + <h_n, grad_h>
    with respect to every leaf that requires grad: [output, h_n, *gradients]."""
    if not ours:
        out, h = reference_forward(module, case, x, hx)
    elif case.mode == "packed":
        out, h = module(pack_padded_sequence(x, torch.tensor(case.lengths), case.batch_first,
                                             case.enforce_sorted), hx)
    elif case.mode == "lengths":
        lengths = case.lengths if case.lengths_as_list else torch.tensor(case.lengths)
        out, h = module(x, hx, lengths=lengths)
    else:
        out, h = module(x, hx)
    data = out.data if isinstance(out, PackedSequence) else out
    leaves = [t for t in (x, hx) if t is not None and t.requires_grad]
    leaves += [p for p in module.parameters() if p.requires_grad]
    if not leaves:
        return [data, h]
    loss = (data * grad_out.to(data.dtype)).sum() + (h * grad_h.to(h.dtype)).sum()
    if not ours and not loss.requires_grad:
        # The reference with every length 0 never calls nn.GRU: no leaf reaches the loss.
        return [data, h, *(torch.zeros_like(t) for t in leaves)]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True)
    return [data, h, *grads]


@seed(SEED)
@settings(max_examples=2 * EXAMPLES)
@given(case=gru_cases())
def test_gru_matches_nn_gru(case: GRUCase):
    g = torch.Generator().manual_seed(case.tensor_seed)
    kwargs = dict(num_layers=case.num_layers, bidirectional=case.bidirectional,
                  batch_first=case.batch_first, bias=case.bias)
    ref = nn.GRU(case.C, case.H, **kwargs).to(case.dtype)
    bound = 1 / math.sqrt(case.H)  # nn.GRU's initialization, drawn from this case's generator
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64) * 2 * bound - bound)
    ours = fusedgru.GRU(case.C, case.H, **kwargs).to(case.dtype)
    ours.load_state_dict(ref.state_dict())
    for m in (ref, ours):
        for p, flag in zip(m.parameters(), case.param_grads, strict=True):
            p.requires_grad_(flag)

    D = 2 if case.bidirectional else 1
    if case.mode == "unbatched":
        x_shape, hx_shape = (case.T, case.C), (case.num_layers * D, case.H)
    else:
        x_shape = (case.N, case.T, case.C) if case.batch_first else (case.T, case.N, case.C)
        hx_shape = (case.num_layers * D, case.N, case.H)
    x64 = torch.randn(x_shape, generator=g, dtype=torch.float64)
    hx64 = torch.randn(hx_shape, generator=g, dtype=torch.float64) if case.with_hx else None

    def leaves(dtype):
        x = x64.to(dtype).requires_grad_(case.x_grad)
        hx = hx64.to(dtype).requires_grad_(case.hx_grad) if hx64 is not None else None
        return x, hx

    with torch.no_grad():
        out, h = reference_forward(ref, case, *leaves(case.dtype))
    out = out.data if isinstance(out, PackedSequence) else out
    grad_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grad_h = torch.randn(h.shape, generator=g, dtype=torch.float64)

    x, hx = leaves(case.dtype)
    got = run(ours, case, x, hx, grad_out, grad_h, ours=True)
    expected = run(ref, case, x, hx, grad_out, grad_h, ours=False)
    if case.dtype == torch.float32:
        exact = run(copy.deepcopy(ref).double(), case, *leaves(torch.float64), grad_out, grad_h,
                    ours=False)
    else:
        exact = [None] * len(expected)
    names = ["output", "h_n"] + [f"grad {i}" for i in range(len(expected) - 2)]
    assert len(got) == len(expected)
    for name, o, r, e in zip(names, got, expected, exact, strict=True):
        if e is None:
            check_close(name, o, r)
        else:
            check_close(name, o, r, r, e)


# ---- causal depthwise conv ----

@dataclasses.dataclass
class ConvCase:
    N: int
    C: int
    L: int
    W: int
    dilation: int
    bias: bool
    activation: str | None
    initial_state: bool
    layout: str  # "ncl", "channels_last" ((N, L, C) storage) or "strided"
    dtype: torch.dtype
    grads: list[bool]  # requires_grad of x, weight, bias, initial_state
    tensor_seed: int


@st.composite
def conv_cases(draw) -> ConvCase:
    return ConvCase(
        N=draw(st.integers(1, 3)), C=draw(st.integers(1, 5)), L=draw(st.integers(1, 24)),
        W=draw(st.integers(1, 5)), dilation=draw(st.integers(1, 4)), bias=draw(st.booleans()),
        activation=draw(st.sampled_from([None, "silu", "relu"])),
        initial_state=draw(st.booleans()),
        layout=draw(st.sampled_from(["ncl", "channels_last", "strided"])),
        dtype=draw(st.sampled_from([torch.float64, torch.float32])),
        grads=draw(st.lists(st.booleans(), min_size=4, max_size=4)),
        tensor_seed=draw(st.integers(0, 2**31 - 1)))


def conv_reference(x, w, b, s, dilation, activation):
    """F.conv1d over the history and the input (what causal_conv1d computes), and the final
    state: the last (W-1)*d inputs of history + input."""
    N, C, L = x.shape
    S = (w.shape[1] - 1) * dilation
    full = torch.cat([s if s is not None else x.new_zeros((N, C, S)), x], dim=2)
    y = F.conv1d(full, w.unsqueeze(1), b, dilation=dilation, groups=C)
    y = {None: y, "silu": F.silu(y), "relu": F.relu(y)}[activation]
    return y, full[:, :, full.shape[2] - S:]


@seed(SEED)
@settings(max_examples=3 * EXAMPLES)
@given(case=conv_cases())
def test_causal_conv_matches_f_conv1d(case: ConvCase):
    g = torch.Generator().manual_seed(case.tensor_seed)
    N, C, L, W, d = case.N, case.C, case.L, case.W, case.dilation
    S = (W - 1) * d

    def randn(*shape):
        return torch.randn(shape, generator=g, dtype=torch.float64)

    if case.layout == "channels_last":
        x64 = randn(N, L, C).transpose(1, 2)
    elif case.layout == "strided":
        x64 = randn(N, 2 * C, L + 3)[:, ::2, 3:]
    else:
        x64 = randn(N, C, L)
    w64, b64 = randn(C, W), randn(C) if case.bias else None
    s64 = randn(N, C, S) if case.initial_state else None
    gy = randn(N, C, L)

    def leaves(dtype):
        return [t.to(dtype).requires_grad_(flag) if t is not None else None
                for t, flag in zip((x64, w64, b64, s64), case.grads)]

    def conv(ours, dtype):
        x, w, b, s = args = leaves(dtype)
        if ours:
            y, final = fusedgru.causal_conv1d(x, w, b, dilation=d, activation=case.activation,
                                              initial_state=s, return_final_state=True)
        else:
            y, final = conv_reference(x, w, b, s, d, case.activation)
        wrt = [t for t in args if t is not None and t.requires_grad]
        grads = torch.autograd.grad(y, wrt, gy.to(dtype)) if wrt else ()
        return [y, final, *grads]

    got, expected = conv(True, case.dtype), conv(False, case.dtype)
    exact = conv(False, torch.float64) if case.dtype == torch.float32 else [None] * len(got)
    if case.layout == "channels_last":
        assert got[0].transpose(1, 2).is_contiguous(), "channel-last in, channel-last out"
    assert torch.equal(got[1], expected[1]), "final_state is a copy of the last inputs"
    names = ["y", "final_state"] + [f"grad {i}" for i in range(len(got) - 2)]
    for name, o, r, e in zip(names, got, expected, exact, strict=True):
        if e is None:
            check_close(name, o, r)
        else:
            check_close(name, o, r, r, e)

    # streaming: one causal_conv1d_update per step gives the same outputs and final state
    with torch.no_grad():
        x, w, b, s = (t.detach() if t is not None else None for t in leaves(case.dtype))
        state = s.clone() if s is not None else x.new_zeros((N, C, S))
        steps = torch.stack([fusedgru.causal_conv1d_update(x[:, :, t], state, w, b, dilation=d,
                                                           activation=case.activation)
                             for t in range(L)], dim=2)
    check_close("streamed y", steps, expected[0].detach(), expected[0].detach(),
                None if exact[0] is None else exact[0].detach())
    assert torch.equal(state, expected[1]), "streamed state equals final_state"
