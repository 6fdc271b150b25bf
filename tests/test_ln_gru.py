"""fusedgru.LayerNormGRU against its pure-PyTorch reference (fusedgru.reference.ln_gru_layer):
outputs and every gradient, gradcheck, opcheck, torch.compile, lengths, low precision."""

import pytest
import torch
from gru_testing import DEVICES, TOL, assert_close, assert_compile_matches_eager, rel_err
from torch.autograd import gradcheck
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedgru
from fusedgru import reference

NAMES = ("weight_ih", "weight_hh", "ln_ih_weight", "ln_ih_bias", "ln_hh_weight", "ln_hh_bias")


def randomize(m):
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("ln_"):
                p.copy_((1.0 if "weight" in name else 0.0) + 0.2 * torch.randn_like(p))
    return m


def reference_stack(m, x, hx, lengths=None):
    """Multi-layer, bidirectional LayerNormGRU from reference.ln_gru_layer (time-major x)."""
    D = 2 if m.bidirectional else 1
    h_n = []
    for layer in range(m.num_layers):
        outs = []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w = [getattr(m, n + sfx) for n in NAMES]
            out, h = reference.ln_gru_layer(x, hx[layer * D + d], *w, lengths=lengths,
                                            reverse=d == 1, eps=m.eps)
            outs.append(out)
            h_n.append(h)
        x = torch.cat(outs, 2)
    return x, torch.stack(h_n)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("T, N, C, H, L, bi, lengths", [
    (1, 1, 1, 1, 1, False, None),
    (7, 3, 17, 5, 2, True, None),
    (9, 40, 5, 96, 1, True, "random"),  # threaded CPU path (hidden units split across threads)
    (12, 4, 3, 130, 1, False, [12, 3, 7, 1]),
])
def test_parity_with_reference(device, dtype, T, N, C, H, L, bi, lengths):
    m = randomize(fusedgru.LayerNormGRU(C, H, num_layers=L, bidirectional=bi)).to(device, dtype)
    if lengths == "random":
        lengths = torch.randint(1, T + 1, (N,))
    elif lengths is not None:
        lengths = torch.tensor(lengths)
    x = torch.randn(T, N, C, device=device, dtype=dtype, requires_grad=True)
    hx = torch.randn(L * (2 if bi else 1), N, H, device=device, dtype=dtype, requires_grad=True)
    out, h = m(x, hx, lengths=lengths)
    ref_out, ref_h = reference_stack(m, x, hx, lengths)
    assert_close(out, ref_out, TOL[dtype], "output")
    assert_close(h, ref_h, TOL[dtype], "h_n")
    go, gh = torch.randn_like(out), torch.randn_like(h)
    leaves = [x, hx, *m.parameters()]
    g = torch.autograd.grad((out * go).sum() + (h * gh).sum(), leaves)
    g_ref = torch.autograd.grad((ref_out * go).sum() + (ref_h * gh).sum(), leaves)
    for (name, _), a, b in zip([("x", 0), ("hx", 0), *m.named_parameters()], g, g_ref,
                               strict=True):
        assert_close(a, b, TOL[dtype], f"grad {name}")


@pytest.mark.parametrize("device", DEVICES)
def test_packed_and_batch_first(device):
    dtype = torch.float64
    m = randomize(fusedgru.LayerNormGRU(3, 4, num_layers=2, batch_first=True)).to(device, dtype)
    x = torch.randn(3, 6, 3, device=device, dtype=dtype)
    lengths = torch.tensor([2, 6, 4])
    out, h = m(x, lengths=lengths)
    p_out, p_h = m(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    padded, _ = pad_packed_sequence(p_out, batch_first=True, total_length=6)
    assert_close(out, padded, TOL[dtype], "output")
    assert_close(h, p_h, TOL[dtype], "h_n")


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device):
    m = randomize(fusedgru.LayerNormGRU(2, 3, num_layers=2, bidirectional=True)).to(
        device, torch.float64)
    x = torch.randn(4, 3, 2, device=device, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(4, 3, 3, device=device, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]
    lengths = torch.tensor([4, 1, 3])

    def f(x, hx, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x, hx),
                                          {"lengths": lengths})

    assert gradcheck(f, (x, hx, *m.parameters()))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    kw = dict(device=device, dtype=torch.float32, requires_grad=True)
    T, N, C, H = 5, 3, 4, 6
    args = (torch.randn(T, N, C, **kw), torch.randn(N, H, **kw), torch.randn(3 * H, C, **kw),
            torch.randn(3 * H, H, **kw), torch.rand(3 * H, **kw), torch.randn(3 * H, **kw),
            torch.rand(3 * H, **kw), torch.randn(3 * H, **kw))
    for lengths, reverse in [(None, False), (torch.tensor([5, 2, 4], device=device), True)]:
        torch.library.opcheck(torch.ops.fusedgru.ln_gru_forward.default,
                              (*args, lengths, reverse, 1e-5, True))
    plain = [a.detach() for a in args]
    out, h, ws = torch.ops.fusedgru.ln_gru_forward(*plain, None, False, 1e-5, True)
    torch.library.opcheck(torch.ops.fusedgru.ln_gru_backward.default, (
        torch.randn_like(out), torch.randn_like(h), plain[0], plain[1], plain[2], plain[3],
        plain[4], plain[6], plain[7], None, out, ws, False, True, True))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    m = randomize(fusedgru.LayerNormGRU(5, 8, batch_first=True)).to(device)
    x = torch.randn(2, 9, 5, device=device, requires_grad=True)
    assert_compile_matches_eager(m, x)


