"""fusedgru.GRU computes what torch.nn.GRU computes: outputs, h_n and every gradient over a
grid of configurations and input layouts, dropout, NaN and extreme values, low precision and
CPU autocast, and results independent of threads."""

import copy

import pytest
import torch
from gru_testing import DEVICES, TOL, assert_close, check_parity, make_input, pair, rel_err
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedgru

# (T, N, C, H, num_layers, bidirectional, batch_first, bias): odd sizes, T=1, N=1, deep, wide.
CONFIGS = [
    (1, 1, 1, 1, 1, False, False, True),
    (1, 3, 17, 130, 1, True, False, True),
    (3, 1, 3, 17, 2, False, True, True),
    (17, 3, 1, 3, 1, True, True, False),
    (5, 17, 130, 17, 3, True, False, True),
    (9, 130, 3, 130, 1, False, True, True),
    (33, 5, 17, 64, 2, False, False, False),
    (12, 16, 64, 256, 1, False, False, True),
]


def config_id(c):
    T, N, C, H, L, bi, bf, b = c
    return f"T{T}-N{N}-C{C}-H{H}-L{L}" + ("-bi" if bi else "") + ("-bf" if bf else "") + (
        "" if b else "-nobias")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=config_id)
def test_parity_with_nn_gru(device, dtype, cfg):
    T, N, C, H, L, bi, bf, bias = cfg
    ref, ours = pair(device, dtype, C, H, num_layers=L, bidirectional=bi, batch_first=bf,
                     bias=bias)
    x = make_input(device, dtype, T, N, C, bf)
    hx = torch.randn(L * (2 if bi else 1), N, H, device=device, dtype=dtype, requires_grad=True)
    check_parity(ref, ours, x, hx, dtype)
    check_parity(ref, ours, x, None, dtype, "hx=None")


@pytest.mark.parametrize("device", DEVICES)
def test_strided_inputs(device):
    dtype = torch.float64
    ref, ours = pair(device, dtype, 6, 5, num_layers=2, bidirectional=True)
    base = torch.randn(14, 8, 12, device=device, dtype=dtype)
    views = {
        "time-strided": base[::2, :3, :6],
        "feature-strided": base[:5, :4, ::2],
        "batch-major storage": base[:4, :7, :6].transpose(0, 1).contiguous().transpose(0, 1),
        "expanded batch": base[:5, :1, :6].expand(5, 3, 6),
    }
    for what, v in views.items():
        x = v.detach().requires_grad_()
        N = x.shape[1]
        hx = torch.randn(N, 4, 5, device=device, dtype=dtype).transpose(0, 1).requires_grad_()
        assert not hx.is_contiguous()
        check_parity(ContiguousHx(ref), ours, x, hx, dtype, what)


