"""fusedgru.GRUCell against torch.nn.GRUCell: h' and every gradient, low precision, errors,
CPU autocast, the meta device, and the fusedgru::gru_cell op's gradcheck and opcheck."""

import copy
import os
import re

import pytest
import torch
from gru_testing import DEVICES, TOL, assert_close, rel_err
from torch import nn

import fusedgru


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("N, C, H, bias", [(1, 1, 1, True), (3, 17, 130, True), (5, 33, 64, False),
                                           (8, 64, 17, True), (9, 3, 130, True),
                                           (40, 5, 7, False), (0, 3, 4, True)])
def test_gru_cell_matches_nn_gru_cell(device, dtype, N, C, H, bias):
    ref = nn.GRUCell(C, H, bias=bias).to(device, dtype)
    ours = fusedgru.GRUCell(C, H, bias=bias).to(device, dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(N, C, device=device, dtype=dtype, requires_grad=True)
    hx = torch.randn(N, H, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn(N, H, device=device, dtype=dtype)
    results = []
    for m in (ref, ours):
        out = m(x, hx)
        results.append((out, torch.autograd.grad((out * g).sum(), [x, hx, *m.parameters()])))
    (o_r, g_r), (o_o, g_o) = results
    assert_close(o_o, o_r, TOL[dtype], "h'")
    for a, b in zip(g_o, g_r, strict=True):
        assert_close(a, b, TOL[dtype], "gradient")
    if N:
        assert_close(ours(x[0]), ref(x[0]), TOL[dtype], "unbatched")


def test_the_python_cell_batch_limit_is_the_kernels():
    """fusedgru.rnn.CUDA_CELL_MAX_BATCH repeats kCellMaxBatch of csrc/cuda/gru_cell.cuh (above
    it, float32 steps leave the strict one-launch kernel): the two may not drift apart."""
    header = os.path.join(os.path.dirname(__file__), "..", "csrc", "cuda", "gru_cell.cuh")
    with open(header) as f:
        limit = re.search(r"constexpr int64_t kCellMaxBatch = (\d+);", f.read())
    assert limit and int(limit.group(1)) == fusedgru.rnn.CUDA_CELL_MAX_BATCH


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("N, H", [(1, 130), (9, 17)])
def test_a_cpu_training_step_is_nn_gru_cells(dtype, N, H):
    """In plain eager training on the CPU (fusedgru._ops.plain_cpu_training) a float step is
    nn.GRUCell's own (torch.gru_cell; the fused one-step forward and backward ran slower,
    README): h' and every gradient bitwise nn.GRUCell's, over a loop of steps carrying h,
    unbatched too."""
    ref = nn.GRUCell(7, H).to(dtype)
    ours = fusedgru.GRUCell(7, H).to(dtype)
    ours.load_state_dict(ref.state_dict())
    xs = torch.randn(4, N, 7, dtype=dtype)
    h0 = torch.randn(N, H, dtype=dtype)
    g = torch.randn(N, H, dtype=dtype)
    results = []
    for m in (ref, ours):
        x, h = xs.clone().requires_grad_(), h0.clone().requires_grad_()
        out = h
        for t in range(4):
            out = m(x[t], out)
        results.append([out, *torch.autograd.grad((out * g).sum(), [x, h, *m.parameters()]),
                        m(xs[0, 0], h0[0])])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("N", [8, 40])
def test_gru_cell_takes_tf32_as_nn_gru_cell_does(monkeypatch, N):
    """float32 on CUDA under PyTorch's default precision flags (cuDNN RNN: TF32, matmul:
    strict): nn.GRUCell's GEMMs are strict there, and so is every step of ours, forward and
    backward, up to 32 rows (one launch) and beyond (the first GPU run found TF32-sized errors,
    ~2e-4, beyond 32 rows and in training)."""
    monkeypatch.setattr(torch.backends.cudnn.rnn, "fp32_precision", "tf32")
    monkeypatch.setattr(torch.backends.cuda.matmul, "fp32_precision", "ieee")
    ref = nn.GRUCell(130, 257).cuda()
    ours = fusedgru.GRUCell(130, 257).cuda()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(N, 130, device="cuda", requires_grad=True)
    hx = torch.randn(N, 257, device="cuda", requires_grad=True)
    g = torch.randn(N, 257, device="cuda")
    with torch.no_grad():
        assert_close(ours(x, hx), ref(x, hx), TOL[torch.float32], "h' (inference)")
    results = []
    for m in (ref, ours):
        out = m(x, hx)
        results.append((out, torch.autograd.grad((out * g).sum(), [x, hx, *m.parameters()])))
    (o_r, g_r), (o_o, g_o) = results
    assert_close(o_o, o_r, TOL[torch.float32], "h' (training)")
    for a, b in zip(g_o, g_r, strict=True):
        assert_close(a, b, TOL[torch.float32], "gradient")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=["fp32", "fp64", "bf16", "fp16"])
@pytest.mark.parametrize("C, H", [(17, 130), (3, 33)])
def test_a_cpu_inference_step_gives_each_row_what_it_gives_the_row_alone(dtype, C, H):
    """The CPU's single-step kernel (up to 8 rows) forms each row's dot products in one chain per
    lane whatever rows share its pass (groups of 4, then one at a time): every row of a step of
    N = 1..8 rows is bitwise the step of that row alone, for GRUCell and a streaming GRU call.
    It failed for fp32 and bf16 on a build where GCC had called sigmoid/tanh out of line (the
    baseline target's code, without FMA) from one pass: csrc/cpu/vec_math.h inlines them."""
    cell = fusedgru.GRUCell(C, H).to(dtype)
    gru = fusedgru.GRU(C, H).to(dtype)
    with torch.no_grad():
        for N in range(1, 9):
            x, hx = torch.randn(N, C).to(dtype), torch.randn(N, H).to(dtype)
            rows = torch.cat([cell(x[i:i + 1], hx[i:i + 1]) for i in range(N)])
            assert torch.equal(cell(x, hx), rows), N
            out, h_n = gru(x[None], hx[None])
            alone = torch.cat([gru(x[None, i:i + 1], hx[None, i:i + 1])[1] for i in range(N)], 1)
            assert torch.equal(h_n, alone), N
            assert torch.equal(out, alone), N


@pytest.mark.parametrize("device, dtype", [
    ("cpu", torch.bfloat16),
    pytest.param("cuda", torch.bfloat16, marks=pytest.mark.cuda),
    pytest.param("cuda", torch.float16, marks=pytest.mark.cuda),
], ids=["cpu-bf16", "cuda-bf16", "cuda-fp16"])
@pytest.mark.parametrize("N", [1, 6, 33])
def test_gru_cell_low_precision_error_within_twice_torch(device, dtype, N):
    """Streaming steps in low precision, every row count path (CPU: the dot-product kernel up to
    8 rows, GEMMs beyond): err(ours, fp64) <= 2 err(nn.GRUCell in dtype, fp64) + eps."""
    ref = nn.GRUCell(70, 130).double()
    ours = fusedgru.GRUCell(70, 130).double()
    ours.load_state_dict(ref.state_dict())
    x, hx = torch.randn(N, 70, dtype=torch.float64), torch.randn(N, 130, dtype=torch.float64)
    with torch.no_grad():
        exact = ref(x, hx)
        theirs = copy.deepcopy(ref).to(device, dtype)(x.to(device, dtype), hx.to(device, dtype))
        got = ours.to(device, dtype)(x.to(device, dtype), hx.to(device, dtype))
    assert got.dtype == dtype
    assert rel_err(got, exact) <= 2 * rel_err(theirs, exact) + 1e-3


@pytest.mark.parametrize("case", ["feature", "hx batch", "hx size", "3-D input", "3-D hidden"])
def test_gru_cell_errors_match_nn_gru_cell(case):
    args = {"feature": (torch.randn(3, 6), None), "hx batch": (torch.randn(3, 4),
                                                                torch.randn(2, 5)),
            "hx size": (torch.randn(3, 4), torch.randn(3, 6)), "3-D input": (torch.randn(2, 3, 4),
                                                                            None),
            "3-D hidden": (torch.randn(3, 4), torch.randn(1, 3, 5))}[case]
    ref = nn.GRUCell(4, 5)
    with pytest.raises(Exception) as expected:
        ref(*args)
    with pytest.raises(type(expected.value)) as got:
        fusedgru.GRUCell(4, 5)(*args)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("device", DEVICES)
def test_gru_cell_op_gradcheck_and_opcheck(device):
    kw = dict(device=device, dtype=torch.float64, requires_grad=True)
    args = (torch.randn(3, 4, **kw), torch.randn(3, 5, **kw), torch.randn(15, 4, **kw),
            torch.randn(15, 5, **kw), torch.randn(15, **kw), torch.randn(15, **kw))
    assert torch.autograd.gradcheck(torch.ops.fusedgru.gru_cell, args)
    assert torch.autograd.gradgradcheck(torch.ops.fusedgru.gru_cell, args)
    torch.library.opcheck(torch.ops.fusedgru.gru_cell.default, args)
    torch.library.opcheck(torch.ops.fusedgru.gru_cell.default, args[:4] + (None, None))


@pytest.mark.parametrize("hx_dtype", [torch.float32, torch.bfloat16])
def test_gru_cell_under_cpu_autocast_behaves_like_nn_gru_cell(hx_dtype):
    """A decoder step under CPU autocast: nn.Linear gives a bfloat16 activation, the state is
    float32 (or bfloat16). nn.GRUCell's h' takes hx's dtype; ours the same, as accurate, with
    gradients of the same dtypes and at least as accurate; a converted decoder runs too."""
    torch.manual_seed(0)
    proj, ref = nn.Linear(7, 5), nn.GRUCell(5, 6)
    ours = fusedgru.GRUCell(5, 6)
    ours.load_state_dict(ref.state_dict())
    ref64 = copy.deepcopy(ref).double()
    x, hx = torch.randn(4, 7), torch.randn(4, 6).to(hx_dtype).requires_grad_()
    g = torch.randn(4, 6)
    with torch.autocast("cpu"):
        a = proj(x)
    assert a.dtype == torch.bfloat16
    a = a.detach().requires_grad_()
    a64, hx64 = (t.detach().double().requires_grad_() for t in (a, hx))
    results = {}
    for name, cell, inputs in (("theirs", ref, (a, hx)), ("ours", ours, (a, hx)),
                               ("exact", ref64, (a64, hx64))):
        with torch.autocast("cpu", enabled=name != "exact"):
            out = cell(*inputs)
        grads = torch.autograd.grad((out * g.to(out.dtype)).sum(), [*inputs, *cell.parameters()])
        results[name] = (out, *grads)
    assert results["ours"][0].dtype == results["theirs"][0].dtype == hx_dtype
    for i, (o, t, e) in enumerate(zip(results["ours"], results["theirs"], results["exact"])):
        assert o.dtype == t.dtype, f"tensor {i}: {o.dtype}, nn.GRUCell gives {t.dtype}"
        assert rel_err(o, e) <= 2 * rel_err(t, e) + 1e-6, f"tensor {i}"
        assert rel_err(o, t) <= 3e-2, f"tensor {i}"

    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.cell = nn.Linear(7, 5), nn.GRUCell(5, 6)

        def forward(self, x, h):
            return self.cell(self.proj(x), h)

    dec = Decoder()
    with torch.autocast("cpu"):
        expected = dec(x, hx)
        got = fusedgru.convert(dec)(x, hx)
    assert isinstance(dec.cell, fusedgru.GRUCell)
    assert got.dtype == expected.dtype == hx_dtype
    assert rel_err(got, expected) <= 3e-2


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16],
                         ids=["autocast-bf16", "autocast-fp16"])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float16],
                         ids=["x-fp32", "x-bf16", "x-fp16"])
