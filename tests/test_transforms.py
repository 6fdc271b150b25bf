"""Forward-mode AD and the torch.func transforms (jvp, jacfwd, grad, vmap(grad) per-sample
gradients, hessian) through fusedgru's layers, against independent implementations: nn.GRU,
nn.GRUCell, F.conv1d and central finite differences, in float64."""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from gru_testing import DEVICES, TOL, assert_close, pair
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

import fusedgru

DT = torch.float64


def tangents_like(params):
    return {k: torch.randn_like(v) for k, v in params.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_jvp_matches_nn_gru(device, bidirectional):
    ref, ours = pair("cpu", DT, 3, 5, num_layers=2, bidirectional=bidirectional)
    ours.to(device)
    x = torch.randn(7, 4, 3, dtype=DT)
    hx = torch.randn(2 * (2 if bidirectional else 1), 4, 5, dtype=DT)
    params = dict(ref.named_parameters())
    tx, th, tp = torch.randn_like(x), torch.randn_like(hx), tangents_like(params)

    def run(module, dev):
        def f(p, xx, hh):
            return functional_call(module, p, (xx, hh))
        p = {k: v.detach().to(dev) for k, v in params.items()}
        t = {k: v.to(dev) for k, v in tp.items()}
        return jvp(f, (p, x.to(dev), hx.to(dev)), (t, tx.to(dev), th.to(dev)))

    (out_r, h_r), (tout_r, th_r) = run(ref, "cpu")
    (out_o, h_o), (tout_o, th_o) = run(ours, device)
    for a, b, what in ((out_o, out_r, "output"), (h_o, h_r, "h_n"), (tout_o, tout_r, "d output"),
                       (th_o, th_r, "d h_n")):
        assert_close(a.cpu(), b, TOL[DT], what)


@pytest.mark.parametrize("device", DEVICES)
def test_forward_ad_dual_input_through_gru_gru_cell_and_conv(device):
    """Dual tensors with no requires_grad anywhere: the tangent must still come through."""
    torch_gru, gru = pair("cpu", DT, 4, 6, batch_first=True)
    gru.to(device).requires_grad_(False)
    cell_ref = nn.GRUCell(4, 6).to(dtype=DT)
    cell = fusedgru.GRUCell(4, 6).to(device, DT).requires_grad_(False)
    cell.load_state_dict(cell_ref.state_dict())
    x, tx = torch.randn(2, 5, 4, dtype=DT), torch.randn(2, 5, 4, dtype=DT)
    w = torch.randn(4, 3, dtype=DT)
    with fwAD.dual_level():
        outs = {
            "gru": (gru(fwAD.make_dual(x.to(device), tx.to(device)))[0],
                    torch_gru(fwAD.make_dual(x, tx))[0]),
            "cell": (cell(fwAD.make_dual(x[:, 0].to(device), tx[:, 0].to(device))),
                     cell_ref(fwAD.make_dual(x[:, 0], tx[:, 0]))),
            "conv": (fusedgru.causal_conv1d(  # a channel-last (N, C, L) view
                         fwAD.make_dual(x.to(device), tx.to(device)).transpose(1, 2),
                         w.to(device), dilation=2, activation="silu"),
                     F.silu(F.conv1d(F.pad(fwAD.make_dual(x, tx).transpose(1, 2), (4, 0)),
                                     w[:, None], dilation=2, groups=4))),
        }
        for name, (ours, theirs) in outs.items():
            o, r = fwAD.unpack_dual(ours), fwAD.unpack_dual(theirs)
            assert o.tangent is not None, f"{name}: tangent dropped"
            assert_close(o.primal.cpu(), r.primal, TOL[DT], name)
            assert_close(o.tangent.cpu(), r.tangent, TOL[DT], f"{name} tangent")


@pytest.mark.parametrize("device", DEVICES)
def test_jvp_of_layer_norm_gru_matches_finite_differences(device):
    m = fusedgru.LayerNormGRU(3, 4, bidirectional=True).to(device, DT)
    for p in m.parameters():  # move the LN affine parameters off their ones/zeros init
        p.data.add_(0.1 * torch.randn_like(p))
    x, t = torch.randn(6, 2, 3, device=device, dtype=DT), torch.randn(6, 2, 3, device=device,
                                                                     dtype=DT)
    out, tout = jvp(lambda xx: m(xx)[0], (x,), (t,))
    assert_close(out, m(x)[0].detach(), TOL[DT], "primal")
    # The exact check: under forward-mode AD the module runs its pure-PyTorch reference, while
    # reverse mode runs the fused ops' backward; J t from the full Jacobian built row by row in
    # reverse mode must equal the tangent to rounding.
    jac = torch.autograd.functional.jacobian(lambda xx: m(xx)[0], x)
    assert_close(tout, (jac.reshape(out.numel(), x.numel()) @ t.reshape(-1)).view_as(out),
                 TOL[DT], "tangent vs the reverse-mode Jacobian")
    # And an independent sanity check by central differences, whose truncation and rounding
    # errors (~eps^2 and ~1e-16 / eps of the outputs' scale) stay far below this bound.
    eps = 1e-6
    with torch.no_grad():
        fd = (m(x + eps * t)[0] - m(x - eps * t)[0]) / (2 * eps)
    assert_close(tout, fd, 1e-6, "tangent vs central differences")


@pytest.mark.parametrize("device", DEVICES)
def test_per_sample_gradients_with_vmap_of_grad(device):
    """torch.func.vmap(torch.func.grad(...)): per-sample weight gradients (what DP-SGD needs),
    equal to one autograd call per sample. nn.GRU cannot run this."""
    _, gru = pair(device, DT, 3, 5, batch_first=True)
    params = {k: v.detach() for k, v in gru.named_parameters()}
    x, y = torch.randn(4, 6, 3, device=device, dtype=DT), torch.randn(4, 5, device=device,
                                                                     dtype=DT)

    def loss(p, xi, yi):
        _, h = functional_call(gru, p, (xi[None],))
        return ((h[0, 0] - yi) ** 2).sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(x.shape[0]):
        expected = torch.autograd.grad(
            ((gru(x[i:i + 1])[1][0, 0] - y[i]) ** 2).sum(), list(gru.parameters()))
        for (name, got), exp in zip(per_sample.items(), expected):
            assert_close(got[i], exp, TOL[DT], f"sample {i} {name}")


@pytest.mark.parametrize("device", DEVICES)
def test_per_sample_gradients_with_per_sample_lengths(device):
    """vmap(grad(...)) over padded samples of two rows and their own lengths (DP-SGD on
    variable-length sequences): each sample's outputs, h_n and weight gradients equal nn.GRU's
    on its rows cut to their lengths. Out-of-range per-sample lengths are refused as in a plain
    call."""
    ref, gru = pair(device, DT, 3, 5, batch_first=True, bidirectional=True)
    # Sorted or not; after each sample's rows are sorted by length, all samples' lengths
    # together read as sorted rows: the reference must not take them for one sample's.
    T, lengths = 6, torch.tensor([[3, 6], [5, 2], [4, 4], [1, 3]])
    params = {k: v.detach() for k, v in gru.named_parameters()}
    x = torch.randn(4, 2, T, 3, device=device, dtype=DT)
    go = torch.randn(4, 2, T, 10, device=device, dtype=DT)

    def loss(p, xi, li, gi):
        out, h = functional_call(gru, p, (xi,), {"lengths": li})
        return (out * gi).sum() + (h ** 2).sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, x, lengths, go)
    outs = vmap(lambda xi, li: gru(xi, lengths=li)[0])(x, lengths)
    for i in range(4):
        total = 0
        for row, n in enumerate(lengths[i].tolist()):
            out, h = ref(x[i, row:row + 1, :n].cpu())
            assert_close(outs[i, row, :n], out[0].detach(), TOL[DT], f"sample {i} output")
            assert torch.all(outs[i, row, n:] == 0), f"sample {i}: output past its length"
            total = total + (out * go[i, row:row + 1, :n].cpu()).sum() + (h ** 2).sum()
        expected = torch.autograd.grad(total, list(ref.parameters()))
        for (name, got), exp in zip(per_sample.items(), expected, strict=True):
            assert_close(got[i], exp, TOL[DT], f"sample {i} {name}")
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T\] = \[0, 6\], got 7 "
                                         r"among vmap's per-sample lengths"):
        vmap(grad(loss), in_dims=(None, 0, 0, 0))(params, x, lengths + 1, go)