class ContiguousHx(nn.Module):
    """nn.GRU on CUDA refuses a strided hx ("rnn: hx is not contiguous"), which fusedgru takes:
    the reference gets a contiguous copy (the same values, the same gradient)."""

    def __init__(self, gru):
        super().__init__()
        self.gru = gru

    def forward(self, x, hx):
        return self.gru(x, hx.contiguous())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_input(device, batch_first):
    dtype = torch.float64
    ref, ours = pair(device, dtype, 4, 6, num_layers=2, bidirectional=True,
                     batch_first=batch_first)
    x = torch.randn(7, 4, device=device, dtype=dtype, requires_grad=True)
    hx = torch.randn(4, 6, device=device, dtype=dtype, requires_grad=True)
    check_parity(ref, ours, x, hx, dtype, "unbatched")
    check_parity(ref, ours, x, None, dtype, "unbatched, hx=None")
    out, h = ours(x)
    assert out.shape == (7, 12) and h.shape == (4, 6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("N, H", [(5, 7), (40, 96)], ids=["small", "threaded"])
def test_packed_sequence(device, enforce_sorted, dtype, N, H):
    # "threaded": large enough that the CPU kernels split hidden units across threads
    ref, ours = pair(device, dtype, 5, H, num_layers=2, bidirectional=True)
    lengths = torch.randint(1, 10, (N,))
    lengths[torch.randint(0, N, (1,))] = 9
    if enforce_sorted:
        lengths = lengths.sort(descending=True).values
    x = torch.randn(9, N, 5, device=device, dtype=dtype, requires_grad=True)
    hx = torch.randn(4, N, H, device=device, dtype=dtype, requires_grad=True)
    go = None
    results = []
    for m in (ref, ours):
        packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
        out, h = m(packed, hx)
        assert isinstance(out, nn.utils.rnn.PackedSequence)
        if go is None:
            go, gh = torch.randn_like(out.data), torch.randn_like(h)
        loss = (out.data * go).sum() + (h * gh).sum()
        grads = torch.autograd.grad(loss, [x, hx, *m.parameters()])
        padded, lens = pad_packed_sequence(out)
        results.append((out, h, padded, lens, grads))
    (o_r, h_r, p_r, l_r, g_r), (o_o, h_o, p_o, l_o, g_o) = results
    tol = TOL[dtype]
    assert torch.equal(o_o.batch_sizes, o_r.batch_sizes)
    assert torch.equal(l_o, l_r)
    assert_close(o_o.data, o_r.data, tol, "packed output")
    assert_close(p_o, p_r, tol, "padded output")
    assert_close(h_o, h_r, tol, "h_n")
    for i, (a, b) in enumerate(zip(g_o, g_r, strict=True)):
        assert_close(a, b, tol, f"grad {i}")


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    ref, ours = pair(device, torch.float32, 3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 0, 3, device=device, requires_grad=True)
    out_r, h_r = ref(x)
    out_o, h_o = ours(x)
    assert out_o.shape == out_r.shape == (5, 0, 8)
    assert h_o.shape == h_r.shape == (4, 0, 4)
    (out_o.sum() + h_o.sum()).backward()
    assert x.grad.shape == x.shape
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in ours.parameters())


@pytest.mark.parametrize("batch_first", [False, True], ids=["seq-first", "batch-first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("form", ["padded", "packed", "lengths", "unbatched", "packed-N20",
                                  "lengths-N20"])
def test_dropout_matches_nn_gru_rng(batch_first, bidirectional, form):
    """Dropout between layers draws nn.GRU's masks on the CPU under one seed, whatever the
    layout (nn.GRU's layer outputs are time-major, or packed rows), and leaves the generator
    where nn.GRU does: outputs, h_n and every gradient, and the next draw. `lengths` (ties
    included) against nn.GRU on pack_padded_sequence(enforce_sorted=False) of the same
    lengths; 20 rows with ties: torch's CPU sort moves tied rows from 17 on, so the packed
    rows must not be sorted again."""
    ref, ours = pair("cpu", torch.float64, 4, 6, num_layers=3, dropout=0.4,
                     batch_first=batch_first, bidirectional=bidirectional)
    T, N = 7, 20 if form.endswith("N20") else 4
    form = form.removesuffix("-N20")
    x = torch.randn((N, T, 4) if batch_first else (T, N, 4), dtype=torch.float64)
    lengths = torch.tensor([7, 3] * 10 if N == 20 else [7, 3, 7, 5])
    if form == "unbatched":
        x = x[0] if batch_first else x[:, 0]

    def run(m, use_lengths):
        xi = x.clone().requires_grad_()
        if form == "padded" or form == "unbatched":
            out, h = m(xi)
        elif use_lengths:
            out, h = m(xi, lengths=lengths)
        else:
            seq = nn.utils.rnn.pack_padded_sequence(xi, lengths, batch_first=batch_first,
                                                    enforce_sorted=False)
            out, h = m(seq)
            out = nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first,
                                                   total_length=T)[0]
        grads = torch.autograd.grad(out.square().sum() + h.sum(), [xi, *m.parameters()])
        return [out, h, *grads], torch.rand(3)

    torch.manual_seed(1234)
    want, next_r = run(ref, False)
    torch.manual_seed(1234)
    got, next_o = run(ours, form == "lengths")
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert_close(a, b, TOL[torch.float64], f"result {i}")
    assert torch.equal(next_o, next_r), "the generator after the call"
    torch.manual_seed(99)
    assert not torch.allclose(run(ours, form == "lengths")[0][0], got[0]), \
        "dropout masks must change with the RNG"


