"""Op-level micro-benchmarks (pytest-benchmark): each fusedgru op against the torch computation
it replaces, at a few small CPU shapes where per-call overhead and the single step matter (the
sequence-level grid is bench_gru.py / bench_conv.py).

  make bench-micro     # = pytest benchmarks/test_op_micro.py --benchmark-only \
                       #     --benchmark-json benchmarks/runs/micro.json

Each shape is one pytest-benchmark group holding a ``fusedgru`` and a ``torch`` entry, so the
table and the JSON compare them side by side. Not part of the test run (``pytest tests`` collects
``tests/`` only); the results of a run go to benchmarks/runs/ (ignored by git).
"""

import pytest
import torch
import torch.nn.functional as F

import fusedgru
from fusedgru import _ops, reference

IMPLS = ["fusedgru", "torch"]

# (T, N, C, H): a streaming-sized step, a short small batch, a short wider layer.
GRU_SHAPES = [(1, 1, 64, 64), (16, 4, 32, 64), (32, 8, 64, 128)]
CELL_SHAPES = [(1, 128, 128), (8, 128, 128), (32, 64, 256)]  # (N, C, H)
CONV_SHAPES = [(1, 64, 128, 4), (4, 256, 512, 4)]  # (N, C, L, W)


def shape_id(shape):
    return "x".join(map(str, shape))


@pytest.fixture(autouse=True)
def _record_threads(benchmark):
    benchmark.extra_info["threads"] = torch.get_num_threads()
    benchmark.extra_info["torch"] = torch.__version__
    benchmark.extra_info["fusedgru"] = fusedgru.__version__


def gru_weights(C, H, requires_grad=False):
    g = torch.Generator().manual_seed(0)

    def t(*shape):
        return (torch.randn(*shape, generator=g) / H ** 0.5).requires_grad_(requires_grad)

    return t(3 * H, C), t(3 * H, H), t(3 * H), t(3 * H)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", GRU_SHAPES, ids=shape_id)
def test_gru_forward(benchmark, impl, shape):
    """One layer, inference: fusedgru::gru_forward against torch's GRU kernel (torch._VF.gru,
    what nn.GRU runs)."""
    T, N, C, H = shape
    benchmark.group = f"gru_forward T,N,C,H={shape_id(shape)}"
    x, hx = torch.randn(T, N, C), torch.zeros(N, H)
    w = gru_weights(C, H)
    if impl == "fusedgru":
        def run():
            return _ops.gru_forward(x, hx, *w)
    else:
        def run():
            return torch._VF.gru(x, hx[None], list(w), True, 1, 0.0, False, False, False)
    with torch.no_grad():
        benchmark(run)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", GRU_SHAPES, ids=shape_id)
def test_gru_forward_backward(benchmark, impl, shape):
    """One layer, forward and backward to the input and all weights: fusedgru::gru_forward and
    gru_backward against torch._VF.gru and its autograd."""
    T, N, C, H = shape
    benchmark.group = f"gru_forward_backward T,N,C,H={shape_id(shape)}"
    x = torch.randn(T, N, C, requires_grad=True)
    hx = torch.zeros(N, H)
    w = gru_weights(C, H, requires_grad=True)
    leaves = [x, *w]

    if impl == "fusedgru":
        def run():
            out, h_n, _ = _ops.gru_forward(x, hx, *w, need_workspace=True)
            return torch.autograd.grad(out.sum() + h_n.sum(), leaves)
    else:
        def run():
            out, h_n = torch._VF.gru(x, hx[None], list(w), True, 1, 0.0, True, False, False)
            return torch.autograd.grad(out.sum() + h_n.sum(), leaves)
    benchmark(run)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", CELL_SHAPES, ids=shape_id)
def test_gru_cell(benchmark, impl, shape):
    """One streaming step, inference: fusedgru::gru_cell against torch.gru_cell (nn.GRUCell)."""
    N, C, H = shape
    benchmark.group = f"gru_cell N,C,H={shape_id(shape)}"
    x, hx = torch.randn(N, C), torch.randn(N, H)
    w = gru_weights(C, H)
    op = _ops.gru_cell if impl == "fusedgru" else torch.gru_cell
    with torch.no_grad():
        benchmark(op, x, hx, *w)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", GRU_SHAPES[1:], ids=shape_id)
