"""The registered ops: torch.library.opcheck on every op (schema, fake kernel, autograd
registration and AOT dispatch, what torch.compile relies on), and that fusedgru.GRU runs them
(the profiler sees the fused ops, no workspace without grad)."""

import pytest
import torch
from gru_testing import DEVICES

import fusedgru


def gru_args(device, dtype=torch.float32, T=5, N=3, C=4, H=6, bias=True, lengths=None,
             batch_major=False, requires_grad=True):
    def t(*shape):
        return torch.randn(*shape, device=device, dtype=dtype, requires_grad=requires_grad)

    x = t(T, N, C)
    if batch_major:
        x = t(N, T, C).transpose(0, 1)
    lens = torch.tensor(lengths, device=device) if lengths else None
    b_ih, b_hh = (t(3 * H), t(3 * H)) if bias else (None, None)
    return x, t(N, H), t(3 * H, C), t(3 * H, H), b_ih, b_hh, lens


FORWARD_CASES = {
    "plain": dict(),
    "no bias, reverse": dict(bias=False, reverse=True),
    "lengths": dict(lengths=[5, 2, 4]),
    "unsorted lengths, reverse": dict(lengths=[1, 5, 3], reverse=True),
    "batch-major": dict(batch_major=True),
    "odd sizes": dict(T=1, N=1, C=1, H=1),
    "float64": dict(dtype=torch.float64),
    "bfloat16": dict(dtype=torch.bfloat16),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(FORWARD_CASES))
def test_opcheck_gru_forward(device, case):
    kw = dict(FORWARD_CASES[case])
    reverse = kw.pop("reverse", False)
    args = gru_args(device, **kw)
    torch.library.opcheck(torch.ops.fusedgru.gru_forward.default, (*args, reverse, True))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", [c for c in FORWARD_CASES if "reverse" not in c])
@pytest.mark.parametrize("need_workspace", [True, False], ids=["train", "inference"])
def test_opcheck_gru_forward_bidirectional(device, case, need_workspace):
    kw = dict(FORWARD_CASES[case])
    x, hx, *fwd, lens = gru_args(device, requires_grad=need_workspace, **kw)
    _, hx_r, *rev, _ = gru_args(device, requires_grad=need_workspace, **kw)
    hx2 = torch.stack([hx, hx_r]).detach().requires_grad_(need_workspace)
    torch.library.opcheck(torch.ops.fusedgru.gru_forward_bidirectional.default,
                          (x, hx2, *fwd, *rev, lens, need_workspace))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", [c for c in FORWARD_CASES if "reverse" not in c])
def test_bidirectional_op_is_both_directions_side_by_side(device, case):
    """gru_forward_bidirectional's output halves, h_n and workspaces are gru_forward's of each
    direction to the bit, the output in the input's layout (batch-major stays batch-major)."""
    kw = dict(FORWARD_CASES[case])
    x, hx, *fwd, lens = gru_args(device, requires_grad=False, **kw)
    _, hx_r, *rev, _ = gru_args(device, requires_grad=False, **kw)
    out, h_n, ws, ws_r = torch.ops.fusedgru.gru_forward_bidirectional(
        x, torch.stack([hx, hx_r]), *fwd, *rev, lens, True)
    out0, h0, ws0 = torch.ops.fusedgru.gru_forward(x, hx, *fwd, lens, False, True)
    out1, h1, ws1 = torch.ops.fusedgru.gru_forward(x, hx_r, *rev, lens, True, True)
    assert torch.equal(out, torch.cat([out0, out1], 2))
    assert torch.equal(h_n, torch.stack([h0, h1]))
    assert torch.equal(ws, ws0) and torch.equal(ws_r, ws1)
    assert (out.transpose(0, 1) if kw.get("batch_major") else out).is_contiguous()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["plain", "lengths", "batch-major", "float64"])
@pytest.mark.parametrize("with_grad_ws", [False, True])
def test_opcheck_gru_backward_bidirectional(device, case, with_grad_ws):
    kw = dict(FORWARD_CASES[case])
    x, hx, *fwd, lens = gru_args(device, requires_grad=False, **kw)
    _, hx_r, *rev, _ = gru_args(device, requires_grad=False, **kw)
    hx2 = torch.stack([hx, hx_r])
    out, h, ws, ws_r = torch.ops.fusedgru.gru_forward_bidirectional(x, hx2, *fwd, *rev, lens,
                                                                      True)
    go, gh = torch.randn_like(out), torch.randn_like(h)
    gws = [torch.randn_like(ws), None] if with_grad_ws else [None, None]  # one direction's only
    tensors = [go, gh, *gws, x, hx2, *fwd[:2], *rev[:2], lens, out, ws, ws_r]
    tensors = [t.detach().requires_grad_() if t is not None and t.is_floating_point() else t
               for t in tensors]
    for need_input, need_weight in [(True, True), (False, True), (True, False)]:
        torch.library.opcheck(torch.ops.fusedgru.gru_backward_bidirectional.default,
                              (*tensors, True, need_input, need_weight))
    grads = torch.ops.fusedgru.gru_backward_bidirectional(*tensors, True, True, True)
    H = hx.shape[1]
    alone = [torch.ops.fusedgru.gru_backward(
        go[..., d * H:(d + 1) * H], gh[d], gws[d], x, hx2[d], *w[:2], lens,
        out[..., d * H:(d + 1) * H], (ws, ws_r)[d], d == 1, True, True, True)
        for d, w in enumerate((fwd, rev))]
    want = [alone[0][0] + alone[1][0], torch.stack([alone[0][1], alone[1][1]]),
            *alone[0][2:], *alone[1][2:]]
    for g, w in zip(grads, want, strict=True):
        assert torch.equal(g, w)