@pytest.mark.parametrize("device", DEVICES)
def test_vmap_over_independent_sequences_equals_batching(device):
    ref, gru = pair(device, DT, 3, 5)
    x = torch.randn(4, 7, 1, 3, device=device, dtype=DT)  # 4 independent [T, 1, C] sequences
    out = vmap(lambda xi: gru(xi)[0])(x)
    expected = gru(x.squeeze(2).transpose(0, 1))[0].transpose(0, 1).unsqueeze(2)
    assert_close(out, expected.detach(), TOL[DT], "vmap")


def test_hessian_of_gru_matches_double_backward_of_nn_gru():
    ref, gru = pair("cpu", DT, 2, 3)
    x = torch.randn(4, 1, 2, dtype=DT)

    def scalar(module):
        return lambda xx: (module(xx)[0] ** 2).sum() + module(xx)[1].sum()

    h_ours = torch.func.hessian(scalar(gru))(x)
    h_ref = torch.autograd.functional.hessian(scalar(ref), x)
    assert_close(h_ours, h_ref, TOL[DT], "hessian")


def test_fused_ops_still_run_outside_transforms():
    """The routing to the torch-op references happens only under the transforms."""
    gru = fusedgru.GRU(3, 4)
    x = torch.randn(5, 2, 3, requires_grad=True)
    with torch.profiler.profile() as prof:
        gru(x)[0].sum().backward()
        fusedgru.causal_conv1d(x.transpose(1, 2).detach(), torch.randn(3, 2))
    names = {e.key for e in prof.key_averages()}
    assert {"fusedgru::gru_forward", "fusedgru::gru_backward",
            "fusedgru::causal_conv1d_fwd"} <= names