@pytest.mark.parametrize("batch_first", [False, True], ids=["seq-first", "batch-first"])
@pytest.mark.parametrize("case", ["inference-mode input", "input changed after the call"])
def test_what_the_backward_saves_of_the_input_is_nn_grus(batch_first, case):
    """nn.GRU saves a copy of a batch_first input (its time-major transpose), the input itself
    otherwise: an input made under inference_mode, or changed in place between the call and
    the backward, trains with batch_first and raises autograd's error without. The same here,
    with nn.GRU's gradients where it trains."""
    ref, ours = pair("cpu", torch.float64, 3, 4, num_layers=2, batch_first=batch_first)
    x0 = torch.randn(2, 5, 3, dtype=torch.float64)

    def train_step(m):
        if case == "inference-mode input":
            with torch.inference_mode():
                x = x0.clone()
            out, h = m(x)
        else:
            x = x0.clone()
            out, h = m(x)
            x.add_(1)
        return torch.autograd.grad(out.square().sum() + h.sum(), list(m.parameters()))

    if batch_first:
        for a, b in zip(train_step(ours), train_step(ref), strict=True):
            assert_close(a, b, TOL[torch.float64], case)
        return
    with pytest.raises(RuntimeError) as expected:
        train_step(ref)
    with pytest.raises(RuntimeError) as got:
        train_step(ours)
    assert str(got.value).split(".")[0] == str(expected.value).split(".")[0]


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_only_in_training(device):
    ref, ours = pair(device, torch.float64, 4, 6, num_layers=2, dropout=0.5)
    ref.eval()
    ours.eval()
    x = torch.randn(6, 3, 4, device=device, dtype=torch.float64)
    a, _ = ours(x)
    b, _ = ours(x)
    assert torch.equal(a, b)
    assert_close(a, ref(x)[0], TOL[torch.float64], "eval output")
    ours.train()
    c, _ = ours(x)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_nan_propagates_to_exactly_the_affected_outputs(device, bidirectional):
    T, N, H, t0, i0 = 9, 4, 5, 4, 2
    _, ours = pair(device, torch.float32, 3, H, bidirectional=bidirectional)
    x = torch.randn(T, N, 3, device=device)
    x[t0, i0, 1] = float("nan")
    out, h = ours(x)
    nan = torch.isnan(out)
    expected = torch.zeros_like(nan)
    expected[t0:, i0, :H] = True
    if bidirectional:
        expected[:t0 + 1, i0, H:] = True
    assert torch.equal(nan, expected)
    assert torch.isnan(h[:, i0]).all() and not torch.isnan(h[:, [0, 1, 3]]).any()