@pytest.mark.parametrize("device", DEVICES)
def test_bidirectional_ops_name_the_bad_argument(device):
    """Errors name the argument: a one-direction hx, a reverse-direction tensor that does not
    match its forward counterpart (not the forward argument's name), a short weights tuple."""
    x, hx, *w, lens = gru_args(device, requires_grad=False)
    hx2 = torch.stack([hx, hx])
    with pytest.raises(RuntimeError, match=r"hx must have shape \(2, N, H\)"):
        torch.ops.fusedgru.gru_forward_bidirectional(x, hx, *w, *w, lens, False)
    w_hh_bad = torch.randn(w[1].shape[0] + 3, w[1].shape[1], device=device)
    for i, name in ((1, "weight_hh_reverse"), (2, "bias_ih_reverse")):
        bad = list(w)
        bad[i] = w_hh_bad if i == 1 else torch.randn(5, device=device)
        with pytest.raises(RuntimeError, match=f"{name} must have the shape of its forward"):
            torch.ops.fusedgru.gru_forward_bidirectional(x, hx2, *w, *bad, lens, False)
    with pytest.raises(RuntimeError, match="weight_ih_reverse must be Float"):
        torch.ops.fusedgru.gru_forward_bidirectional(x, hx2, *w, w[0].double(), *w[1:], lens,
                                                     False)
    out, h, ws, ws_r = torch.ops.fusedgru.gru_forward_bidirectional(x, hx2, *w, *w, lens, True)
    args = [torch.randn_like(out), torch.randn_like(h), None, None, x, hx2, *w[:2], *w[:2], lens,
            out, ws, ws_r[:-1], True, True, True]
    with pytest.raises(RuntimeError, match="workspace_reverse must have the shape"):
        torch.ops.fusedgru.gru_backward_bidirectional(*args)
    with pytest.raises(ValueError, match="reverse_weights must be"):
        fusedgru._ops.gru_forward_bidirectional(x, hx2, w, w[:3])
    ours = fusedgru._ops.gru_forward_bidirectional(x, hx2, w[:2], w[:2])  # no biases
    want = torch.ops.fusedgru.gru_forward_bidirectional(x, hx2, *w[:2], None, None, *w[:2], None,
                                                        None, None, False)
    assert all(torch.equal(a, b) for a, b in zip(ours, want))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_gru_forward_inference(device):
    args = gru_args(device, requires_grad=False)
    torch.library.opcheck(torch.ops.fusedgru.gru_forward.default, (*args, False, False))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["plain", "lengths", "batch-major", "float64"])
@pytest.mark.parametrize("with_grad_ws", [False, True])
def test_opcheck_gru_backward(device, case, with_grad_ws):
    kw = dict(FORWARD_CASES[case])
    x, hx, w_ih, w_hh, b_ih, b_hh, lens = gru_args(device, requires_grad=False, **kw)
    out, h, ws = torch.ops.fusedgru.gru_forward(x, hx, w_ih, w_hh, b_ih, b_hh, lens, False, True)
    go, gh = torch.randn_like(out), torch.randn_like(h)
    gws = torch.randn_like(ws) if with_grad_ws else None
    tensors = [go, gh, gws, x, hx, w_ih, w_hh, lens, out, ws]
    tensors = [t.detach().requires_grad_() if t is not None and t.is_floating_point() else t
               for t in tensors]
    for need_input, need_weight in [(True, True), (False, True), (True, False)]:
        torch.library.opcheck(torch.ops.fusedgru.gru_backward.default,
                              (*tensors, False, True, need_input, need_weight))


def test_forward_and_backward_run_fused_ops():
    m = fusedgru.GRU(8, 16, num_layers=2, bidirectional=True)
    x = torch.randn(10, 4, 8, requires_grad=True)
    with torch.profiler.profile() as prof:
        out, h = m(x)
        (out.sum() + h.sum()).backward()
    names = [e.name for e in prof.events()]
    # Per layer both directions in one call, forward and backward.
    assert names.count("fusedgru::gru_forward_bidirectional") == 2
    assert names.count("fusedgru::gru_backward_bidirectional") == 2
    assert names.count("fusedgru::gru_forward") == names.count("fusedgru::gru_backward") == 0
    assert not any(n in ("aten::sigmoid", "aten::tanh", "aten::gru_cell") for n in names)


