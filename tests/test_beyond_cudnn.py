"""What nn.GRU on cuDNN cannot do: backward in eval mode, torch.export, CUDA-graph capture,
bitwise determinism. (Double backward: test_gradcheck.py::test_gradgradcheck_module.)"""

import os
import subprocess
import sys

import pytest
import torch
from gru_testing import DEVICES, TOL, assert_close
from torch import nn

import fusedgru


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = fusedgru.GRU(5, 8, num_layers=2, batch_first=True, bidirectional=True)
        self.conv = fusedgru.CausalConv1d(16, 4, channels_last=True, activation="silu")
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        out, h = self.gru(x)
        return self.head(self.conv(out)), h


@pytest.mark.parametrize("device", DEVICES)
def test_backward_in_eval_mode(device):
    net = Net().to(device)
    x = torch.randn(3, 7, 5, device=device, requires_grad=True)
    grads = {}
    for mode in ("train", "eval"):
        getattr(net, mode)()
        y, h = net(x)
        grads[mode] = torch.autograd.grad(y.sum() + h.sum(), [x, *net.parameters()])
    for a, b in zip(grads["eval"], grads["train"], strict=True):
        assert_close(a, b, TOL[torch.float32], "eval vs train gradient")


@pytest.mark.parametrize("device", DEVICES)
def test_torch_export_runs_and_matches_eager(device):
    net = Net().to(device).eval()
    x = torch.randn(3, 7, 5, device=device)
    ep = torch.export.export(net, (x,))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert "fusedgru.gru_forward_bidirectional.default" in targets  # both directions, one op
    assert "fusedgru.causal_conv1d_fwd.default" in targets
    for inp in (x, torch.randn(3, 7, 5, device=device)):
        y_e, h_e = net(inp)
        y_x, h_x = ep.module()(inp)
        assert torch.equal(y_x, y_e) and torch.equal(h_x, h_e)


@pytest.mark.parametrize("kind", ["GRU", "GRU-bidirectional", "LayerNormGRU"])
def test_a_graph_captured_without_gradients_says_why_it_cannot_train(kind):
    """torch.export / torch.jit.trace under no_grad capture the forward without the activations
    its backward needs: training the captured graph raises an error that says so and what to
    do (the backward ops say so: csrc kNoWorkspaceMessage). Captured with gradients on, the same
    graph trains and gives eager's gradients."""
    cls = fusedgru.LayerNormGRU if kind == "LayerNormGRU" else fusedgru.GRU
    m = cls(3, 4, bidirectional=kind.endswith("bidirectional"))
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        captured = [torch.export.export(m, (x,)).module(),
                    torch.jit.trace(m, (x,), check_trace=False)]
    for g in captured:
        with pytest.raises(RuntimeError, match="capture it with gradients enabled"):
            g(x)[0].sum().backward()
    g = torch.export.export(m, (x,)).module()
    got = torch.autograd.grad(g(x)[0].sum(), list(g.parameters()))
    want = torch.autograd.grad(m(x)[0].sum(), list(m.parameters()))
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


@pytest.mark.cuda
def test_cuda_graph_capture_forward_and_training_step():
    net = Net().cuda()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    static_x = torch.randn(3, 7, 5, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as the CUDA-graph docs require
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            y, h = net(static_x)
            (y.square().mean() + h.mean()).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        y, h = net(static_x)
        loss = y.square().mean() + h.mean()
        loss.backward()
        opt.step()
    for _ in range(3):
        new_x = torch.randn(3, 7, 5, device="cuda")
        static_x.copy_(new_x)
        before = [p.detach().clone() for p in net.parameters()]
        graph.replay()
        torch.cuda.synchronize()
        # the replayed step equals an eager step from the same weights
        ref = Net().cuda()
        ref.load_state_dict(dict(zip([n for n, _ in net.named_parameters()], before)),
                            strict=False)
        y_ref, h_ref = ref(new_x)
        assert torch.allclose(y, y_ref, atol=1e-5) and torch.allclose(h, h_ref, atol=1e-5)
    fwd_graph = torch.cuda.CUDAGraph()
    net.eval()
    with torch.no_grad(), torch.cuda.graph(fwd_graph):
        y_inf, _ = net(static_x)
    fwd_graph.replay()
    torch.cuda.synchronize()
    with torch.no_grad():
        assert torch.allclose(y_inf, net(static_x)[0], atol=1e-6)


# A fresh process without CUBLAS_WORKSPACE_CONFIG: deterministic mode must need no extra
# environment variable (ATen's cuBLAS GEMMs would refuse; ours run instead). No nn.Linear here:
# it would hit that very refusal.
DETERMINISM_SCRIPT = """
import torch, fusedgru
torch.use_deterministic_algorithms(True)
dtype = getattr(torch, "{dtype}")
gru = fusedgru.GRU(5, 8, num_layers=2, batch_first=True, bidirectional=True).to("cuda", dtype)
conv = fusedgru.CausalConv1d(16, 4, channels_last=True, activation="silu").to("cuda", dtype)
x = torch.randn(16, 64, 5, device="cuda", dtype=dtype, requires_grad=True)
params = [x, *gru.parameters(), *conv.parameters()]
runs = []
for _ in range(3):
    out, h = gru(x)
    y = conv(out)
    runs.append([y, h, *torch.autograd.grad((y * y).sum() + h.sum(), params)])
for other in runs[1:]:
    for a, b in zip(runs[0], other, strict=True):
        assert torch.equal(a, b)
print("bitwise identical")
"""


@pytest.mark.cuda
@pytest.mark.parametrize("persistent", ["1", "0"], ids=["persistent", "per_step"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_deterministic_mode_is_bitwise_reproducible(dtype, persistent):
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    env["FUSEDGRU_PERSISTENT"] = persistent
    result = subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT.format(dtype=dtype)],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "bitwise identical" in result.stdout