@pytest.mark.parametrize("device, dtype", [
    ("cpu", torch.bfloat16),
    pytest.param("cuda", torch.bfloat16, marks=pytest.mark.cuda),
    pytest.param("cuda", torch.float16, marks=pytest.mark.cuda),
], ids=["cpu-bf16", "cuda-bf16", "cuda-fp16"])
@pytest.mark.parametrize("N, H", [(8, 64), (32, 128)])
def test_low_precision_error_within_twice_torch(device, dtype, N, H):
    T, C = 16, 32
    ref64, _ = pair("cpu", torch.float64, C, H, num_layers=2, bidirectional=True)
    low = nn.GRU(C, H, num_layers=2, bidirectional=True).to(device=device, dtype=dtype)
    low.load_state_dict(ref64.state_dict())
    ours = fusedgru.GRU(C, H, num_layers=2, bidirectional=True).to(device=device, dtype=dtype)
    ours.load_state_dict(ref64.state_dict())
    x = torch.randn(T, N, C, dtype=dtype)
    go = torch.randn(T, N, 2 * H, dtype=dtype)
    results = {}
    for name, m, dev, dt in (("ref", ref64, "cpu", torch.float64), ("torch", low, device, dtype),
                             ("ours", ours, device, dtype)):
        xi = x.to(device=dev, dtype=dt).requires_grad_()
        out, h = m(xi)
        loss = (out * go.to(device=dev, dtype=dt)).sum()
        grads = torch.autograd.grad(loss, [xi, *m.parameters()])
        results[name] = [out, h, *grads]
    for i, (r, t, o) in enumerate(zip(results["ref"], results["torch"], results["ours"])):
        e_torch, e_ours = rel_err(t, r), rel_err(o, r)
        assert o.dtype == dtype
        assert e_ours <= 2 * e_torch + 1e-3, f"tensor {i}: ours {e_ours:.3g}, torch {e_torch:.3g}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("N", [1, 3, 8, 9])
def test_streaming_single_steps_equal_the_full_sequence(device, N):
    """Inference one step at a time (T = 1, hx carried: the CPU's dot-product path up to 8
    rows) equals one call over the whole sequence and nn.GRU."""
    ref, ours = pair(device, torch.float64, 5, 17, num_layers=2)
    x = torch.randn(11, N, 5, device=device, dtype=torch.float64)
    hx = torch.randn(2, N, 17, device=device, dtype=torch.float64)
    with torch.no_grad():
        full, h_full = ours(x, hx)
        ref_out, ref_h = ref(x, hx)
        h, steps = hx, []
        for t in range(x.shape[0]):
            out, h = ours(x[t:t + 1], h)
            steps.append(out)
    assert_close(torch.cat(steps), full, TOL[torch.float64], "steps vs full")
    assert_close(h, h_full, TOL[torch.float64], "h_n")
    assert_close(full, ref_out, TOL[torch.float64], "vs nn.GRU")
    assert_close(h_full, ref_h, TOL[torch.float64], "h_n vs nn.GRU")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [float("inf"), 1e30, 1e36, 3e38],
                         ids=["inf", "1e30", "1e36", "3e38"])
def test_extreme_states_behave_like_nn_gru(device, scale):
    """IEEE-faithful activations at the extremes: sigmoid(-inf) is exactly 0 and exp overflows
    to inf as in torch.sigmoid/torch.tanh, so an infinite or huge hidden state gives nn.GRU's
    NaNs, infinities and values (a clamped exp made z * h finite, 0.4-sized, or 1e22-sized
    weight gradients where nn.GRU has 0)."""
    torch.manual_seed(0)
    ref, ours = pair(device, torch.float32, 5, 7)
    x = torch.randn(4, 3, 5, device=device)
    hx = torch.randn(1, 3, 7, device=device)
    hx[0, 0, 2] = scale
    hx[0, 1, 4] = -scale
    outs = []
    for m in (ref, ours):
        hxg = hx.clone().requires_grad_()
        out, h_n = m(x, hxg)
        loss = out.nan_to_num(0, 0, 0).sum() + h_n.nan_to_num(0, 0, 0).sum()
        grads = torch.autograd.grad(loss, [hxg, *m.parameters()], allow_unused=True)
        outs.append((out, h_n, *grads))
    for i, (o, r) in enumerate(zip(*reversed(outs))):
        assert torch.equal(o.isnan(), r.isnan()), f"tensor {i}: NaN positions differ"
        assert torch.equal(o.isinf(), r.isinf()), f"tensor {i}: inf positions differ"
        fin = o.isfinite() & r.isfinite()
        err = ((o[fin] - r[fin]).abs().max() / r[fin].abs().max().clamp_min(1)).item() \
            if fin.any() else 0.0
        assert err <= 1e-4, f"tensor {i}: {err}"


# ---- CPU autocast: the dtypes (and values) nn.GRU gives ----