def test_ln_gru_forward(benchmark, impl, shape):
    """One layer-normalized layer, inference: fusedgru::ln_gru_forward against the same
    function in torch ops (fusedgru.reference.ln_gru_layer; torch has no fused one)."""
    T, N, C, H = shape
    benchmark.group = f"ln_gru_forward T,N,C,H={shape_id(shape)}"
    x, hx = torch.randn(T, N, C), torch.zeros(N, H)
    w_ih, w_hh, _, _ = gru_weights(C, H)
    ln = (torch.ones(3 * H), torch.zeros(3 * H), torch.ones(3 * H), torch.zeros(3 * H))
    eps = reference.LAYER_NORM_EPS
    if impl == "fusedgru":
        def run():
            return _ops.ln_gru_forward(x, hx, w_ih, w_hh, *ln, eps=eps)
    else:
        def run():
            return reference.ln_gru_layer(x, hx, w_ih, w_hh, *ln, eps=eps)
    with torch.no_grad():
        benchmark(run)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", GRU_SHAPES[1:], ids=shape_id)
def test_ln_gru_forward_backward(benchmark, impl, shape):
    """One layer-normalized layer, forward and backward to the input and all parameters:
    fusedgru::ln_gru_forward and ln_gru_backward against the torch-op reference's autograd."""
    T, N, C, H = shape
    benchmark.group = f"ln_gru_forward_backward T,N,C,H={shape_id(shape)}"
    x, hx = torch.randn(T, N, C, requires_grad=True), torch.zeros(N, H)
    w_ih, w_hh, _, _ = gru_weights(C, H, requires_grad=True)
    ln = [torch.ones(3 * H), torch.zeros(3 * H), torch.ones(3 * H), torch.zeros(3 * H)]
    ln = [t.requires_grad_() for t in ln]
    leaves = [x, w_ih, w_hh, *ln]
    eps = reference.LAYER_NORM_EPS
    if impl == "fusedgru":
        def run():
            out, h_n, _ = _ops.ln_gru_forward(x, hx, w_ih, w_hh, *ln, eps=eps,
                                              need_workspace=True)
            return torch.autograd.grad(out.sum() + h_n.sum(), leaves)
    else:
        def run():
            out, h_n = reference.ln_gru_layer(x, hx, w_ih, w_hh, *ln, eps=eps)
            return torch.autograd.grad(out.sum() + h_n.sum(), leaves)
    benchmark(run)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=shape_id)
def test_causal_conv1d_fwd(benchmark, impl, shape):
    """Causal depthwise conv + SiLU, inference: fusedgru::causal_conv1d_fwd against F.conv1d
    (groups=C) on the left-padded input (fusedgru.reference.causal_conv1d)."""
    N, C, L, W = shape
    benchmark.group = f"causal_conv1d_fwd N,C,L,W={shape_id(shape)}"
    x, w, b = torch.randn(N, C, L), torch.randn(C, W), torch.randn(C)
    if impl == "fusedgru":
        def run():
            return _ops.causal_conv1d_fwd(x, w, b, activation="silu")
    else:
        def run():
            return F.silu(F.conv1d(F.pad(x, (W - 1, 0)), w.unsqueeze(1), b, groups=C))
    with torch.no_grad():
        benchmark(run)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=shape_id)
def test_causal_conv1d_fwd_bwd(benchmark, impl, shape):
    """Causal depthwise conv + SiLU, forward and backward to x, weight and bias:
    fusedgru::causal_conv1d_fwd and causal_conv1d_bwd against F.conv1d and its autograd."""
    N, C, L, W = shape
    benchmark.group = f"causal_conv1d_fwd_bwd N,C,L,W={shape_id(shape)}"
    x = torch.randn(N, C, L, requires_grad=True)
    w, b = torch.randn(C, W, requires_grad=True), torch.randn(C, requires_grad=True)
    if impl == "fusedgru":
        def run():
            y = _ops.causal_conv1d_fwd(x, w, b, activation="silu")
            return torch.autograd.grad(y.sum(), [x, w, b])
    else:
        def run():
            y = F.silu(F.conv1d(F.pad(x, (W - 1, 0)), w.unsqueeze(1), b, groups=C))
            return torch.autograd.grad(y.sum(), [x, w, b])
    benchmark(run)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", CONV_SHAPES, ids=shape_id)
def test_causal_conv1d_update(benchmark, impl, shape):
    """One streaming conv step: fusedgru::causal_conv1d_update (state shifted in place) against
    the same in torch ops (shift the state, append x, weighted sum over the window)."""
    N, C, _, W = shape
    benchmark.group = f"causal_conv1d_update N,C,W={N}x{C}x{W}"
    x, w, b = torch.randn(N, C), torch.randn(C, W), torch.randn(C)
    state = torch.randn(N, C, W - 1)
    if impl == "fusedgru":
        def run():
            return _ops.causal_conv1d_update(x, state, w, b, activation="silu")
    else:
        def run():
            window = torch.cat([state, x.unsqueeze(2)], dim=2)
            state.copy_(window[:, :, 1:])
            return F.silu((window * w).sum(2) + b)
    with torch.no_grad():
        benchmark(run)