@pytest.mark.parametrize("device, dtype", [
    ("cpu", torch.bfloat16), pytest.param("cuda", torch.bfloat16, marks=pytest.mark.cuda)])
def test_low_precision_error_within_twice_torch(device, dtype):
    m64 = randomize(fusedgru.LayerNormGRU(16, 32)).double()
    x = torch.randn(12, 8, 16, dtype=torch.float64)
    hx = torch.zeros(1, 8, 32, dtype=torch.float64)
    exact = reference_stack(m64, x, hx)[0]
    low = fusedgru.LayerNormGRU(16, 32).to(device, dtype)
    low.load_state_dict(m64.state_dict())
    ours = low(x.to(device, dtype))[0]
    torch_low = reference_stack(low, x.to(device, dtype), hx.to(device, dtype))[0]
    assert ours.dtype == dtype
    assert rel_err(ours, exact) <= 2 * rel_err(torch_low, exact) + 1e-3


@pytest.mark.parametrize("T, N", [(12, 8), (20, 2), (6, 3)])  # packed steps (T N >= 32), ATen's
def test_low_precision_gradients_within_twice_torch(T, N):
    """bf16 on the CPU, every gradient: at most 8 rows per step and 32 rows in all, the
    backward's per-step products run on fp32 panels of W_hh (csrc/cpu/packed_gemm.h,
    step_packing_pays), otherwise through ATen; both within twice the reference's bf16 error
    (its torch ops in bf16) of float64, plus 1e-2."""
    m64 = randomize(fusedgru.LayerNormGRU(16, 32, bidirectional=True)).double()
    x = torch.randn(T, N, 16, dtype=torch.float64)
    hx = torch.randn(2, N, 32, dtype=torch.float64)
    go = torch.randn(T, N, 64, dtype=torch.float64)
    low = fusedgru.LayerNormGRU(16, 32, bidirectional=True).to(torch.bfloat16)
    low.load_state_dict(m64.state_dict())

    def grads(m, dtype, fused):
        xi, hi = x.to(dtype).requires_grad_(), hx.to(dtype).requires_grad_()
        out, h_n = m(xi, hi) if fused else reference_stack(m, xi, hi)
        loss = (out * go.to(dtype)).sum() + h_n.sum()
        return torch.autograd.grad(loss, [xi, hi, *m.parameters()])

    exact = grads(m64, torch.float64, False)
    names = ["input", "hx", *(n for n, _ in m64.named_parameters())]
    for name, o, t, e in zip(names, grads(low, torch.bfloat16, True),
                             grads(low, torch.bfloat16, False), exact, strict=True):
        assert o.dtype == torch.bfloat16, name
        assert rel_err(o, e) <= 2 * rel_err(t, e) + 1e-2, \
            f"{name}: {rel_err(o, e):.3g} against the reference's {rel_err(t, e):.3g}"


def test_double_backward_is_refused_clearly():
    m = fusedgru.LayerNormGRU(2, 3).double()
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    out, _ = m(x)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(out.sum(), x, create_graph=True)


def test_constructor_and_state_dict():
    m = fusedgru.LayerNormGRU(4, 5, num_layers=2, bidirectional=True)
    names = [n for n, _ in m.named_parameters()]
    assert "ln_hh_bias_l1_reverse" in names and "bias_ih_l0" not in names
    assert torch.equal(m.ln_ih_weight_l0, torch.ones(15))
    assert torch.equal(m.ln_hh_bias_l1, torch.zeros(15))
    m2 = fusedgru.LayerNormGRU(4, 5, num_layers=2, bidirectional=True)
    m2.load_state_dict(m.state_dict())
    with pytest.raises(ValueError, match="eps must be positive"):
        fusedgru.LayerNormGRU(4, 5, eps=0)
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        fusedgru.LayerNormGRU(4, 0)