def test_cpu_autocast_behaves_like_nn_gru():
    # Under CPU autocast nn.GRU keeps float32 outputs for a float32 input (its GEMMs run in
    # bfloat16 inside); ours runs in float32 and is at least as accurate. A bfloat16 input makes
    # both run in bfloat16.
    ref, ours = pair("cpu", torch.float32, 4, 6)
    ref64 = nn.GRU(4, 6).double()
    ref64.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 4)
    exact = ref64(x.double())[0]
    with torch.autocast("cpu"):
        out_r, _ = ref(x)
        out_o, _ = ours(x)
        assert out_o.dtype == out_r.dtype == torch.float32
        assert rel_err(out_o, exact) <= 2 * rel_err(out_r, exact) + 1e-6
        out_r, _ = ref(x.bfloat16())
        out_o, _ = ours(x.bfloat16())
        assert out_o.dtype == out_r.dtype == torch.bfloat16
        assert rel_err(out_o, exact) <= 2 * rel_err(out_r, exact) + 1e-3

AUTOCAST_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("autocast_dtype", ["bf16", "fp16"], ids=lambda d: f"autocast-{d}")
@pytest.mark.parametrize("x_dtype", ["fp32", "bf16", "fp16"], ids=lambda d: f"x-{d}")
@pytest.mark.parametrize("hx_dtype", [None, "fp32", "bf16", "fp16"], ids=lambda d: f"hx-{d}")
def test_gru_under_cpu_autocast_returns_nn_grus_dtypes(autocast_dtype, x_dtype, hx_dtype):
    """nn.GRU under CPU autocast returns output and h_n in promote_types(autocast dtype, hx's
    dtype) (hx defaults to zeros of the input's dtype; bf16 with fp16 promotes to fp32); ours
    too, at least as accurately (against float64 on the same inputs)."""
    ref, ours = pair("cpu", torch.float32, 4, 6, num_layers=2, bidirectional=True)
    ref64 = copy.deepcopy(ref).double()
    x = torch.randn(5, 3, 4).to(AUTOCAST_DTYPES[x_dtype])
    hx = torch.randn(4, 3, 6).to(AUTOCAST_DTYPES[hx_dtype]) if hx_dtype is not None else None
    exact = ref64(x.double(), hx.double() if hx is not None else None)
    with torch.autocast("cpu", dtype=AUTOCAST_DTYPES[autocast_dtype]):
        theirs = ref(x, hx) if hx is not None else ref(x)
        got = ours(x, hx) if hx is not None else ours(x)
    for what, o, t, e in zip(("output", "h_n"), got, theirs, exact):
        assert o.dtype == t.dtype, f"{what}: {o.dtype}, nn.GRU gives {t.dtype}"
        assert rel_err(o, e) <= 2 * rel_err(t, e) + 1e-6, what
        assert rel_err(o, t) <= 2e-2, what  # the same function, up to nn.GRU's bf16 GEMMs


# ---- threads ----

@pytest.mark.parametrize("lengths", [False, True], ids=["padded", "lengths"])
def test_cpu_results_are_bitwise_independent_of_the_thread_count(lengths):
    """Each thread owns a fixed block of hidden units and every sum runs in a fixed order, so
    1 and 2 intra-op threads give the same bits (LayerNormGRU does not: its row statistics
    merge per-thread partials; README, Limits)."""
    prev = torch.get_num_threads()
    results = []
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            m = fusedgru.GRU(24, 160, num_layers=2, bidirectional=True)
            x = torch.randn(9, 16, 24, requires_grad=True)
            lens = torch.randint(0, 10, (16,)) if lengths else None
            out, h = m(x, lengths=lens)
            grads = torch.autograd.grad((out * torch.randn_like(out)).sum() + h.sum(),
                                        [x, *m.parameters()])
            results.append([out, h, *grads])
    finally:
        torch.set_num_threads(prev)
    for i, (a, b) in enumerate(zip(*results)):
        assert torch.equal(a, b), f"tensor {i} differs between 2 and 1 threads"

