"""fusedgru.GRU's lean inference path (GRU._lean_forward): the common inference call on the CPU
(hx given, grad mode off, no lengths) goes straight to the kernels. Same results as the full
path and nn.GRU, nn.GRU's errors for every bad input, and the full path wherever the lean one
does not apply."""

import os
import re
import sys

import pytest
import torch
from gru_testing import TOL, assert_close, pair
from test_gru_interface import BAD_INPUTS
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import fusedgru
from fusedgru import functional
from fusedgru.models import CausalConvGRU


def _refuse(*args, **kwargs):
    raise AssertionError("the full path ran")


@pytest.fixture
def full_path_refused(monkeypatch):
    """The full path raises: a call that still works went the lean way."""
    monkeypatch.setattr(functional, "_layers", _refuse)


CASES = [
    dict(num_layers=1),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=2, batch_first=True, bias=False),
    dict(num_layers=3, dropout=0.5),  # eval mode: no dropout to apply
]


@pytest.mark.parametrize("kwargs", CASES,
                         ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (17, 1), (5, 130)],
                         ids=lambda s: f"T{s[0]}-N{s[1]}")
def test_lean_path_equals_nn_gru_and_the_full_path(kwargs, shape):
    T, N = shape
    ref, ours = pair("cpu", torch.float32, 7, 17, **kwargs)
    ref.eval()
    ours.eval()
    D = 2 if kwargs.get("bidirectional") else 1
    L = kwargs["num_layers"]
    x = torch.randn(N, T, 7) if kwargs.get("batch_first") else torch.randn(T, N, 7)
    x = x.transpose(0, 1).contiguous().transpose(0, 1)  # strided
    hx = torch.randn(L * D, N, 17)
    with torch.no_grad():
        lean = ours._lean_forward(x, hx)
        assert lean is not None
        out, h_n = ours(x, hx)
        want = ref(x, hx)
        full = fusedgru.gru(x, hx, ours._weights(), ours.bias, L, ours.dropout, ours.training,
                            D == 2, ours.batch_first)
    for a, b, c, what in zip((out, h_n), lean, full, ("output", "h_n")):
        assert torch.equal(a, b) and torch.equal(a, c), what
    assert_close(out, want[0], TOL[torch.float32], "output")
    assert_close(h_n, want[1], TOL[torch.float32], "h_n")


def test_unbatched_and_inference_mode_take_the_lean_path(full_path_refused):
    ref, ours = pair("cpu", torch.float32, 5, 9)
    x, hx = torch.randn(4, 5), torch.randn(1, 9)
    with torch.inference_mode():
        out, h_n = ours(x, hx)
        want = ref(x, hx)
    assert out.shape == (4, 9) and h_n.shape == (1, 9)
    assert_close(out, want[0], TOL[torch.float32], "output")
    assert_close(h_n, want[1], TOL[torch.float32], "h_n")
    for t in range(4):  # streaming one step at a time
        with torch.no_grad():
            step, hx = ours(x[t:t + 1], hx)
        assert_close(step[0], want[0][t], TOL[torch.float32], f"step {t}")


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_raise_like_nn_gru_without_grad(case):
    ref, ours = pair("cpu", torch.float32, 4, 6, num_layers=2)
    x, hx = BAD_INPUTS[case]("cpu")
    if hx is None:
        hx = torch.randn(2, 6) if x.dim() == 2 else torch.randn(2, 2, 6)
    with torch.no_grad():
        with pytest.raises(Exception) as expected:
            ref(x, hx)
        with pytest.raises(type(expected.value)) as got:
            ours(x, hx)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("p", [-0.5, 1.5, float("nan")])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_an_invalid_dropout_set_after_construction_is_refused_as_nn_grus(p, training):
    """nn.GRU checks dropout at construction and again where it applies (training, between
    layers): a value set afterwards is refused there, and the lean path must not skip that."""
    ref, ours = pair("cpu", torch.float32, 4, 6, num_layers=2)
    x, hx = torch.randn(3, 2, 4), torch.randn(2, 2, 6)
    for m in (ref, ours):
        m.dropout = p
        m.train(training)
    with torch.no_grad():
        if not training:
            assert_close(ours(x, hx)[0], ref(x, hx)[0], TOL[torch.float32], "eval: no dropout")
            return
        with pytest.raises(RuntimeError) as expected:
            ref(x, hx)
        with pytest.raises(RuntimeError) as got:
            ours(x, hx)
    assert str(got.value) == str(expected.value)


