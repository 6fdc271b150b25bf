"""What nn.GRU on cuDNN cannot do: backward in eval mode, torch.export (and AOTInductor
packages), CUDA-graph capture, bitwise determinism. (Double backward:
test_gradcheck.py::test_gradgradcheck_module.)"""

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


AOTI_SCRIPT = """
import sys, torch, fusedgru  # fusedgru registers the ops the package calls
package, inputs, outputs = sys.argv[1:]
run = torch._inductor.aoti_load_package(package)
torch.save([run(x) for x in torch.load(inputs)], outputs)
"""


@pytest.mark.parametrize("device", DEVICES)
def test_aot_inductor_package_runs_in_a_fresh_process(device, tmp_path):
    """Serving without Python model code: torch.export with a dynamic batch and time, compiled
    by AOTInductor into a package, loaded in a new process that imports nothing but fusedgru
    (whose ops the package calls through the dispatcher), run at other sizes than those
    exported; eager's results."""
    torch.manual_seed(0)
    net = Net().to(device).eval()
    batch, time = torch.export.Dim("batch", max=64), torch.export.Dim("time", max=1024)
    ep = torch.export.export(net, (torch.randn(3, 7, 5, device=device),),
                             dynamic_shapes=({0: batch, 1: time},))
    package = torch._inductor.aoti_compile_and_package(
        ep, package_path=str(tmp_path / "net.pt2"))
    inputs = [torch.randn(N, T, 5, device=device) for N, T in ((3, 7), (1, 17), (5, 130))]
    torch.save(inputs, tmp_path / "inputs.pt")
    result = subprocess.run([sys.executable, "-c", AOTI_SCRIPT, package,
                             str(tmp_path / "inputs.pt"), str(tmp_path / "outputs.pt")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    for x, got in zip(inputs, torch.load(tmp_path / "outputs.pt"), strict=True):
        for a, b in zip(got, net(x), strict=True):
            assert a.shape == b.shape
            assert_close(a, b, TOL[torch.float32], "AOTInductor package vs eager")


@pytest.mark.parametrize("kind", ["GRU", "GRU-bidirectional", "LayerNormGRU"])
def test_a_graph_captured_without_gradients_trains(kind):
    """torch.export / torch.jit.trace under no_grad (or of a frozen model) capture the forward
    without the activations its backward reads (need_workspace=False); nn.GRU's captured
    graphs train all the same. So do ours: the backward runs the forward again with its
    workspace and gives eager's gradients, bit for bit (it raised before)."""
    cls = fusedgru.LayerNormGRU if kind == "LayerNormGRU" else fusedgru.GRU
    m = cls(3, 4, num_layers=2, bidirectional=kind.endswith("bidirectional"))
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        captured = [torch.export.export(m, (x,)).module(),
                    torch.jit.trace(m, (x,), check_trace=False)]
    m.requires_grad_(False)  # frozen: captured with gradients on, but nothing requires them
    captured.append(torch.export.export(m, (x,)).module())
    m.requires_grad_(True)
    xr = x.clone().requires_grad_()
    y, h = m(xr)
    want = torch.autograd.grad((y.square().sum() + h.sum()), [xr, *m.parameters()])
    for g in captured:
        g.requires_grad_(True)
        xg = x.clone().requires_grad_()
        y_g, h_g = g(xg)
        assert torch.equal(y_g, y) and torch.equal(h_g, h)
        got = torch.autograd.grad((y_g.square().sum() + h_g.sum()), [xg, *g.parameters()])
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_graph_captured_without_gradients_differentiates_twice(bidirectional):
    """A gradient penalty through a graph exported under no_grad: the forward run again in the
    backward is itself differentiated (float64, eager's second derivatives to rounding)."""
    m = fusedgru.GRU(3, 4, num_layers=2, bidirectional=bidirectional).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    with torch.no_grad():
        g = torch.export.export(m, (x,)).module()

    def penalty_grads(f):
        xr = x.clone().requires_grad_()
        gx, = torch.autograd.grad(f(xr)[0].square().sum(), xr, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), list(f.parameters()))

    for a, b in zip(penalty_grads(g), penalty_grads(m), strict=True):
        assert_close(a, b, 1e-12)


@pytest.mark.parametrize("kind", ["GRU", "GRU-bidirectional", "LayerNormGRU"])
def test_ensembles_under_vmap_train(kind):
    """The torch.func ensembling recipe (stack_module_state, functional_call, vmap) and then an
    ordinary backward: inside vmap the batched tensors' requires_grad reads False, so the ops
    ran without their workspace; the backward runs them again and gives each model's own
    gradients (it raised before). nn.GRU does not run under vmap at all on the CPU."""
    from torch.func import functional_call, stack_module_state, vmap
    cls = fusedgru.LayerNormGRU if kind == "LayerNormGRU" else fusedgru.GRU
    bidir = kind.endswith("bidirectional")
    models = [cls(3, 4, bidirectional=bidir) for _ in range(3)]
    params, buffers = stack_module_state(models)
    base = cls(3, 4, bidirectional=bidir, device="meta")
    x = torch.randn(5, 2, 3)
    out = vmap(lambda p, b: functional_call(base, (p, b), (x,))[0])(params, buffers)
    out.square().sum().backward()
    for i, m in enumerate(models):
        y = m(x)[0]
        assert_close(out[i].detach(), y.detach(), TOL[torch.float32], f"model {i}")
        names, weights = zip(*m.named_parameters(), strict=True)
        grads = torch.autograd.grad(y.square().sum(), weights)
        for name, g in zip(names, grads, strict=True):
            assert_close(params[name].grad[i], g, TOL[torch.float32], f"model {i} {name}")


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