def test_threads_sharing_one_module_equal_sequential_runs():
    """Four Python threads run forward and backward through one fusedgru.GRU at once (inputs
    of different sizes, so the kernels' partitions differ); every result is bitwise the one a
    sequential run gives."""
    import threading

    m = fusedgru.GRU(6, 32, num_layers=2, bidirectional=True)
    inputs = [(torch.randn(9 + 3 * i, 2 + i, 6, requires_grad=True),
               torch.randn(4, 2 + i, 32)) for i in range(4)]

    def run(i):
        x, hx = inputs[i]
        out, h = m(x, hx)
        loss = (out * out).sum() + h.sum()
        return [out.detach(), h.detach(), *torch.autograd.grad(loss, [x, *m.parameters()])]

    expected = [run(i) for i in range(4)]
    for _ in range(3):
        results, errors = [None] * 4, []
        barrier = threading.Barrier(4)

        def worker(i, barrier=barrier, results=results, errors=errors):  # this round's
            try:
                barrier.wait()
                results[i] = run(i)
            except BaseException as e:  # re-raised below, in the test's own thread
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        for i in range(4):
            for a, b in zip(results[i], expected[i], strict=True):
                assert torch.equal(a, b), f"thread {i}"


@pytest.mark.parametrize("cls", ["GRU", "GRUCell"])
@pytest.mark.parametrize("module_dtype, x_dtype, hx_dtype", [
    (torch.float64, torch.float64, None), (torch.float64, torch.float32, None),
    (torch.float32, torch.float64, None), (torch.float32, torch.float32, torch.float64),
    (torch.float64, torch.float64, torch.float32), (torch.float64, torch.bfloat16, None)])