@pytest.mark.parametrize("hx_dtype", [None, torch.float32, torch.bfloat16, torch.float16],
                         ids=["hx-none", "hx-fp32", "hx-bf16", "hx-fp16"])
def test_gru_cell_under_cpu_autocast_returns_nn_gru_cells_dtype(autocast_dtype, x_dtype,
                                                                hx_dtype):
    """h' in promote_types(autocast dtype, hx's dtype), as nn.GRUCell (a bf16 hx under fp16
    autocast, or the reverse, gives fp32), batched and unbatched, close to nn.GRUCell."""
    torch.manual_seed(0)
    ref, ours = nn.GRUCell(5, 6), fusedgru.GRUCell(5, 6)
    ours.load_state_dict(ref.state_dict())
    for shape in ((4,), ()):
        x = torch.randn(*shape, 5).to(x_dtype)
        args = (x,) if hx_dtype is None else (x, torch.randn(*shape, 6).to(hx_dtype))
        with torch.autocast("cpu", dtype=autocast_dtype):
            theirs, got = ref(*args), ours(*args)
        assert got.dtype == theirs.dtype, f"{got.dtype}, nn.GRUCell gives {theirs.dtype}"
        assert got.shape == theirs.shape
        assert rel_err(got, theirs) <= 3e-2