def test_no_workspace_without_grad():
    m = fusedgru.GRU(8, 16)
    x = torch.randn(10, 4, 8)
    with torch.no_grad():
        out, h = m(x)
    assert not out.requires_grad
    o2, ws = torch.ops.fusedgru.gru_forward(x, torch.zeros(4, 16), m.weight_ih_l0, m.weight_hh_l0,
                                            m.bias_ih_l0, m.bias_hh_l0, None, False, False)[::2]
    assert ws.numel() == 0


# fusedgru::gru, a whole GRU in one op (csrc/gru_layers.cpp): (num_layers, bidirectional,
# batch_first, bias, unbatched, T, N).
STACK_CASES = {
    "one layer": (1, False, False, True, False, 5, 3),
    "two layers, bidirectional": (2, True, False, True, False, 4, 17),
    "three layers, batch_first, no bias": (3, False, True, False, False, 3, 2),
    "unbatched, bidirectional": (2, True, True, True, True, 6, None),
    "one step, one row": (1, False, False, True, False, 1, 1),
}


def stack_args(device, dtype, case, requires_grad):
    L, bidirectional, batch_first, bias, unbatched, T, N = STACK_CASES[case]
    C, H = 7, 5
    ref = torch.nn.GRU(C, H, L, bias=bias, batch_first=batch_first,
                       bidirectional=bidirectional).to(device, dtype)
    D = 2 if bidirectional else 1
    shape = (T, C) if unbatched else (N, T, C) if batch_first else (T, N, C)
    x = torch.randn(*shape, device=device, dtype=dtype)
    hx = torch.randn(L * D, *(() if unbatched else (N,)), H, device=device, dtype=dtype)
    x.requires_grad_(requires_grad)
    hx.requires_grad_(requires_grad)
    params = [p.detach().clone().requires_grad_(requires_grad) for p in ref._flat_weights]
    return ref, (x, hx, params, bias, L, bidirectional, batch_first)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(STACK_CASES))
@pytest.mark.parametrize("requires_grad", [True, False], ids=["train", "inference"])
def test_opcheck_gru_stack(device, case, requires_grad):
    _, args = stack_args(device, torch.float32, case, requires_grad)
    torch.library.opcheck(torch.ops.fusedgru.gru.default, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(STACK_CASES))
def test_gru_stack_equals_nn_gru_with_every_gradient(device, case):
    """Outputs and the gradients of input, hx and every weight against nn.GRU (weights copied,
    float64), through the op's composition of the per-layer ops."""
    ref, args = stack_args(device, torch.float64, case, True)
    x, hx, params = args[:3]
    out, h_n = torch.ops.fusedgru.gru(*args)
    with torch.no_grad():
        for p, q in zip(ref._flat_weights, params):
            p.copy_(q)
    want = ref(x, hx)
    go, gh = torch.randn_like(out), torch.randn_like(h_n)
    ours = torch.autograd.grad((out, h_n), [x, hx, *params], (go, gh))
    theirs = torch.autograd.grad(want, [x, hx, *ref._flat_weights], (go, gh))
    for a, b, what in zip((out, h_n, *ours), (*want, *theirs),
                          ("output", "h_n", "x", "hx", *ref._flat_weights_names)):
        assert a.shape == b.shape, what
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=what)


@pytest.mark.parametrize("case", ["two layers, bidirectional", "unbatched, bidirectional"])
def test_gru_stack_gradcheck(case):
    _, (x, hx, params, *flags) = stack_args("cpu", torch.float64, case, True)
    assert torch.autograd.gradcheck(
        lambda x, hx, *p: torch.ops.fusedgru.gru(x, hx, list(p), *flags), (x, hx, *params))


def test_gru_stack_compiles_fullgraph():
    _, args = stack_args("cpu", torch.float32, "two layers, bidirectional", False)
    compiled = torch.compile(torch.ops.fusedgru.gru.default, fullgraph=True, backend="aot_eager")
    for a, b in zip(compiled(*args), torch.ops.fusedgru.gru(*args)):
        assert torch.equal(a, b)


def test_gru_stack_names_the_bad_argument():
    _, (x, hx, params, bias, L, bidirectional, batch_first) = stack_args(
        "cpu", torch.float32, "two layers, bidirectional", False)
    op = torch.ops.fusedgru.gru
    with pytest.raises(RuntimeError, match="expected 16 parameters for num_layers=2"):
        op(x, hx, params[:-1], bias, L, bidirectional, batch_first)
    with pytest.raises(RuntimeError, match=r"hx must have shape \(num_layers \* D, N, H\)"):
        op(x, hx[:3], params, bias, L, bidirectional, batch_first)
    with pytest.raises(RuntimeError, match="hx must have 3 dimensions"):
        op(x, hx[0], params, bias, L, bidirectional, batch_first)
    with pytest.raises(RuntimeError, match="input must have 3 dimensions"):
        op(x[None], hx, params, bias, L, bidirectional, batch_first)
    with pytest.raises(RuntimeError, match="num_layers must be at least 1"):
        op(x, hx, [], bias, 0, bidirectional, batch_first)
    with pytest.raises(RuntimeError, match="weight_ih must have shape"):
        op(x[..., :3], hx, params, bias, L, bidirectional, batch_first)