def test_misshapen_or_mistyped_weights_take_the_full_paths_errors():
    m = fusedgru.GRU(4, 6)
    x, hx = torch.randn(3, 2, 4), torch.randn(1, 2, 6)
    m.weight_hh_l0 = nn.Parameter(torch.randn(18, 5))
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"weight_hh_l0 must have shape"):
        m(x, hx)
    m = fusedgru.GRU(4, 6)
    m.bias_hh_l0 = nn.Parameter(m.bias_hh_l0.detach().double())
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"does not match weight dtype"):
        m(x, hx)


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_the_full_path_where_the_lean_one_does_not_apply():
    m = fusedgru.GRU(4, 6, num_layers=2, dropout=0.5)
    x, hx = torch.randn(3, 2, 4), torch.randn(2, 2, 6)
    with torch.no_grad():
        assert m._lean_forward(x, hx) is None  # training mode with dropout between layers
        m.eval()
        assert m._lean_forward(x, hx) is not None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert m._lean_forward(x, hx) is None
        assert m._lean_forward(x.double(), hx) is None
        assert m._lean_forward(x, hx.double()) is None
    assert m._lean_forward(x, hx) is None  # grad mode on
    with torch.no_grad(), _Recorder() as rec:  # dispatch modes still see the op
        m(x, hx)
    assert rec.ops == ["fusedgru.gru.default"]  # the whole stack, one call


STACK_STEPS = {  # (num_layers, bidirectional, has_biases, batch_first, unbatched, N)
    "one layer, N=1": (1, False, True, False, False, 1),
    "three layers, bidirectional, N=3": (3, True, True, False, False, 3),
    "two layers, no biases, batch_first, N=8": (2, False, False, True, False, 8),
    "two layers, bidirectional, unbatched": (2, True, True, False, True, 1),
}


def _gru_op_and_per_layer_ops(*args):
    """``torch.ops.fusedgru.gru(*args)`` and the per-layer ops it dispatched (profiler events)."""
    with torch.autograd.profiler.profile() as prof:
        result = torch.ops.fusedgru.gru(*args)
    names = {e.name for e in prof.function_events}
    return result, {n for n in names if n.startswith("fusedgru::gru_forward")}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16],
                         ids=["fp32", "fp64", "bf16", "fp16"])
@pytest.mark.parametrize("case", list(STACK_STEPS))
def test_the_cpu_gru_op_runs_a_single_step_without_the_per_layer_ops(dtype, case):
    """Below autograd the gru op's CPU kernel takes a step (T = 1, N <= 8) itself, layer by
    layer on the caller's tensors; its results are bitwise those of the composition of the
    per-layer ops (what the autograd key runs) and within the dtype's tolerance of nn.GRU."""
    L, bidirectional, bias, batch_first, unbatched, N = STACK_STEPS[case]
    D = 2 if bidirectional else 1
    torch.manual_seed(0)
    ref = nn.GRU(5, 17, L, bias=bias, batch_first=batch_first, bidirectional=bidirectional)
    params = [p.detach().to(dtype) for p in ref._flat_weights]
    x = torch.randn(*((1, 5) if unbatched else (N, 1, 5) if batch_first else (1, N, 5)))
    hx = torch.randn(*((L * D, 17) if unbatched else (L * D, N, 17)))
    x, hx = x.to(dtype), hx.to(dtype)
    args = (x, hx, params, bias, L, bidirectional, batch_first)
    with torch.no_grad():
        composed, composed_ops = _gru_op_and_per_layer_ops(*args)
        with torch._C._AutoDispatchBelowAutograd():
            step, step_ops = _gru_op_and_per_layer_ops(*args)
        want = ref.double()(x.double(), hx.double())
    assert composed_ops and not step_ops
    for a, b, w, what in zip(step, composed, want, ("output", "h_n")):
        assert a.dtype == dtype and a.shape == w.shape, what
        assert torch.equal(a, b), what
        tol = TOL.get(dtype, 2e-2)  # bf16 / fp16: each layer's h' is rounded
        assert_close(a.double(), w, tol, what)


def test_the_cpu_gru_op_composes_the_layers_for_every_other_call():
    """Steps of more than 8 rows, several steps, a non-contiguous hx or input rows, weights that
    are not row-contiguous: the per-layer ops run, and a bad argument raises their error."""
    ref = nn.GRU(5, 6, 2)
    params = [p.detach() for p in ref._flat_weights]
    x, hx = torch.randn(1, 3, 5), torch.randn(2, 3, 6)
    calls = {
        "N=9": (torch.randn(1, 9, 5), torch.randn(2, 9, 6), params),
        "T=2": (torch.randn(2, 3, 5), hx, params),
        "strided hx": (x, torch.randn(2, 6, 3).transpose(1, 2), params),
        "strided rows": (torch.randn(1, 3, 10)[..., ::2], hx, params),
        "column-major weight": (x, hx, [params[0].t().contiguous().t(), *params[1:]]),
    }
    with torch.no_grad(), torch._C._AutoDispatchBelowAutograd():
        for what, (x_, hx_, p) in calls.items():
            (out, h_n), ops = _gru_op_and_per_layer_ops(x_, hx_, p, True, 2, False, False)
            assert ops, what
            want = ref(x_, hx_)
            assert_close(out, want[0], TOL[torch.float32], what)
            assert_close(h_n, want[1], TOL[torch.float32], what)
        with pytest.raises(RuntimeError, match="weight_ih must have shape"):
            torch.ops.fusedgru.gru(x, hx, [params[0][:, :4], *params[1:]], True, 2, False, False)
        with pytest.raises(RuntimeError, match="hx must have shape"):
            torch.ops.fusedgru.gru(x, hx[:, :2], params, True, 2, False, False)