def test_meta_device_gru_cell():
    ref, ours = nn.GRUCell(3, 5, device="meta"), fusedgru.GRUCell(3, 5, device="meta")
    x = torch.randn(4, 3, device="meta")
    assert ours(x).shape == ref(x).shape == (4, 5) and ours(x).device.type == "meta"


@pytest.mark.parametrize("C, H", [(0, 8), (4, 0), (0, 0)])
@pytest.mark.parametrize("N", [3, 9, None], ids=["N3", "N9", "unbatched"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_gru_cell_with_an_empty_size_runs_as_nn_gru_cell(C, H, N, grad):
    """nn.GRUCell takes input_size or hidden_size 0 (sizes from a config); ours gives the same
    h' and gradients on every path (the fused kernels take no empty weights: ATen's cell)."""
    torch.manual_seed(0)
    ref, ours = nn.GRUCell(C, H).double(), fusedgru.GRUCell(C, H).double()
    ours.load_state_dict(ref.state_dict())
    shape = () if N is None else (N,)
    x, hx = torch.randn(*shape, C, dtype=torch.float64), torch.randn(*shape, H,
                                                                     dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        results = []
        for cell in (ref, ours):
            out = cell(x, hx)
            grads = torch.autograd.grad(out.sum(), list(cell.parameters()),
                                        allow_unused=True) if grad else ()
            results.append((out, *grads))
    for a, b in zip(*results, strict=True):
        assert a.shape == b.shape and torch.equal(a, b)


def test_sizes_come_from_the_weights_as_in_nn_gru_cell():
    """nn.GRUCell checks input and hx against its weights' sizes (ATen's
    check_rnn_cell_forward_*), not the constructor's: functional_call with other weights, or
    reassigned ones, run; the same messages where they do not fit (a 1-D hx with a batched
    input: the same IndexError)."""
    p = {"weight_ih": torch.randn(6, 5), "weight_hh": torch.randn(6, 2),
         "bias_ih": torch.randn(6), "bias_hh": torch.randn(6)}
    x, hx = torch.randn(3, 5), torch.randn(3, 2)
    ref, ours = nn.GRUCell(3, 4), fusedgru.GRUCell(3, 4)
    want = torch.func.functional_call(ref, p, (x, hx))
    assert_close(torch.func.functional_call(ours, p, (x, hx)), want, TOL[torch.float32], "h'")
    for args in ((torch.randn(3, 4), hx), (x, torch.randn(3, 3)), (x, torch.randn(3))):
        with pytest.raises((RuntimeError, IndexError)) as expected:
            torch.func.functional_call(ref, p, args)
        with pytest.raises(type(expected.value), match=re.escape(str(expected.value))):
            torch.func.functional_call(ours, p, args)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.complex64])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_mixed_dtypes_raise_nn_gru_cells_error(bias, dtype, grad):
    """An hx of another dtype: nn.GRUCell's CPU error, which is addmm's with biases and mm's
    without (they name dtypes differently), in either grad mode."""
    ref = nn.GRUCell(3, 4, bias=bias)
    ours = fusedgru.GRUCell(3, 4, bias=bias)
    x, hx = torch.randn(2, 3), torch.randn(2, 4).to(dtype)
    with torch.set_grad_enabled(grad):
        with pytest.raises(RuntimeError) as expected:
            ref(x, hx)
        with pytest.raises(RuntimeError, match=re.escape(str(expected.value))):
            ours(x, hx)


@pytest.mark.parametrize("name", ["weight_ih", "weight_hh", "bias_ih", "bias_hh"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_a_weight_or_bias_set_to_none_as_in_nn_gru_cell(name, grad):
    """A weight set to None: torch.gru_cell's TypeError; a bias set to None: no such bias (its
    biases are optional), the same h' in either grad mode."""
    ref, ours = nn.GRUCell(3, 4).double(), fusedgru.GRUCell(3, 4).double()
    ours.load_state_dict(ref.state_dict())
    for m in (ref, ours):
        setattr(m, name, None)
    x, hx = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        if name.startswith("weight"):
            with pytest.raises(TypeError) as expected:
                ref(x, hx)
            with pytest.raises(TypeError, match=re.escape(str(expected.value))):
                ours(x, hx)
        else:
            assert_close(ours(x, hx), ref(x, hx), TOL[torch.float64], "h'")

