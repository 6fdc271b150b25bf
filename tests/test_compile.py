"""torch.compile(fullgraph=True) traces models holding fusedgru.GRU with no graph break and gives
eager's outputs and gradients."""

import pytest
import torch
from gru_testing import DEVICES, TOL, assert_close
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
        y_e, h_e = model(x, hx)
        y_c, h_c = compiled(x, hx)
        assert_close(y_c, y_e, TOL[torch.float32], "output")
        assert_close(h_c, h_e, TOL[torch.float32], "h_n")
        leaves = [x, hx, *model.parameters()]
        g_e = torch.autograd.grad(y_e.square().sum() + h_e.sum(), leaves)
        g_c = torch.autograd.grad(y_c.square().sum() + h_c.sum(), leaves)
        for a, b in zip(g_c, g_e, strict=True):
            assert_close(a, b, TOL[torch.float32], "gradient")


@pytest.mark.parametrize("device", DEVICES)
def test_compile_inference_no_graph_break(device):
    torch._dynamo.reset()
    model = Tagger(True).to(device).eval()
    x = torch.randn(2, 9, 5, device=device)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0
    with torch.no_grad():
        assert_close(torch.compile(model, fullgraph=True)(x)[0], model(x)[0],
                     TOL[torch.float32], "inference output")
