"""torch.compile(fullgraph=True) traces models holding fusedgru.GRU with no graph break and gives
eager's outputs and gradients; torch.jit.trace records the fused ops. (torch.export:
test_beyond_cudnn.py; the compile checks of the other modules sit in their own files, all through
gru_testing.assert_compile_matches_eager.)"""

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


def test_jit_trace_without_check_runs_the_fused_ops():
    m = fusedgru.GRU(3, 4, num_layers=2).double()
    traced = torch.jit.trace(m, (torch.randn(5, 2, 3, dtype=torch.float64),), check_trace=False)
    assert "fusedgru::gru_forward" in str(traced.graph)
    x = torch.randn(8, 3, 3, dtype=torch.float64)  # another length and batch
    for ours, theirs in zip(traced(x), m(x)):
        assert_close(ours, theirs, TOL[torch.float64], "traced")
