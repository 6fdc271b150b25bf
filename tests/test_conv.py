"""Causal depthwise conv1d against the F.conv1d reference: outputs and every gradient, layouts,
streaming, the module, opcheck, gradcheck, torch.compile and bad inputs."""

import itertools
import re

import pytest
import torch
import torch.nn.functional as F
from gru_testing import DEVICES, assert_close, assert_compile_matches_eager, rel_err
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import fusedgru
from fusedgru import reference

WIDTHS = [1, 2, 3, 4, 7, 16, 33, 64]
DILATIONS = [1, 2, 3, 8]
LENGTHS = [1, 3, 129, 1000]
# bias, activation, initial_state, layout: cycled over the grid so every combination appears.
OPTIONS = list(itertools.product([True, False], [None, "silu", "relu"], [False, True],
                                 ["ncl", "channels_last", "strided"]))


def make_x(layout, N, C, L, device, dtype):
    if layout == "channels_last":
        return torch.randn(N, L, C, device=device, dtype=dtype).transpose(1, 2)
    if layout == "strided":
        return torch.randn(N, 2 * C, L + 5, device=device, dtype=dtype)[:, ::2, 5:]
    return torch.randn(N, C, L, device=device, dtype=dtype)


def check_against_reference(device, dtype, W, d, L, bias, act, init, layout, N=2, C=5, tol=1e-9):
    x = make_x(layout, N, C, L, device, dtype).requires_grad_()
    w = torch.randn(C, W, device=device, dtype=dtype, requires_grad=True)
    b = torch.randn(C, device=device, dtype=dtype, requires_grad=True) if bias else None
    S = (W - 1) * d
    s = (torch.randn(N, C, S, device=device, dtype=dtype, requires_grad=True) if init else None)
    y, final = fusedgru.causal_conv1d(x, w, b, dilation=d, activation=act, initial_state=s,
                                      return_final_state=True)
    y_ref = reference.causal_conv1d(x, w, b, d, act, s)
    full = torch.cat([s if init else torch.zeros(N, C, S, device=device, dtype=dtype), x], 2)
    final_ref = full[:, :, full.shape[2] - S:]
    assert y.shape == (N, C, L) and final.shape == (N, C, S)
    assert rel_err(y, y_ref) <= tol, f"y: {rel_err(y, y_ref)}"
    assert torch.equal(final, final_ref)
    if layout == "channels_last":
        assert y.transpose(1, 2).is_contiguous(), "channel-last in, channel-last out"
    gy = torch.randn_like(y)
    leaves = [t for t in (x, w, b, s) if t is not None]
    g = torch.autograd.grad(y, leaves, gy)
    g_ref = torch.autograd.grad(y_ref, leaves, gy)
    for name, a, r in zip(["x", "weight", "bias", "initial_state"] if bias else
                          ["x", "weight", "initial_state"], g, g_ref):
        assert a.shape == r.shape and a.dtype == r.dtype
        assert rel_err(a, r) <= tol, f"grad {name}: {rel_err(a, r)}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("W, d, L", [pytest.param(W, d, L, id=f"W{W}-d{d}-L{L}") for W, d, L in
                                     itertools.product(WIDTHS, DILATIONS, LENGTHS)])
def test_parity_with_f_conv1d(device, W, d, L):
    i = (WIDTHS.index(W) * 7 + DILATIONS.index(d) * 3 + LENGTHS.index(L)) % len(OPTIONS)
    bias, act, init, layout = OPTIONS[i]
    check_against_reference(device, torch.float64, W, d, L, bias, act, init, layout)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bias, act, init, layout", OPTIONS,
                         ids=[f"{'b' if b else 'nob'}-{a}-{'init' if i else 'zero'}-{lay}"
                              for b, a, i, lay in OPTIONS])
def test_all_options(device, bias, act, init, layout):
    check_against_reference(device, torch.float64, 4, 2, 37, bias, act, init, layout)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("W, d", [(1, 1), (2, 3), (3, 1), (4, 2)])
