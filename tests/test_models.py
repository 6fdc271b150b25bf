"""fusedgru.models.CausalConvGRU: shapes, causality, streaming, gradients, compile."""

import pytest
import torch
from gru_testing import DEVICES, assert_compile_matches_eager
from torch.autograd import gradcheck

from fusedgru.models import CausalConvGRU


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("attention", [None, "causal", "pool"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_shapes(device, attention, batch_first):
    m = CausalConvGRU(5, 8, num_layers=2, attention=attention, num_heads=2,
                      batch_first=batch_first).to(device)
    x = torch.randn((3, 11, 5) if batch_first else (11, 3, 5), device=device)
    y = m(x)
    if attention == "pool":
        assert y.shape == (3, 8)
    else:
        assert y.shape == ((3, 11, 8) if batch_first else (11, 3, 8))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("attention", [None, "causal"])
def test_outputs_depend_only_on_the_past(device, attention):
    m = CausalConvGRU(4, 6, num_layers=3, kernel_size=3, dilation=2, attention=attention,
                      num_heads=3).to(device, torch.float64)
    x = torch.randn(2, 20, 4, device=device, dtype=torch.float64)
    y = m(x)
    for t0 in (0, 9, 19):
        x2 = x.clone()
        x2[:, t0 + 1:] = torch.randn_like(x2[:, t0 + 1:])
        y2 = m(x2)
        assert torch.equal(y2[:, :t0 + 1], y[:, :t0 + 1])
        if t0 < 19:
            assert not torch.allclose(y2[:, t0 + 1:], y[:, t0 + 1:])


@pytest.mark.parametrize("device", DEVICES)
def test_pool_ignores_padding(device):
    m = CausalConvGRU(4, 6, attention="pool").to(device, torch.float64)
    lengths = torch.tensor([9, 4, 1])
    x = torch.randn(3, 9, 4, device=device, dtype=torch.float64)
    y = m(x, lengths)
    x2 = x.clone()
    for i, n in enumerate(lengths.tolist()):
        x2[i, n:] = 1e3 * torch.randn_like(x2[i, n:])
    assert torch.allclose(m(x2, lengths), y, atol=1e-12)
    for i, n in enumerate(lengths.tolist()):  # each row alone, unpadded, gives the same vector
        assert torch.allclose(m(x[i:i + 1, :n]), y[i:i + 1], atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_layers, width", [(1, 5), (3, 6)])
@pytest.mark.parametrize("conv_activation", ["silu", None, "relu"])
def test_streaming_equals_full(device, num_layers, width, conv_activation):
    m = CausalConvGRU(width, 6, num_layers=num_layers, kernel_size=4, dilation=2, dropout=0.3,
                      conv_activation=conv_activation).to(device, torch.float64).eval()
    assert all(conv.activation == conv_activation for conv in m.convs)
    x = torch.randn(2, 15, width, device=device, dtype=torch.float64)
    y = m(x)
    with torch.no_grad():
        state = m.init_state(2)
        ys = []
        for t in range(15):
            y_t, state = m.step(x[:, t], state)
            ys.append(y_t)
    assert torch.allclose(torch.stack(ys, 1), y, rtol=0, atol=1e-12)
    with pytest.raises(RuntimeError, match="streaming needs attention=None"):
        CausalConvGRU(3, 4, attention="causal").init_state(1)
    with pytest.raises(ValueError, match="activation must be None, 'silu' or 'relu'"):
        CausalConvGRU(3, 4, conv_activation="gelu")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("attention", [None, "causal", "pool"])
def test_gradcheck_tiny_stack(device, attention):
    m = CausalConvGRU(2, 4, num_layers=2, kernel_size=3, attention=attention,
                      num_heads=2).to(device, torch.float64)
    x = torch.randn(2, 5, 2, device=device, dtype=torch.float64, requires_grad=True)
    params = dict(m.named_parameters())

    def f(x, *ps):
        return torch.func.functional_call(m, dict(zip(params, ps)), (x,))

    assert gradcheck(f, (x, *params.values()))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    m = CausalConvGRU(5, 8, attention="causal", num_heads=2).to(device)
    x = torch.randn(3, 10, 5, device=device, requires_grad=True)
    assert_compile_matches_eager(m, x)


@pytest.mark.parametrize("device", DEVICES)
def test_bfloat16(device):
    m = CausalConvGRU(5, 8, attention="pool")
    x = torch.randn(3, 10, 5)
    ref = m.double()(x.double())
    y = m.to(device, torch.bfloat16)(x.to(device, torch.bfloat16))
    assert y.dtype == torch.bfloat16
    assert ((y.double().cpu() - ref).norm() / ref.norm()) < 0.05


def test_bad_arguments():
    with pytest.raises(ValueError, match="attention must be"):
        CausalConvGRU(3, 4, attention="global")
    with pytest.raises(ValueError, match="not divisible"):
        CausalConvGRU(3, 6, attention="causal", num_heads=4)
    with pytest.raises(ValueError, match=r"dropout should be a number in range \[0, 1\]"):
        CausalConvGRU(3, 4, dropout=2.0)  # nn.GRU's check; it failed at the first forward
    m = CausalConvGRU(3, 4, num_layers=3)
    with torch.no_grad(), pytest.raises(ValueError, match="one .* pair per layer, 3, got 1"):
        m.step(torch.randn(2, 3), m.init_state(2)[:1])  # ran one layer, silently


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("attention", [None, "causal", "pool"])
def test_non_finite_padding_reaches_nothing(device, attention):
    """NaN and inf in the padding past lengths: the outputs and every gradient equal those of
    zero padding, bit for bit. With input_size == hidden_size the first block's residual
    carried the padding forward, and the attention's zero weights turned it into NaN in valid
    outputs (causal) and in the pooled vectors and gradients (pool), a length-0 row's too."""
    m = CausalConvGRU(6, 6, num_layers=2, attention=attention).to(device)
    lengths = torch.tensor([9, 4, 0], device=device)
    x = torch.randn(3, 9, 6, device=device)
    pad = torch.arange(9, device=device) >= lengths[:, None]
    runs = []
    for fill in (0.0, float("nan"), float("inf"), -float("inf")):
        xf = x.masked_fill(pad.unsqueeze(-1), fill).requires_grad_()
        y = m(xf, lengths)
        grads = torch.autograd.grad(y.square().sum(), [xf, *m.parameters()])
        runs.append((y, *grads))
    for run in runs[1:]:
        for got, want in zip(run, runs[0], strict=True):
            assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_pool_with_a_length_of_0_is_a_zero_vector_with_zero_gradients(device):
    """A sequence of length 0 pools to zeros, its inputs get zero gradients, and every other
    row (outputs and the parameters' gradients) is what it is without it in the batch."""
    m = CausalConvGRU(4, 6, attention="pool").to(device, torch.float64)
    x = torch.randn(3, 9, 4, device=device, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 6, device=device, dtype=torch.float64)
    y = m(x, torch.tensor([9, 0, 4]))
    assert torch.isfinite(y).all() and torch.equal(y[1], torch.zeros_like(y[1]))
    grads = torch.autograd.grad((y * g).sum(), [x, *m.parameters()])
    assert all(torch.isfinite(t).all() for t in grads)
    assert torch.equal(grads[0][1], torch.zeros_like(grads[0][1]))
    keep = [0, 2]
    x2 = x.detach()[keep].requires_grad_()
    y2 = m(x2, torch.tensor([9, 4]))
    grads2 = torch.autograd.grad((y2 * g[keep]).sum(), [x2, *m.parameters()])
    assert torch.allclose(y[keep], y2, rtol=0, atol=1e-12)
    assert torch.allclose(grads[0][keep], grads2[0], rtol=0, atol=1e-12)
    for a, b in zip(grads[1:], grads2[1:], strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    y_all_empty = m(x, [0, 0, 0])
    assert torch.equal(y_all_empty, torch.zeros_like(y_all_empty))


@pytest.mark.parametrize("lengths, exc, message", [
    ([9, 4], ValueError, r"lengths must have shape \(N,\) = \(3,\), got \(2,\)"),
    ([9, 4, 1, 1], ValueError, r"lengths must have shape \(N,\) = \(3,\), got \(4,\)"),
    ([[9, 4, 1]], ValueError, r"lengths must have shape \(N,\) = \(3,\), got \(1, 3\)"),
    ([9, 10, 1], ValueError, r"lengths must lie in \[0, T\] = \[0, 9\], got lengths\[1\] = 10"),
    ([9.0, 4.0, 1.0], TypeError, "lengths must hold integers"),
], ids=["too few", "too many", "2-D", "too long", "float"])
@pytest.mark.parametrize("attention", [None, "pool"])
def test_bad_lengths_are_refused(attention, lengths, exc, message):
    m = CausalConvGRU(4, 6, attention=attention)
    with pytest.raises(exc, match=message):
        m(torch.randn(3, 9, 4), lengths)
    with pytest.raises(exc, match=message):
        m(torch.randn(3, 9, 4), torch.tensor(lengths))


def test_lengths_as_a_list_equal_a_tensor():
    m = CausalConvGRU(4, 6, attention="pool").double()
    x = torch.randn(3, 9, 4, dtype=torch.float64)
    assert torch.equal(m(x, [9, 4, 1]), m(x, torch.tensor([9, 4, 1])))
    mt = CausalConvGRU(4, 6, batch_first=False).double()
    assert torch.equal(mt(x.transpose(0, 1), [9, 4, 1]), mt(x.transpose(0, 1),
                                                              torch.tensor([9, 4, 1])))