def _autograd_kernel_calls(fn):
    """How many Python frames of torch.library's generated autograd kernels
    (torch/_library/autograd.py, what register_autograd installs) ``fn()`` entered."""
    calls = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.replace(os.sep, "/").endswith(
                "torch/_library/autograd.py"):
            calls.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return len(calls)


def test_inference_skips_the_ops_python_autograd_kernel():
    """Without grad mode the op wrappers dispatch below autograd (fusedgru._ops._call): the
    ops' Python autograd kernel, ~10 us a call of pure pass-through, is not entered by the
    streaming calls (GRUCell, CausalConvGRU.step) nor by the GRU's full path. With grad mode on
    it is (the detector works), and the results are the same either way."""
    torch.manual_seed(0)
    cell = fusedgru.GRUCell(5, 7)
    x, h = torch.randn(3, 5), torch.randn(3, 7)
    model = CausalConvGRU(5, 7, num_layers=2).eval()
    gru = fusedgru.GRU(5, 7)
    seq, lengths = torch.randn(4, 3, 5), torch.tensor([4, 2, 3])
    with torch.no_grad():
        state = model.init_state(3)
        assert _autograd_kernel_calls(lambda: cell(x, h)) == 0
        assert _autograd_kernel_calls(lambda: model.step(x, state)) == 0
        assert _autograd_kernel_calls(lambda: gru(seq, lengths=lengths)) == 0
        out = gru(seq, lengths=lengths)
        step = torch.ops.fusedgru.gru_cell(x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih,
                                           cell.bias_hh)
        assert torch.equal(cell(x, h), step) and not step.requires_grad
    assert _autograd_kernel_calls(lambda: gru(seq, lengths=lengths)) > 0
    trained = gru(seq, lengths=lengths)
    assert trained[0].requires_grad
    for a, b in zip(out, trained):
        assert torch.equal(a, b.detach())


# ---- GRUCell's inference step (GRUCell._lean_ok): the op below autograd, positional ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("N, C, H, bias", [(1, 1, 1, True), (3, 17, 130, False), (8, 5, 17, True),
                                           (17, 3, 9, True), (0, 3, 4, True)])
def test_gru_cell_lean_step_equals_nn_gru_cell_and_the_full_path(monkeypatch, dtype, N, C, H,
                                                                 bias):
    """Batches up to kCellRows (8) take the cell kernel, 17 the GEMM path, 0 the empty one."""
    ref = nn.GRUCell(C, H, bias=bias).to(dtype)
    ours = fusedgru.GRUCell(C, H, bias=bias).to(dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(C, N, dtype=dtype).t()  # strided
    hx = torch.randn(N, H, dtype=dtype)
    with torch.no_grad():
        assert ours._lean_ok(x, hx, list(ours.parameters()))
        want = ref(x, hx)
        with monkeypatch.context() as m:  # the full path refused: the lean one runs
            m.setattr(fusedgru.rnn, "_check_devices_and_dtypes", _refuse)
            lean = ours(x, hx)
            lean_unbatched = ours(x[0], hx[0]) if N else None
        with monkeypatch.context() as m:  # the lean path refused: the full one runs
            m.setattr(fusedgru.GRUCell, "_lean_ok", staticmethod(lambda *a: False))
            full = ours(x, hx)
            full_unbatched = ours(x[0], hx[0]) if N else None
    assert torch.equal(lean, full)
    assert_close(lean, want, TOL[dtype], "h'")
    if N:
        assert torch.equal(lean_unbatched, full_unbatched) and lean_unbatched.shape == (H,)
        assert_close(lean_unbatched, ref(x[0], hx[0]).detach(), TOL[dtype], "unbatched")


def test_gru_cell_full_path_where_the_lean_one_does_not_apply():
    cell = fusedgru.GRUCell(4, 6)
    params = list(cell.parameters())
    x, hx = torch.randn(3, 4), torch.randn(3, 6)
    assert not cell._lean_ok(x, hx, params)  # grad mode on
    with torch.no_grad():
        assert cell._lean_ok(x, hx, params)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not cell._lean_ok(x, hx, params)
        assert not cell._lean_ok(x, hx.double(), params)
        assert not cell._lean_ok(x.double(), hx.double(), params)
        assert not cell._lean_ok(x, hx, [params[0].double(), *params[1:]])
        assert not cell._lean_ok(x, hx, [params[0].to("meta"), *params[1:]])
        assert not cell._lean_ok(x.to("meta"), hx.to("meta"), params)
        # and the full path then raises nn.GRUCell's error
        stock = nn.GRUCell(4, 6)
        stock.load_state_dict(cell.state_dict())
        for args in ((x, hx.double()), (x.double(), hx)):
            with pytest.raises(RuntimeError) as expected:
                stock(*args)
            with pytest.raises(RuntimeError, match=re.escape(str(expected.value))):
                cell(*args)
        with _Recorder() as rec:  # dispatch modes still see the op
            cell(x, hx)
        assert rec.ops == ["fusedgru.gru_cell.default"]
