"""torch.compile(fullgraph=True) traces models holding fusedgru.GRU with no graph break and gives
eager's outputs and gradients; torch.jit.trace records the fused ops. (torch.export:
test_beyond_cudnn.py; the compile checks of the other modules sit in their own files, all through
gru_testing.assert_compile_matches_eager.)"""

import copy

import pytest
import torch
from gru_testing import DEVICES, TOL, assert_close, assert_compile_matches_eager
from torch import nn

import fusedgru


class Tagger(nn.Module):
    def __init__(self, batch_first):
        super().__init__()
        self.emb = nn.Linear(5, 8)
        self.gru = fusedgru.GRU(8, 12, num_layers=2, bidirectional=True, batch_first=batch_first)
        self.head = nn.Linear(24, 3)

    def forward(self, x, hx=None):
        out, h = self.gru(torch.relu(self.emb(x)), hx)
        return self.head(out), h


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_compile_fullgraph_matches_eager(device, batch_first):
    torch._dynamo.reset()
    model = Tagger(batch_first).to(device)
    compiled = torch.compile(model, fullgraph=True)
    for T, N in [(7, 3), (4, 5)]:  # the second shape exercises recompilation / dynamic shapes
        x = torch.randn((N, T, 5) if batch_first else (T, N, 5), device=device,
                        requires_grad=True)
        hx = torch.randn(4, N, 12, device=device, requires_grad=True)
        assert_compile_matches_eager(model, x, hx, compiled=compiled,
                                     loss=lambda out: out[0].square().sum() + out[1].sum())


@pytest.mark.parametrize("device", DEVICES)
def test_compile_inference_no_graph_break(device):
    torch._dynamo.reset()
    model = Tagger(True).to(device).eval()
    x = torch.randn(2, 9, 5, device=device)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0
    with torch.no_grad():
        assert_compile_matches_eager(model, x)


@pytest.mark.parametrize("kind", ["GRU", "GRU-hx", "GRUCell", "GRUCell-hx", "LayerNormGRU",
                                  "CausalConv1d"])
def test_jit_trace_runs_the_fused_ops(kind):
    """torch.jit.trace with its default check (a second trace under no_grad must record the
    same graph, which the modules' lean inference paths once broke): the fused ops in the
    graph, eager's outputs at another length and batch, and eager's gradients."""
    dt = torch.float64
    if kind.startswith("GRUCell"):
        m = fusedgru.GRUCell(3, 4).to(dt)
        def args(n, t):
            return (torch.randn(n, 3, dtype=dt),) + (
                (torch.randn(n, 4, dtype=dt),) if kind.endswith("hx") else ())
    elif kind == "CausalConv1d":
        m = fusedgru.CausalConv1d(3, 4, activation="silu").to(dt)
        def args(n, t):
            return (torch.randn(n, 3, t, dtype=dt),)
    else:
        m = (fusedgru.LayerNormGRU(3, 4, num_layers=2) if kind == "LayerNormGRU" else
             fusedgru.GRU(3, 4, num_layers=2, batch_first=True)).to(dt)
        def args(n, t):
            x = torch.randn(t, n, 3, dtype=dt)
            if kind == "GRU-hx":
                return (x.transpose(0, 1), torch.randn(2, n, 4, dtype=dt))
            return (x.transpose(0, 1),) if kind == "GRU" else (x,)
    traced = torch.jit.trace(m, args(2, 5))
    assert "fusedgru::" in str(traced.graph)
    a = [t.requires_grad_() for t in args(3, 8)]  # another length and batch
    got, want = traced(*a), m(*a)
    got, want = (got,) if isinstance(got, torch.Tensor) else got, \
        (want,) if isinstance(want, torch.Tensor) else want
    for ours, theirs in zip(got, want, strict=True):
        assert_close(ours, theirs, TOL[dt], "traced")
    inputs = [*a, *m.parameters()]
    g_traced = torch.autograd.grad(sum(o.square().sum() for o in got), inputs)
    g_eager = torch.autograd.grad(sum(o.square().sum() for o in want), inputs)
    for ours, theirs in zip(g_traced, g_eager, strict=True):
        assert_close(ours, theirs, TOL[dt], "traced gradient")


class _FxNet(nn.Module):
    """nn.GRU's relatives and ours, side by side in one model: FX keeps torch.nn's as leaves."""

    def __init__(self, mk):
        super().__init__()
        self.gru = mk.GRU(4, 6, batch_first=True, bidirectional=True)
        self.cell = mk.GRUCell(12, 5)
        self.ln = fusedgru.LayerNormGRU(5, 3)
        self.conv = fusedgru.CausalConv1d(3, 2, activation="silu")

    def forward(self, x, lengths=None):
        y, h = self.gru(x) if lengths is None else self.gru(x, lengths=lengths)
        c = self.cell(y[:, -1], h[0].repeat(1, 2)[:, :5])
        z, _ = self.ln(c[None])
        return self.conv(z.permute(1, 2, 0)), h


@pytest.mark.parametrize("with_lengths", [False, True])
def test_fx_symbolic_trace_keeps_the_modules_as_leaves(with_lengths):
    """torch.fx.symbolic_trace of a model with fusedgru modules: each is one call_module node,
    as nn.GRU / nn.GRUCell are (FX traced into ours before and failed on their checks), and
    the traced module gives the model's outputs and gradients, bit for bit."""
    net = _FxNet(fusedgru)
    gm = torch.fx.symbolic_trace(net, concrete_args=None if with_lengths else {"lengths": None})
    calls = [n.target for n in gm.graph.nodes if n.op == "call_module"]
    assert calls == ["gru", "cell", "ln", "conv"]
    stock = torch.fx.symbolic_trace(_FxNet(nn), concrete_args={"lengths": None})
    assert [n.target for n in stock.graph.nodes if n.op == "call_module"][:2] == ["gru", "cell"]
    x = torch.randn(3, 7, 4)
    args = (x, torch.tensor([7, 2, 5])) if with_lengths else (x,)
    want = net(*args)
    got = gm(*args)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    g_want = torch.autograd.grad(want[0].sum() + want[1].sum(), list(net.parameters()))
    g_got = torch.autograd.grad(got[0].sum() + got[1].sum(), list(gm.parameters()))
    for a, b in zip(g_got, g_want, strict=True):
        assert torch.equal(a, b)
    if not with_lengths:  # the graph also runs on the stock modules (nn.GRU takes no lengths)
        stock_gm = fusedgru.revert(copy.deepcopy(gm))
        assert type(stock_gm.gru) is nn.GRU and type(stock_gm.cell) is nn.GRUCell
        for a, b in zip(stock_gm(*args), want, strict=True):
            assert_close(a.detach(), b.detach(), TOL[torch.float32])


@pytest.mark.parametrize("mk", [nn, fusedgru], ids=["nn", "fusedgru"])
def test_fx_symbolic_trace_of_a_gru_itself_fails_as_nn_grus_does(mk):
    """As the trace's root a module cannot be its own leaf: FX traces into the forward, which
    branches on the input's shape, for nn.GRU and ours alike."""
    with pytest.raises(torch.fx.proxy.TraceError):
        torch.fx.symbolic_trace(mk.GRU(3, 4))