@pytest.mark.parametrize("C", [8, 17, 32, 33])
def test_short_filters_on_channel_last_input_match_the_ncl_kernel(dtype, W, d, C):
    """CPU: filters of up to 4 taps on channel-last input run a kernel of their own (a vector of
    channels per task, its taps in registers; 17 and 33 channels give whole vectors and a
    remainder in both dtypes, 8 only a remainder). It sums each output in the (N, C, L)
    kernel's order (the two may still differ by an ulp where the compiler contracts a
    multiply-add into an FMA in one and not the other), with and without an initial state, and
    both match the float64 reference."""
    N, L, S = 3, 130, (W - 1) * d
    x = torch.randn(N, L, C, dtype=dtype).transpose(1, 2)
    w, b = torch.randn(C, W, dtype=dtype), torch.randn(C, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for init in [None] + ([torch.randn(N, C, S, dtype=dtype)] if S else []):
        for act in (None, "relu"):
            y = fusedgru.causal_conv1d(x, w, b, dilation=d, activation=act, initial_state=init)
            y_ncl = fusedgru.causal_conv1d(x.contiguous(), w, b, dilation=d, activation=act,
                                           initial_state=init)
            assert y.transpose(1, 2).is_contiguous() and rel_err(y, y_ncl) <= tol, (init, act)
            ref = reference.causal_conv1d(x.double(), w.double(), b.double(), d, act,
                                          None if init is None else init.double())
            assert rel_err(y, ref) <= tol, (init, act, rel_err(y, ref))


# Lengths around the CPU sliding-window kernel's vectors (16 floats) and chunks (512 outputs
# after the kW - 1 head steps): empty span, partial first vector, whole vectors, chunk edges.
SLIDE_LENGTHS = [1, 2, 3, 4, 5, 16, 18, 19, 20, 34, 514, 515, 516, 530, 1027, 1033]


@pytest.mark.parametrize("layout", ["ncl", "channels_last"])
@pytest.mark.parametrize("W", [2, 3, 4])
@pytest.mark.parametrize("act", [None, "silu", "relu"])
def test_float_short_filters_at_dilation_one_every_length(layout, W, act):
    """CPU, float32, W <= 4, dilation 1, the AVX-512F kernels: (N, C, L) rows by a sliding
    window (one load per 16 outputs, the taps' inputs by lane shifts, masked at both ends of a
    row, activation per chunk); channel-last slabs of up to 4 vectors of channels (the previous
    steps' inputs kept in registers; C = 70: a whole slab and one of a 6-lane vector). Each
    output within fp32 summation error of the float64 reference, measured against the sum of
    its terms' magnitudes (not a norm over the tensor, which would hide one wrong element),
    with and without an initial state, on rows that follow one another in memory."""
    N, C = (2, 3) if layout == "ncl" else (2, 70)
    for L in SLIDE_LENGTHS:
        x = make_x(layout, N, C, L, "cpu", torch.float32)
        w, b = torch.randn(C, W), torch.randn(C)
        for init in (None, torch.randn(N, C, W - 1)):
            y = fusedgru.causal_conv1d(x, w, b, activation=act, initial_state=init)
            y64 = reference.causal_conv1d(x.double(), w.double(), b.double(), 1, act,
                                          None if init is None else init.double())
            # Sum of |terms| per output: the bound on fp32 rounding of W + 1 addends.
            mag = reference.causal_conv1d(x.double().abs(), w.double().abs(), b.double().abs(),
                                          1, None, None if init is None else init.double().abs())
            err = (y.double() - y64).abs()
            assert (err <= 4 * (W + 1) * 2.0 ** -24 * mag + 1e-30).all(), \
                (L, init is not None, err.max().item())


@pytest.mark.parametrize("layout", ["ncl", "channels_last"])
@pytest.mark.parametrize("W", [2, 4])
@pytest.mark.parametrize("act", [None, "relu"])
def test_float_short_filters_nan_reaches_exactly_the_outputs_that_read_it(layout, W, act):
    """A NaN at time p of channel c must reach outputs p, ..., p + W - 1 of channel c and
    nothing else: the (N, C, L) sliding window's lane shifts carry inputs across vectors and
    chunks and its masked loads must not pull in the previous row; the channel-last slabs carry
    them across steps in registers, lane by lane, and mask a partial vector. relu keeps NaN (as
    torch.relu)."""
    C, L = (2, 1040) if layout == "ncl" else (70, 530)
    for c, p in itertools.product((0, 15, 16, 65) if layout == "channels_last" else (0,),
                                  (0, 1, 2, 3, 14, 15, 16, 17, 18, 511, 512, 513, 514, 515, 516,
                                   517, 529)):
        x = make_x(layout, 1, C, L, "cpu", torch.float32)
        x[0, c, p] = float("nan")  # (N, C, L): row 0 ends right before row 1 starts in memory
        x[0, C - 1, L - 1] = float("inf")  # the end of the last row
        y = fusedgru.causal_conv1d(x, torch.rand(C, W) + 0.5, torch.randn(C), activation=act)
        nan = torch.zeros(C, L, dtype=torch.bool)
        nan[c, p:p + W] = True
        inf = torch.zeros(C, L, dtype=torch.bool)
        inf[C - 1, L - 1] = True  # weights > 0: +inf
        assert torch.equal(y[0].isnan(), nan), (c, p)
        assert torch.equal(y[0].isinf(), inf) and y[0, C - 1, L - 1] > 0, (c, p)


@pytest.mark.parametrize("device, dtype", [
    ("cpu", torch.float32), ("cpu", torch.bfloat16),
    pytest.param("cuda", torch.float32, marks=pytest.mark.cuda),
    pytest.param("cuda", torch.bfloat16, marks=pytest.mark.cuda),
    pytest.param("cuda", torch.float16, marks=pytest.mark.cuda),
], ids=["cpu-fp32", "cpu-bf16", "cuda-fp32", "cuda-bf16", "cuda-fp16"])
@pytest.mark.parametrize("layout", ["ncl", "channels_last"])
def test_low_precision_error_within_twice_torch(device, dtype, layout):
    N, C, L, W = 4, 64, 300, 4
    x = make_x(layout, N, C, L, "cpu", torch.float64)
    w, b = torch.randn(C, W, dtype=torch.float64), torch.randn(C, dtype=torch.float64)
    gy = torch.randn(N, C, L, dtype=torch.float64)
    results = {}
    for name, fn, dt in (("ref", reference.causal_conv1d, torch.float64),
                         ("torch", reference.causal_conv1d, dtype),
                         ("ours", None, dtype)):
        dev = "cpu" if name == "ref" else device
        xi, wi, bi = (t.to(dev, dt).requires_grad_() for t in (x, w, b))
        if name == "ours":
            y = fusedgru.causal_conv1d(xi, wi, bi, activation="silu")
        else:
            y = fn(xi, wi, bi, 1, "silu")
        results[name] = [y, *torch.autograd.grad(y, [xi, wi, bi], gy.to(dev, dt))]
    for i, (r, t, o) in enumerate(zip(results["ref"], results["torch"], results["ours"])):
        assert o.dtype == dtype
        assert rel_err(o, r) <= 2 * rel_err(t, r) + 1e-6, f"tensor {i}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("W, d", [(1, 1), (4, 1), (3, 4), (16, 2)])
def test_streaming_equals_full(device, W, d):
    N, C, L = 3, 6, 40
    x = torch.randn(N, C, L, device=device, dtype=torch.float64)
    w = torch.randn(C, W, device=device, dtype=torch.float64)
    b = torch.randn(C, device=device, dtype=torch.float64)
    s0 = torch.randn(N, C, (W - 1) * d, device=device, dtype=torch.float64)
    y_full, final = fusedgru.causal_conv1d(x, w, b, dilation=d, activation="silu",
                                           initial_state=s0, return_final_state=True)
    state = s0.clone()
    ys = [fusedgru.causal_conv1d_update(x[:, :, t], state, w, b, dilation=d, activation="silu")
          for t in range(L)]
    assert torch.allclose(torch.stack(ys, 2), y_full, rtol=0, atol=1e-12)
    assert torch.equal(state, final)
    # chunked: two calls carrying the state equal one call
    y1, f1 = fusedgru.causal_conv1d(x[:, :, :17], w, b, dilation=d, initial_state=s0,
                                    return_final_state=True)
    y2 = fusedgru.causal_conv1d(x[:, :, 17:], w, b, dilation=d, initial_state=f1)
    y_all = fusedgru.causal_conv1d(x, w, b, dilation=d, initial_state=s0)
    assert torch.allclose(torch.cat([y1, y2], 2), y_all, rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_update_with_strided_state_and_no_grad(device):
    N, C, W = 2, 5, 4
    state = torch.randn(N, 2 * C, W - 1, device=device)[:, ::2]
    w = torch.randn(C, W, device=device, requires_grad=True)
    x = torch.randn(N, C, device=device)
    with pytest.raises(RuntimeError, match="has no gradient"):
        fusedgru.causal_conv1d_update(x, state, w)
    with torch.no_grad():
        expected = reference.causal_conv1d(x[:, :, None], w, None, 1, None, state.clone())[..., 0]
        old = state.clone()
        y = fusedgru.causal_conv1d_update(x, state, w)
    assert torch.allclose(y, expected, atol=1e-6)
    assert torch.equal(state[:, :, :-1], old[:, :, 1:]) and torch.equal(state[:, :, -1], x)


@pytest.mark.parametrize("device", DEVICES)
def test_update_marks_its_state_as_changed_in_place(device):
    """causal_conv1d_update writes conv_state in place and says so, as ATen's in-place ops do
    (the version counter): a backward that saved the state's old values (initial_state of a
    causal_conv1d) is refused instead of giving silently wrong gradients, and a state made
    under inference_mode is refused outside it (as `add_` is), stepped inside it."""
    dt = torch.float64
    w = torch.randn(3, 3, device=device, dtype=dt, requires_grad=True)
    state = torch.randn(2, 3, 2, device=device, dtype=dt)
    y = fusedgru.causal_conv1d(torch.randn(2, 3, 4, device=device, dtype=dt), w,
                               initial_state=state)
    version = state._version
    with torch.no_grad():
        fusedgru.causal_conv1d_update(torch.randn(2, 3, device=device, dtype=dt), state, w)
    assert state._version > version
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(y.sum(), w)
    with torch.inference_mode():
        made_there = torch.randn(2, 3, 2, device=device)
    x, w = torch.randn(2, 3, device=device), torch.randn(3, 3, device=device)
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor outside"):
        made_there.add_(1)
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor outside"):
        fusedgru.causal_conv1d_update(x, made_there, w)
    with torch.inference_mode():
        fusedgru.causal_conv1d_update(x, made_there, w)
    assert torch.equal(made_there[:, :, -1], x)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_module_state_dict_interchanges_with_nn_conv1d(device, channels_last):
    C, W, d = 6, 5, 2
    ref = nn.Conv1d(C, C, W, groups=C, dilation=d).to(device)
    ours = fusedgru.CausalConv1d(C, W, dilation=d, channels_last=channels_last).to(device)
    assert ours.weight.shape == ref.weight.shape and ours.bias.shape == ref.bias.shape
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, C, 30, device=device)
    expected = ref(F.pad(x, ((W - 1) * d, 0)))
    inp = x.transpose(1, 2) if channels_last else x
    y = ours(inp)
    y = y.transpose(1, 2) if channels_last else y
    assert torch.allclose(y, expected, atol=1e-5)
    state = ours.init_state(2)
    with torch.no_grad():
        steps = torch.stack([ours.step(x[:, :, t], state) for t in range(30)], 2)
    assert torch.allclose(steps, expected, atol=1e-5)
    bound = 1 / W ** 0.5
    fresh = fusedgru.CausalConv1d(64, W)
    assert fresh.weight.abs().max() <= bound and fresh.bias.abs().max() <= bound
    assert "kernel_size=5" in repr(ours)


BAD = {
    "weight channels": (lambda x, w, b, s: fusedgru.causal_conv1d(x, w[:3], None),
                        RuntimeError, "weight has 3 channels but x has 5"),
    "weight rank": (lambda x, w, b, s: fusedgru.causal_conv1d(x, w[None], None),
                    RuntimeError, "weight must have shape"),
    "width 0": (lambda x, w, b, s: fusedgru.causal_conv1d(x, w[:, :0], None),
                ValueError, "kernel width must be >= 1"),
    "dilation 0": (lambda x, w, b, s: fusedgru.causal_conv1d(x, w, None, dilation=0),
                   ValueError, "dilation must be >= 1"),
    "bias shape": (lambda x, w, b, s: fusedgru.causal_conv1d(x, w, b[:2]),
                   RuntimeError, "bias must have shape"),
    "state shape": (lambda x, w, b, s: fusedgru.causal_conv1d(x, w, None, initial_state=s[..., 1:]),
                    RuntimeError, "initial_state must have shape"),
    "dtype": (lambda x, w, b, s: fusedgru.causal_conv1d(x.double(), w, None),
              RuntimeError, "must have the same dtype"),
    "activation": (lambda x, w, b, s: fusedgru.causal_conv1d(x, w, None, activation="gelu"),
                   ValueError, "activation must be None, 'silu' or 'relu'"),
    "x rank": (lambda x, w, b, s: fusedgru.causal_conv1d(x[0], w, None),
               RuntimeError, r"x must have shape \(N, C, L\)"),
    "update state": (lambda x, w, b, s: fusedgru.causal_conv1d_update(x[..., 0], s[..., 1:], w),
                     RuntimeError, "conv_state must have shape"),
    "integer x": (lambda x, w, b, s: fusedgru.causal_conv1d(x.long(), w.long(), None),
                  TypeError, "must be a floating point tensor"),
    "bias dtype": (lambda x, w, b, s: fusedgru.causal_conv1d(x, w, b.double()),
                   RuntimeError, "^bias and x must have the same dtype"),
    "state dtype": (lambda x, w, b, s: fusedgru.causal_conv1d(x, w, b, initial_state=s.double()),
                    RuntimeError, "^initial_state and x must have the same dtype"),
    "update channels": (lambda x, w, b, s: fusedgru.causal_conv1d_update(x[..., 0], s, w[:3]),
                        RuntimeError, r"weight has 3 channels but x has 5 \(x is \(N, C\) = "
                        r"\[2, 5\]\)"),
    "update bias dtype": (lambda x, w, b, s: fusedgru.causal_conv1d_update(
        x[..., 0], s, w, b.double()), RuntimeError, "^bias and x must have the same dtype"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs(device, case):
    fn, exc, msg = BAD[case]
    x = torch.randn(2, 5, 9, device=device)
    w, b, s = torch.randn(5, 4, device=device), torch.randn(5, device=device), torch.randn(
        2, 5, 3, device=device)
    with torch.no_grad(), pytest.raises(exc, match=msg):
        fn(x, w, b, s)
    assert torch.allclose(fusedgru.causal_conv1d(x, w, b), reference.causal_conv1d(x, w, b),
                          atol=1e-5)


@pytest.mark.cuda
def test_device_mismatch():
    x = torch.randn(2, 5, 9, device="cuda")
    with pytest.raises(RuntimeError, match="must be on the same device"):
        fusedgru.causal_conv1d(x, torch.randn(5, 4), None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("act", [None, "silu"])
@pytest.mark.parametrize("init", [False, True])
def test_gradcheck_and_gradgradcheck(device, act, init):
    kw = dict(device=device, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, 11, **kw)
    w, b = torch.randn(3, 3, **kw), torch.randn(3, **kw)
    s = torch.randn(2, 3, 4, **kw) if init else None

    def f(x, w, b, *s):
        return fusedgru.causal_conv1d(x, w, b, dilation=2, activation=act,
                                      initial_state=s[0] if s else None)

    args = (x, w, b) + ((s,) if init else ())
    assert gradcheck(f, args)
    assert gradgradcheck(f, args)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_backward_op(device):
    kw = dict(device=device, dtype=torch.float64, requires_grad=True)
    args = (torch.randn(2, 3, 9, **kw), torch.randn(2, 3, 9, **kw), torch.randn(3, 4, **kw),
            torch.randn(3, **kw), torch.randn(2, 3, 3, **kw))

    def f(gy, x, w, b, s):
        return torch.ops.fusedgru.causal_conv1d_bwd(gy, x, w, b, s, 1, 1)

    assert gradcheck(f, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["ncl", "channels_last"])
def test_opcheck(device, layout):
    x = make_x(layout, 2, 4, 10, device, torch.float32).requires_grad_()
    w = torch.randn(4, 3, device=device, requires_grad=True)
    b = torch.randn(4, device=device, requires_grad=True)
    s = torch.randn(2, 4, 4, device=device, requires_grad=True)
    for args in [(x, w, b, s, 2, 1), (x, w, None, None, 1, 0), (x, w, b, None, 3, 2)]:
        torch.library.opcheck(torch.ops.fusedgru.causal_conv1d_fwd.default, args)
    gy = torch.randn(2, 4, 10, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.fusedgru.causal_conv1d_bwd.default, (gy, x, w, b, s, 2, 1))
    torch.library.opcheck(torch.ops.fusedgru.causal_conv1d_bwd.default,
                          (gy, x, w, None, None, 1, 0))
    state = torch.randn(2, 4, 4, device=device)
    torch.library.opcheck(torch.ops.fusedgru.causal_conv1d_update.default,
                          (x[..., 0].detach(), state, w.detach(), b.detach(), 2, 1))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = fusedgru.CausalConv1d(8, 4, activation="silu", channels_last=True)
            self.gru = fusedgru.GRU(8, 8, batch_first=True)

        def forward(self, x):
            return self.gru(self.conv(x))[0]

    net = Net().to(device)
    x = torch.randn(3, 20, 8, device=device, requires_grad=True)
    assert_compile_matches_eager(net, x)


@pytest.mark.parametrize("layout", ["ncl", "channels_last"])
def test_cpu_backward_is_bitwise_independent_of_the_thread_count(layout):
    """Weight and bias gradients are summed in a fixed order (channel-last: 72 tasks over more
    partial-sum slots than threads), so every thread count gives the same bits."""
    N, C, L, W = 3, 40, 3000, 5
    x = make_x(layout, N, C, L, "cpu", torch.float32).requires_grad_()
    w = torch.randn(C, W, requires_grad=True)
    b = torch.randn(C, requires_grad=True)
    s = torch.randn(N, C, 2 * (W - 1), requires_grad=True)
    gy = torch.randn(N, C, L)
    before = torch.get_num_threads()
    grads = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            y = fusedgru.causal_conv1d(x, w, b, dilation=2, activation="silu", initial_state=s)
            grads.append(torch.autograd.grad(y, [x, w, b, s], gy))
    finally:
        torch.set_num_threads(before)
    for other in grads[1:]:
        for a, c in zip(grads[0], other, strict=True):
            assert torch.equal(a, c)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("N, C, L, W, dilation", [
    (2, 4, 3, 4, 1),  # a prefill exactly as long as the history: x[:, :, L - S:] is all of x
    (1, 1, 9, 4, 2),  # one row and channel: the slice is contiguous
    (2, 4, 9, 4, 1),  # the slice is a strided view
    (2, 4, 5, 1, 1),  # no history (W = 1)
])
@pytest.mark.parametrize("module", [False, True], ids=["function", "module"])
def test_final_state_is_a_tensor_of_its_own(device, N, C, L, W, dilation, module):
    """Prefill with return_final_state, then causal_conv1d_update steps on that state: the
    caller's prompt stays as it was (the state never shares its memory), and the steps give
    the whole sequence's outputs."""
    torch.manual_seed(0)
    x = torch.randn(N, C, L, device=device)
    steps = torch.randn(N, C, 3, device=device)
    prompt = x.clone()
    conv = fusedgru.CausalConv1d(C, W, dilation=dilation).to(device)
    w, b = conv.weight.detach(), conv.bias.detach()
    with torch.no_grad():
        if module:
            _, state = conv(x, return_final_state=True)
        else:
            _, state = fusedgru.causal_conv1d(x, w, b, dilation=dilation,
                                              return_final_state=True)
        assert state.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
        ys = [conv.step(steps[..., t], state) if module else fusedgru.causal_conv1d_update(
            steps[..., t], state, w, b, dilation=dilation) for t in range(3)]
        whole = fusedgru.causal_conv1d(torch.cat([x, steps], dim=2), w, b, dilation=dilation)
    assert torch.equal(x, prompt), "the prompt was overwritten through the state"
    assert_close(torch.stack(ys, dim=2), whole[..., L:], 1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_update_refuses_a_self_overlapping_state(device):
    """conv_state is written in place: like torch's in-place ops, refuse one whose elements
    share memory (an expand()ed state: each alias would take every row's shift); nothing is
    written."""
    N, C, W = 3, 5, 4
    w, x = torch.randn(C, W, device=device), torch.randn(N, C, device=device)
    state = torch.randn(1, C, W - 1, device=device).expand(N, C, W - 1)
    before = state.clone()
    with torch.no_grad(), pytest.raises(
            RuntimeError, match="conv_state is updated in place, but several of its elements"):
        fusedgru.causal_conv1d_update(x, state, w)
    assert torch.equal(state, before)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("alias", [
    "x is its row's oldest step", "x is its row's only step", "x in other rows' state",
    "x over the state's memory", "weight as a view", "weight over the state's memory",
    "bias as a view", "bias over the state's memory"])
def test_update_reads_inputs_inside_the_state_as_they_were(device, alias):
    """x, weight or bias living in conv_state's storage, as strided views or dense blocks over
    its memory: each is read as it was before the call, as if the caller had passed copies (the
    output and the state equal those of the copies). Before, strided views passed the overlap
    checks and were read after other rows had moved (x in other rows' state, a dense weight
    over a strided state: wrong outputs), and dense overlap was refused."""
    N = C = 5
    W, dilation = 2, 2  # S = (W - 1) dilation = W: a [N, S] slice of the state is a weight
    buf = torch.randn(N, C, W + 4, device=device)
    state = buf[:, :, 2:2 + W]  # strided: rows of W within rows of W + 4
    x, w, b = torch.randn(N, C, device=device), torch.randn(C, W, device=device), None
    if alias == "x is its row's oldest step":
        x = state[:, :, 0]
    elif alias == "x is its row's only step":
        dilation = 1  # S = 1: state[:, :, 0] is the whole state, dense
        state = buf[:, :, 2:3]
        x = state[:, :, 0]
    elif alias == "x in other rows' state":
        x = state.transpose(0, 1)[:, :, 1]  # x[n, c] is row (c, n)'s newest step
    elif alias == "x over the state's memory":
        x = buf.view(-1)[3:3 + N * C].view(N, C)  # dense, across rows of the state
    elif alias == "weight as a view":
        w = state[:, 2, :]
    elif alias == "weight over the state's memory":
        w = buf.view(-1)[2:2 + C * W].view(C, W)
    elif alias == "bias as a view":
        b = state[1, :, 0]
    else:
        b = buf.view(-1)[2:2 + C]
    copies = [t.clone() if t is not None else None for t in (x, state, w, b)]
    with torch.no_grad():
        want = fusedgru.causal_conv1d_update(*copies[:3], copies[3], dilation=dilation)
        got = fusedgru.causal_conv1d_update(x, state, w, b, dilation=dilation)
    assert torch.equal(got, want)
    assert torch.equal(state, copies[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("W, dilation, message", [
    (4, 2**62, r"dilation 4611686018427387904 is too large: the history \(W-1\)\*dilation = "
               r"3\*4611686018427387904 overflows int64"),
    (3, 2**62 + 1, r"the history \(W-1\)\*dilation = 2\*4611686018427387905 overflows int64"),
    (4, 2**60, r"dilation 1152921504606846976 is too large: \(L \+ \(W-1\)\*dilation\) \* C = "
               r"\(9 \+ 3458764513820540928\) \* 5 overflows int64"),
])
def test_absurd_dilation_is_refused(device, W, dilation, message):
    x = torch.randn(2, 5, 9, device=device)
    w, b = torch.randn(5, W, device=device), torch.randn(5, device=device)
    with pytest.raises(ValueError, match=message):
        fusedgru.causal_conv1d(x, w, b, dilation=dilation)
    with pytest.raises(ValueError, match=message):
        torch.ops.fusedgru.causal_conv1d_bwd(torch.randn_like(x), x, w, b, None, dilation, 0)
    if "history" in message:
        with torch.no_grad(), pytest.raises(ValueError, match=message):
            fusedgru.causal_conv1d_update(x[..., 0], torch.randn(2, 5, 3, device=device), w,
                                          b, dilation=dilation)
    conv = fusedgru.CausalConv1d(5, W, dilation=dilation).to(device)
    with pytest.raises(ValueError, match=message):
        conv(x)
    # a huge history that fits still runs: every tap but the last reads the zeros before t = 0
    y = fusedgru.causal_conv1d(x, w, b, dilation=2**40)
    assert torch.allclose(y, w[:, -1:] * x + b[:, None], atol=1e-6)


def x_with_gaps(layout, x, fill):
    """x (N, C, L) as a view into a larger tensor whose other elements are `fill`ed (random
    numbers or NaN): every fourth of twice the channels, after 5 leading steps (NCL), or the
    first C of C + 3 channels of (N, L, C + 3) rows (channel-last)."""
    N, C, L = x.shape
    if layout == "channels_last":
        base = torch.randn(N, L, C + 3).to(x.dtype)
        view = base[..., :C].transpose(1, 2)
    else:
        base = torch.randn(N, 2 * C, L + 5).to(x.dtype)
        view = base[:, ::2, 5:]
    if fill == "nan":
        base.fill_(float("nan"))
    view.copy_(x)
    return view


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["ncl", "channels_last"])
@pytest.mark.parametrize("W, d", [(2, 1), (4, 1), (3, 2)])
@pytest.mark.parametrize("act", [None, "silu"])
def test_reads_nothing_it_did_not_write_or_beyond_its_views(nan_filled_memory, dtype, layout,
                                                            W, d, act):
    """Forward, final state and every gradient (x, weight, bias, initial state), then five
    streaming steps (causal_conv1d_update on a state view, and the state after), the same bits
    whether fresh memory holds what it held before or NaN (every torch.empty), and whether x and
    the initial state are views into larger tensors holding random numbers or NaN around them.
    L = 530 and C = 70 reach the kernels' vectors, chunks and partial slabs."""
    N, C, L = 2, 70, 530
    x = torch.randn(N, C, L).to(dtype)
    w, b = torch.randn(C, W).to(dtype), torch.randn(C).to(dtype)
    init = torch.randn(N, C, (W - 1) * d).to(dtype)
    gy = torch.randn(N, C, L).to(dtype)
    runs = {}
    for fill, memory in (("random", False), ("random", True), ("nan", True)):
        nan_filled_memory(memory)
        xi = x_with_gaps(layout, x, fill).requires_grad_()
        si = x_with_gaps("ncl", init, fill).requires_grad_()
        wi, bi = w.clone().requires_grad_(), b.clone().requires_grad_()
        y, final = fusedgru.causal_conv1d(xi, wi, bi, dilation=d, activation=act,
                                          initial_state=si, return_final_state=True)
        grads = torch.autograd.grad((y.float() * gy.float()).sum() + final.float().sum(),
                                    [xi, wi, bi, si])
        runs[fill, memory] = [y, final, *grads]
        with torch.no_grad():  # streaming: a few steps of causal_conv1d_update on a state view
            state = x_with_gaps("ncl", init, fill)
            for t in range(5):
                runs[fill, memory].append(fusedgru.causal_conv1d_update(
                    x_with_gaps("ncl", x[:, :, t:t + 1], fill)[..., 0], state, w, b, dilation=d,
                    activation=act))
            runs[fill, memory].append(state.clone())
        nan_filled_memory(False)
    for run in (("random", True), ("nan", True)):
        for i, (a, c) in enumerate(zip(runs["random", False], runs[run])):
            assert torch.isfinite(a).all() and torch.equal(a, c), f"tensor {i} differs in {run}"


def test_arguments_left_on_the_meta_device_are_refused():
    """A weight, bias or state on the meta device with a CPU x dispatches to the ops' Meta
    kernels (their fakes), which returned uninitialized memory on x's device; they now check
    devices as the CPU and CUDA ops do. (The GRU's modules refuse such calls in Python.)"""
    x, w, b = torch.randn(2, 3, 8), torch.randn(3, 4), torch.randn(3)
    meta = {"weight": w.to("meta"), "bias": b.to("meta"),
            "initial_state": torch.zeros(2, 3, 3, device="meta")}
    for name, t in meta.items():
        args = {"weight": w, "bias": b, "initial_state": None} | {name: t}
        with pytest.raises(RuntimeError, match=f"{name} and x must be on the same device"):
            fusedgru.causal_conv1d(x, args["weight"], args["bias"],
                                   initial_state=args["initial_state"])
    with torch.no_grad(), pytest.raises(RuntimeError, match="conv_state and x must be on the"):
        fusedgru.causal_conv1d_update(x[..., 0], torch.zeros(2, 3, 3, device="meta"), w)
    with pytest.raises(RuntimeError, match="weight and x must be on the same device"):
        fusedgru.CausalConv1d(3, 4, device="meta")(x)


def test_a_channels_last_module_names_its_own_layout_in_shape_errors():
    conv = fusedgru.CausalConv1d(5, 3, channels_last=True)
    for shape in ((2, 5), (1, 2, 5, 3)):
        with pytest.raises(RuntimeError, match=re.escape(
                f"x must have shape (N, L, C) (channels_last), got {shape}")):
            conv(torch.randn(*shape))

