"""float64 gradcheck (and gradgradcheck) of the module, the functional form and each op."""

import pytest
import torch
from gru_testing import DEVICES
from torch.autograd import gradcheck, gradgradcheck

import fusedgru

# (T, N, C, H, num_layers, bidirectional, bias, lengths)
CASES = [
    (1, 1, 1, 1, 1, False, True, None),
    (4, 3, 2, 3, 2, True, True, None),
    (5, 2, 3, 4, 1, False, False, None),
    (6, 3, 2, 3, 2, True, True, [6, 1, 4]),
    (5, 4, 3, 2, 1, True, False, [2, 5, 5, 3]),
]


def case_id(c):
    T, N, C, H, L, bi, b, lens = c
    return f"T{T}-N{N}-C{C}-H{H}-L{L}" + ("-bi" if bi else "") + ("" if b else "-nobias") + (
        "-lengths" if lens else "")


def module_inputs(device, case):
    T, N, C, H, L, bi, bias, lens = case
    m = fusedgru.GRU(C, H, num_layers=L, bidirectional=bi, bias=bias).to(device, torch.float64)
    x = torch.randn(T, N, C, device=device, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(L * (2 if bi else 1), N, H, device=device, dtype=torch.float64,
                     requires_grad=True)
    lengths = torch.tensor(lens) if lens else None

    def f(x, hx, *params):
        return fusedgru.gru(x, hx, params, bias, L, 0.0, False, bi, False, lengths=lengths)

    return f, (x, hx, *m.parameters())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradcheck_module(device, case):
    f, inputs = module_inputs(device, case)
    assert gradcheck(f, inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES[1:4], ids=case_id)
def test_gradgradcheck_module(device, case):
    f, inputs = module_inputs(device, case)
    assert gradgradcheck(f, inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_gradcheck_nn_module_call(device, batch_first):
    m = fusedgru.GRU(2, 3, num_layers=2, batch_first=batch_first).to(device, torch.float64)
    T, N = 3, 4
    x = torch.randn((N, T, 2) if batch_first else (T, N, 2), device=device, dtype=torch.float64,
                    requires_grad=True)
    hx = torch.randn(2, N, 3, device=device, dtype=torch.float64, requires_grad=True)
    params = dict(m.named_parameters())

    def f(x, hx, *ps):
        return torch.func.functional_call(m, dict(zip(params, ps)), (x, hx))

    assert gradcheck(f, (x, hx, *params.values()))


def op_inputs(device, T=4, N=3, C=2, H=3, lengths=None):
    kw = dict(device=device, dtype=torch.float64, requires_grad=True)
    return (torch.randn(T, N, C, **kw), torch.randn(N, H, **kw), torch.randn(3 * H, C, **kw),
            torch.randn(3 * H, H, **kw), torch.randn(3 * H, **kw), torch.randn(3 * H, **kw))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, [4, 1, 3]])
def test_gradcheck_gru_forward_op(device, reverse, lengths):
    inputs = op_inputs(device)
    lens = torch.tensor(lengths, device=device) if lengths else None

    def f(*args):
        out, h, ws = torch.ops.fusedgru.gru_forward(*args, lens, reverse, True)
        return out, h, ws

    assert gradcheck(f, inputs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [None, [4, 1, 3]])
def test_gradcheck_gru_backward_op(device, reverse, lengths):
    x, hx, w_ih, w_hh, b_ih, b_hh = op_inputs(device)
    lens = torch.tensor(lengths, device=device) if lengths else None
    with torch.no_grad():
        out, h, ws = torch.ops.fusedgru.gru_forward(x, hx, w_ih, w_hh, b_ih, b_hh, lens, reverse,
                                                    True)
    kw = dict(device=device, dtype=torch.float64, requires_grad=True)
    go, gh, gws = torch.randn(out.shape, **kw), torch.randn(h.shape, **kw), torch.randn(ws.shape,
                                                                                        **kw)
    out, ws = out.requires_grad_(), ws.requires_grad_()

    def f(go, gh, gws, x, hx, w_ih, w_hh, out, ws):
        return torch.ops.fusedgru.gru_backward(go, gh, gws, x, hx, w_ih, w_hh, lens, out, ws,
                                               reverse, True, True, True)

    assert gradcheck(f, (go, gh, gws, x, hx, w_ih, w_hh, out, ws))