def test_float64_meeting_another_dtype_under_cpu_autocast_raises_as_nn_gru(
        cls, module_dtype, x_dtype, hx_dtype):
    """CPU autocast never casts float64: where it meets another dtype nn.GRU's GEMM raises
    (the same error type and message here); all float64 runs in float64."""
    ref = getattr(nn, cls)(3, 4).to(module_dtype)
    ours = getattr(fusedgru, cls)(3, 4).to(module_dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn((5, 2, 3) if cls == "GRU" else (2, 3)).to(x_dtype)
    hx_shape = (1, 2, 4) if cls == "GRU" else (2, 4)
    args = (x,) if hx_dtype is None else (x, torch.randn(hx_shape).to(hx_dtype))
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    with torch.autocast("cpu"):
        try:
            expected = first(ref(*args))
        except RuntimeError as error:
            with pytest.raises(RuntimeError) as got:
                ours(*args)
            assert str(got.value) == str(error)
            return
        got = first(ours(*args))
    assert got.dtype == expected.dtype == torch.float64
    assert_close(got, expected, TOL[torch.float64])


@pytest.mark.parametrize("layers, bidirectional, batch_first, unbatched", [
    (1, False, False, False), (2, True, True, False), (2, False, False, True)],
    ids=["L1", "L2-bi-batch_first", "L2-unbatched"])
def test_a_cpu_training_step_of_one_time_step_is_nn_grus(layers, bidirectional, batch_first,
                                                          unbatched):
    """A CPU call of one time step that trains (a decoder fed one step at a time) is nn.GRU's
    own call (one step has nothing to fuse across time; README): output, h_n and every gradient
    bitwise nn.GRU's over a loop of steps carrying h, dropout between layers included."""
    T, N, C, H = 4, 3, 5, 17
    D = 2 if bidirectional else 1
    ref = nn.GRU(C, H, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first,
                 dropout=0.25 if layers > 1 else 0.0)
    ours = fusedgru.GRU(C, H, num_layers=layers, bidirectional=bidirectional,
                        batch_first=batch_first, dropout=0.25 if layers > 1 else 0.0)
    ours.load_state_dict(ref.state_dict())
    shape = (1, C) if unbatched else ((N, 1, C) if batch_first else (1, N, C))
    xs = torch.randn(T, *shape)
    h0 = torch.randn(layers * D, *(() if unbatched else (N,)), H)
    results = []
    for m in (ref, ours):
        torch.manual_seed(0)
        x, h = xs.clone().requires_grad_(), h0.clone().requires_grad_()
        outs, state = [], h
        for t in range(T):
            out, state = m(x[t], state)
            outs.append(out)
        loss = torch.stack(outs).pow(2).sum() + state.sum()
        results.append([*outs, state, *torch.autograd.grad(loss, [x, h, *m.parameters()])])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_a_one_step_training_call_stays_fused_where_the_choice_would_show():
    """Outside plain eager training (fusedgru._ops.plain_cpu_training) a one-step training call
    stays on the fused ops: under CPU autocast it is step 0 of a longer call bitwise (nn.GRU's
    own call would run its GEMMs in bf16, the fused path in fp32), and torch.func.vmap over
    one-step sequences runs (no batching rule for aten::gru) and agrees with a loop."""
    m = fusedgru.GRU(6, 10)
    x, h = torch.randn(3, 4, 6), torch.randn(1, 4, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        one, two = m(x[:1], h)[0], m(x, h)[0][:1]
    assert torch.equal(one, two)
    xs = torch.randn(5, 1, 2, 6)
    got = torch.func.vmap(lambda xi: m(xi)[0])(xs)
    assert_close(got, torch.stack([m(xi)[0] for xi in xs]), TOL[torch.float32], "vmap")


def _complex_err(a, ref):
    a, ref = a.detach().to(torch.complex128), ref.detach().to(torch.complex128)
    return ((a - ref).abs().norm() / ref.abs().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("cell", [False, True], ids=["GRU", "GRUCell"])
def test_complex_dtypes_run_as_in_nn(cell):
    """nn.GRU and nn.GRUCell run complex64 and complex128 on the CPU; so do ours, through the
    torch-op references (the kernels are real): complex128 outputs and every gradient equal to
    nn's, complex64 as close to them as nn's own complex64 (2x + 1e-5), in both grad modes."""
    kw = {} if cell else dict(num_layers=2, bidirectional=True, batch_first=True)
    mk = (nn.GRUCell, fusedgru.GRUCell) if cell else (nn.GRU, fusedgru.GRU)
    ref = mk[0](3, 4, dtype=torch.complex128, **kw)
    with torch.no_grad():  # a contracting recurrence: complex gates amplify rounding less
        for p in ref.parameters():
            p.mul_(0.5)
    x = torch.randn((5, 3) if cell else (5, 6, 3), dtype=torch.complex128) * 0.5
    hx = torch.randn((5, 4) if cell else (4, 5, 4), dtype=torch.complex128) * 0.5

    def results(m, dt, grad):
        m = m.to(dt)
        xi, hi = x.to(dt).requires_grad_(grad), hx.to(dt).requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            out = m(xi, hi)
            out = (out,) if cell else out
            if not grad:
                return list(out)
            loss = sum((o * o.conj()).real.sum() + o.imag.sum() for o in out)
            return [*out, *torch.autograd.grad(loss, [xi, hi, *m.parameters()])]

    for grad in (False, True):
        want = results(ref, torch.complex128, grad)
        for dt in (torch.complex128, torch.complex64):
            ours = mk[1](3, 4, dtype=dt, **kw)
            ours.load_state_dict(ref.state_dict())
            peer = mk[0](3, 4, dtype=dt, **kw)
            peer.load_state_dict(ref.state_dict())
            got, low = results(ours, dt, grad), results(peer, dt, grad)
            for i, (o, p_, w) in enumerate(zip(got, low, want, strict=True)):
                assert o.dtype == dt, i
                e_o, e_p = _complex_err(o, w), _complex_err(p_, w)
                bound = 1e-12 if dt == torch.complex128 else 2 * e_p + 1e-5
                assert e_o <= bound, f"{dt} grad={grad} result {i}: {e_o:.3g} (nn: {e_p:.3g})"

