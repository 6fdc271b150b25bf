"""fusedgru.GRU against torch.nn.GRU: outputs, h_n and every gradient, and the module's interface."""

import copy
import io
import math

import pytest
import torch
from gru_testing import DEVICES, TOL, assert_close, pair, rel_err, run_with_grads
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


def make_input(device, dtype, T, N, C, batch_first):
    shape = (N, T, C) if batch_first else (T, N, C)
    return torch.randn(shape, device=device, dtype=dtype, requires_grad=True)


def check_parity(ref, ours, x, hx, dtype, what=""):
    go, gh = grads_for(ref, x, hx)
    out_r, h_r, g_r = run_with_grads(ref, x, hx, go, gh)
    out_o, h_o, g_o = run_with_grads(ours, x, hx, go, gh)
    tol = TOL[dtype]
    assert_close(out_o, out_r, tol, f"{what} output")
    assert_close(h_o, h_r, tol, f"{what} h_n")
    names = (["input"] + (["hx"] if hx is not None else [])
             + [n for n, _ in ref.named_parameters()])
    for name, a, b in zip(names, g_o, g_r, strict=True):
        assert_close(a, b, tol, f"{what} grad {name}")


def grads_for(ref, x, hx):
    with torch.no_grad():
        out, h = ref(x, hx) if hx is not None else ref(x)
    return torch.randn_like(out), torch.randn_like(h)


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
        check_parity(ref, ours, x, hx, dtype, what)


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


def test_dropout_matches_nn_gru_rng():
    # Dropout between layers draws the same masks as nn.GRU on the CPU (same ops, same order).
    ref, ours = pair("cpu", torch.float64, 4, 6, num_layers=3, dropout=0.4)
    x = torch.randn(7, 3, 4, dtype=torch.float64)
    torch.manual_seed(1234)
    out_r, h_r = ref(x)
    torch.manual_seed(1234)
    out_o, h_o = ours(x)
    assert_close(out_o, out_r, TOL[torch.float64], "train output")
    assert_close(h_o, h_r, TOL[torch.float64], "train h_n")
    torch.manual_seed(99)
    out_o2, _ = ours(x)
    assert not torch.allclose(out_o2, out_o), "dropout masks must change with the RNG"


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


def test_parameters_state_dict_and_init_match_nn_gru():
    kwargs = dict(num_layers=2, bidirectional=True, bias=True)
    torch.manual_seed(7)
    ref = nn.GRU(5, 9, **kwargs)
    torch.manual_seed(7)
    ours = fusedgru.GRU(5, 9, **kwargs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for (n, a), (_, b) in zip(ours.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), f"{n}: same seed must give nn.GRU's initialization"
    bound = 1 / math.sqrt(9)
    assert all(p.abs().max() <= bound for p in ours.parameters())
    back = nn.GRU(5, 9, **kwargs)
    back.load_state_dict(ours.state_dict())
    x = torch.randn(4, 2, 5)
    assert_close(back(x)[0], ours(x)[0], TOL[torch.float32], "reverse load")
    assert repr(ours).replace("GRU", "") == repr(ref).replace("GRU", "")
    assert ours.all_weights[0][0] is ours.weight_ih_l0


@pytest.mark.parametrize("kwargs", [
    dict(input_size=4, hidden_size=0),
    dict(input_size=0, hidden_size=4),
    dict(input_size=4, hidden_size=4, num_layers=0),
    dict(input_size=4, hidden_size=4, bias=1),
    dict(input_size=4, hidden_size=4, batch_first=1),
    dict(input_size=4.0, hidden_size=4),
    dict(input_size=4, hidden_size="4"),
    dict(input_size=4, hidden_size=4, dropout=1.5),
    dict(input_size=4, hidden_size=4, dropout=True),
    dict(input_size=4, hidden_size=4, proj_size=2),
])
def test_constructor_errors_match_nn_gru(kwargs):
    with pytest.raises(Exception) as expected:
        nn.GRU(**kwargs)
    with pytest.raises(type(expected.value)) as got:
        fusedgru.GRU(**kwargs)
    assert str(got.value) == str(expected.value)


def test_dropout_warning_matches_nn_gru():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        fusedgru.GRU(3, 4, dropout=0.5)


BAD_INPUTS = {
    "4-D input": lambda d: (torch.randn(3, 2, 4, 1, device=d), None),
    "1-D input": lambda d: (torch.randn(4, device=d), None),
    "wrong feature size": lambda d: (torch.randn(3, 2, 5, device=d), None),
    "wrong hx batch": lambda d: (torch.randn(3, 2, 4, device=d), torch.randn(2, 3, 6, device=d)),
    "wrong hx layers": lambda d: (torch.randn(3, 2, 4, device=d), torch.randn(1, 2, 6, device=d)),
    "2-D hx for 3-D input": lambda d: (torch.randn(3, 2, 4, device=d), torch.randn(2, 6, device=d)),
    "3-D hx for 2-D input": lambda d: (torch.randn(3, 4, device=d), torch.randn(2, 1, 6, device=d)),
    "float64 input": lambda d: (torch.randn(3, 2, 4, device=d, dtype=torch.float64), None),
    "int input": lambda d: (torch.ones(3, 2, 4, device=d, dtype=torch.long), None),
    "empty sequence": lambda d: (torch.randn(0, 2, 4, device=d), None),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_raise_like_nn_gru(device, case):
    ref, ours = pair(device, torch.float32, 4, 6, num_layers=2)
    x, hx = BAD_INPUTS[case](device)
    with pytest.raises(Exception) as expected:
        ref(x, hx)
    with pytest.raises(type(expected.value)) as got:
        ours(x, hx)
    assert str(got.value) == str(expected.value)
    good = torch.randn(3, 2, 4, device=device)
    assert_close(ours(good)[0], ref(good)[0], TOL[torch.float32], "after the error")


@pytest.mark.parametrize("device", DEVICES)
def test_hx_dtype_mismatch_is_clear(device):
    # nn.GRU fails inside a matmul here; we say what is wrong.
    _, ours = pair(device, torch.float32, 4, 6)
    x = torch.randn(3, 2, 4, device=device)
    hx = torch.randn(1, 2, 6, device=device, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="Input and hidden tensors are not the same dtype"):
        ours(x, hx)


@pytest.mark.cuda
def test_device_mismatch_is_clear():
    ours = fusedgru.GRU(4, 6)
    x = torch.randn(3, 2, 4, device="cuda")
    with pytest.raises(RuntimeError, match="Input and parameter tensors are not at the same device"):
        ours(x)
    with pytest.raises(RuntimeError, match="Input and hidden tensors are not at the same device"):
        ours.cuda()(x, torch.randn(1, 2, 6))


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


def test_convert_replaces_every_gru_and_shares_parameters():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Sequential(nn.Linear(3, 4), nn.GRU(4, 5, batch_first=True))
            self.dec = nn.GRU(5, 6, num_layers=2, bidirectional=True, dropout=0.2)

    net = Net().double().eval()
    params_before = {n: p for n, p in net.named_parameters()}
    enc_gru, dec_gru = copy.deepcopy(net.enc[1]), copy.deepcopy(net.dec)
    out = fusedgru.convert(net)
    assert out is net
    assert isinstance(net.enc[1], fusedgru.GRU) and isinstance(net.dec, fusedgru.GRU)
    assert not any(type(m) is nn.GRU for m in net.modules())
    assert net.dec.dropout == 0.2 and net.dec.num_layers == 2 and net.dec.bidirectional
    assert not net.dec.training
    for n, p in net.named_parameters():
        assert p is params_before[n], f"{n} must be the same Parameter object"
    x = torch.randn(2, 7, 4, dtype=torch.float64)
    assert_close(net.enc[1](x)[0], enc_gru(x)[0], TOL[torch.float64], "enc")
    y = torch.randn(7, 2, 5, dtype=torch.float64)
    assert_close(net.dec(y)[0], dec_gru(y)[0], TOL[torch.float64], "dec")
    single = fusedgru.convert(nn.GRU(2, 3))
    assert isinstance(single, fusedgru.GRU)


def test_revert_gives_stock_modules_sharing_parameters():
    net = nn.Sequential(fusedgru.GRU(3, 4, num_layers=2, bidirectional=True, batch_first=True),
                        fusedgru.GRUCell(8, 5), fusedgru.LayerNormGRU(2, 3)).double().eval()
    params_before = dict(net.named_parameters())
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    expected_gru, expected_cell = net[0](x), net[1](x[:, 0].repeat(1, 3)[:, :8])
    assert fusedgru.revert(net) is net
    assert type(net[0]) is nn.GRU and type(net[1]) is nn.GRUCell
    assert isinstance(net[2], fusedgru.LayerNormGRU)
    assert not net[0].training and net[0].num_layers == 2 and net[0].bidirectional
    for n, p in net.named_parameters():
        assert p is params_before[n], f"{n} must be the same Parameter object"
    for ours, theirs in zip(expected_gru, net[0](x)):
        assert_close(ours, theirs, TOL[torch.float64], "GRU")
    assert_close(expected_cell, net[1](x[:, 0].repeat(1, 3)[:, :8]), TOL[torch.float64], "cell")
    scripted = torch.jit.script(nn.Sequential(net[0]))  # TorchScript needs the stock module
    assert_close(scripted(x)[0], expected_gru[0], TOL[torch.float64], "scripted")
    assert type(fusedgru.revert(fusedgru.GRU(2, 3))) is nn.GRU


def test_jit_trace_without_check_runs_the_fused_ops():
    m = fusedgru.GRU(3, 4, num_layers=2).double()
    traced = torch.jit.trace(m, (torch.randn(5, 2, 3, dtype=torch.float64),), check_trace=False)
    assert "fusedgru::gru_forward" in str(traced.graph)
    x = torch.randn(8, 3, 3, dtype=torch.float64)  # another length and batch
    for ours, theirs in zip(traced(x), m(x)):
        assert_close(ours, theirs, TOL[torch.float64], "traced")


def test_functional_gru_matches_module():
    m = fusedgru.GRU(3, 4, num_layers=2, bidirectional=True, batch_first=True).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    hx = torch.randn(4, 2, 4, dtype=torch.float64)
    out_m, h_m = m(x, hx)
    out_f, h_f = fusedgru.gru(x, hx, list(m.parameters()), True, 2, 0.0, False, True, True)
    assert torch.equal(out_m, out_f) and torch.equal(h_m, h_f)
    with pytest.raises(ValueError, match="expected 16 GRU parameters"):
        fusedgru.gru(x, hx, list(m.parameters())[:-1], True, 2, 0.0, False, True, True)


@pytest.mark.parametrize("device", DEVICES)
def test_lengths_match_reference_and_packed(device):
    dtype = torch.float64
    m = fusedgru.GRU(3, 4, num_layers=2, bidirectional=True).to(device, dtype)
    lengths = torch.tensor([2, 7, 5])
    x = torch.randn(7, 3, 3, device=device, dtype=dtype)
    out, h = fusedgru.gru(x, None, list(m.parameters()), True, 2, 0.0, False, True, False,
                          lengths=lengths)
    packed_out, packed_h = m(pack_padded_sequence(x, lengths, enforce_sorted=False))
    padded, _ = pad_packed_sequence(packed_out, total_length=7)
    assert_close(out, padded, TOL[dtype], "output")
    assert_close(h, packed_h, TOL[dtype], "h_n")
    w = list(m.parameters())[4:8]  # layer 0, reverse direction
    hx = torch.randn(3, 4, device=device, dtype=dtype)
    out1, h1 = fusedgru.gru(x, hx[None], w, True, 1, 0.0, False, False, False, lengths=lengths)
    out1_rev, _ = fusedgru.gru(x, hx.expand(2, -1, -1), w + w, True, 1, 0.0, False, True, False,
                               lengths=lengths)
    ref_out, ref_h, _ = fusedgru.reference.gru_layer(x, hx, *w, lengths=lengths)
    assert_close(out1, ref_out, TOL[dtype], "forward direction vs reference")
    assert_close(h1[0], ref_h, TOL[dtype], "forward h_n vs reference")
    ref_out, ref_h, _ = fusedgru.reference.gru_layer(x, hx, *w, lengths=lengths, reverse=True)
    assert_close(out1_rev[..., 4:], ref_out, TOL[dtype], "reverse direction vs reference")


def test_forward_and_backward_run_fused_ops():
    m = fusedgru.GRU(8, 16, num_layers=2, bidirectional=True)
    x = torch.randn(10, 4, 8, requires_grad=True)
    with torch.profiler.profile() as prof:
        out, h = m(x)
        (out.sum() + h.sum()).backward()
    names = [e.name for e in prof.events()]
    assert names.count("fusedgru::gru_forward") == 4
    assert names.count("fusedgru::gru_backward") == 4
    assert not any(n in ("aten::sigmoid", "aten::tanh", "aten::gru_cell") for n in names)


def test_no_workspace_without_grad():
    m = fusedgru.GRU(8, 16)
    x = torch.randn(10, 4, 8)
    with torch.no_grad():
        out, h = m(x)
    assert not out.requires_grad
    o2, ws = torch.ops.fusedgru.gru_forward(x, torch.zeros(4, 16), m.weight_ih_l0, m.weight_hh_l0,
                                            m.bias_ih_l0, m.bias_hh_l0, None, False, False)[::2]
    assert ws.numel() == 0


def test_functional_call_and_weight_reassignment():
    m = fusedgru.GRU(3, 4).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    new = {n: torch.randn_like(p) for n, p in m.named_parameters()}
    out = torch.func.functional_call(m, new, (x,))[0]
    ref = nn.GRU(3, 4).double()
    ref.load_state_dict(new)
    assert_close(out, ref(x)[0], TOL[torch.float64], "functional_call")
    m.weight_hh_l0 = nn.Parameter(new["weight_hh_l0"])
    m.weight_ih_l0 = nn.Parameter(new["weight_ih_l0"])
    m.bias_ih_l0 = nn.Parameter(new["bias_ih_l0"])
    m.bias_hh_l0 = nn.Parameter(new["bias_hh_l0"])
    assert_close(m(x)[0], ref(x)[0], TOL[torch.float64], "reassigned weights")


def test_deepcopy_and_save_load():
    m = fusedgru.GRU(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3)
    c = copy.deepcopy(m)
    assert torch.equal(c(x)[0], m(x)[0])
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert isinstance(loaded, fusedgru.GRU) and torch.equal(loaded(x)[0], m(x)[0])


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


@pytest.mark.parametrize("device", DEVICES)
def test_lengths_keyword_matches_packed_sequence(device):
    dtype = torch.float64
    m = fusedgru.GRU(3, 4, num_layers=2, bidirectional=True, batch_first=True).to(device, dtype)
    lengths = torch.tensor([2, 7, 5])
    x = torch.randn(3, 7, 3, device=device, dtype=dtype, requires_grad=True)
    out, h = m(x, lengths=lengths)
    p_out, p_h = m(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    padded, _ = pad_packed_sequence(p_out, batch_first=True, total_length=7)
    assert_close(out, padded, TOL[dtype], "output")
    assert_close(h, p_h, TOL[dtype], "h_n")
    g1 = torch.autograd.grad(out.sum() + h.sum(), [x, *m.parameters()])
    g2 = torch.autograd.grad(padded.sum() + p_h.sum(), [x, *m.parameters()])
    for a, b in zip(g1, g2):
        assert_close(a, b, TOL[dtype], "gradient")
    with pytest.raises(ValueError, match="lengths must have shape"):
        m(x, lengths=torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="lengths must hold integers"):
        m(x, lengths=torch.tensor([2.0, 7.0, 5.0]))


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


def test_convert_replaces_gru_cells():
    net = nn.Sequential(nn.GRUCell(3, 4))
    p = net[0].weight_ih
    fusedgru.convert(net)
    assert isinstance(net[0], fusedgru.GRUCell) and net[0].weight_ih is p


@pytest.mark.cuda
@pytest.mark.parametrize("persistent", ["1", "0"], ids=["persistent", "per_step"])
@pytest.mark.parametrize("N, H", [(3, 17), (5, 130), (300, 64)], ids=["N3-H17", "N5-H130",
                                                                       "N300-H64"])
def test_cuda_paths_match_nn_gru(monkeypatch, persistent, N, H):
    """Both CUDA paths (the persistent kernels where they fit, the per-step path with
    FUSEDGRU_PERSISTENT=0 or where they do not: N=300 exceeds shared memory) against cuDNN."""
    monkeypatch.setenv("FUSEDGRU_PERSISTENT", persistent)
    ref, ours = pair("cuda", torch.float64, 7, H, num_layers=2, bidirectional=True)
    x = make_input("cuda", torch.float64, 9, N, 7, False)
    hx = torch.randn(4, N, H, device="cuda", dtype=torch.float64, requires_grad=True)
    check_parity(ref, ours, x, hx, torch.float64, f"FUSEDGRU_PERSISTENT={persistent}")
    lengths = torch.randint(1, 10, (N,))
    out, h_n = ours(x, hx, lengths=lengths.cuda())
    out_r, h_r = ours.cpu()(x.detach().cpu(), hx.detach().cpu(), lengths=lengths)
    assert_close(out.cpu(), out_r, TOL[torch.float64], "lengths output")
    assert_close(h_n.cpu(), h_r, TOL[torch.float64], "lengths h_n")


# ---- lengths: checked once, in functional._layers, for every entry point ----

def _lengths_entry_points():
    """Each public way to pass lengths, as f(x [T, N, C] float64, lengths) -> output."""
    gru_m = fusedgru.GRU(3, 4, num_layers=2, bidirectional=True).double()
    bf_m = fusedgru.GRU(3, 4, batch_first=True).double()
    ln_m = fusedgru.LayerNormGRU(3, 4).double()
    return {
        "GRU": lambda x, lengths: gru_m(x, lengths=lengths)[0],
        "GRU batch_first": lambda x, lengths: bf_m(x.transpose(0, 1), lengths=lengths)[0]
        .transpose(0, 1),
        "LayerNormGRU": lambda x, lengths: ln_m(x, lengths=lengths)[0],
        "gru": lambda x, lengths: fusedgru.gru(x, None, list(gru_m.parameters()), True, 2, 0.0,
                                               False, True, False, lengths=lengths)[0],
        "ln_gru": lambda x, lengths: fusedgru.ln_gru(x, None, list(ln_m.parameters()), 1, 0.0,
                                                     False, False, False, lengths=lengths)[0],
    }


BAD_LENGTHS = {  # T = 6, N = 4
    "too few": ([3, 6, 2], ValueError, r"lengths must have shape (N,) = (4,), got (3,)"),
    "too many": ([3, 6, 2, 1, 1], ValueError, r"lengths must have shape (N,) = (4,), got (5,)"),
    "2-D": ([[3, 6, 2, 1]], ValueError, r"lengths must have shape (N,) = (4,), got (1, 4)"),
    "0-D": (3, ValueError, r"lengths must have shape (N,) = (4,), got ()"),
    "float": ([3.0, 6.0, 2.0, 1.0], TypeError, "lengths must hold integers, got dtype "
                                              "torch.float32"),
    "bool": ([True, True, False, True], TypeError, "lengths must hold integers, got dtype "
                                                  "torch.bool"),
    # sorted, 7 would be entry 0: the message must name the caller's index
    "too long": ([3, 7, 2, 1], ValueError, "lengths must lie in [0, T] = [0, 6], got "
                                          "lengths[1] = 7"),
    "negative": ([3, 6, 2, -1], ValueError, "lengths must lie in [0, T] = [0, 6], got "
                                           "lengths[3] = -1"),
}


@pytest.mark.parametrize("entry", list(_lengths_entry_points()))
@pytest.mark.parametrize("case", list(BAD_LENGTHS))
@pytest.mark.parametrize("as_tensor", [True, False], ids=["tensor", "list"])
def test_bad_lengths_are_refused_with_the_same_message_everywhere(entry, case, as_tensor):
    f = _lengths_entry_points()[entry]
    value, exc, message = BAD_LENGTHS[case]
    lengths = torch.tensor(value) if as_tensor else value
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    with pytest.raises(exc) as got:
        f(x, lengths)
    assert str(got.value) == message


@pytest.mark.parametrize("entry", list(_lengths_entry_points()))
def test_lengths_as_a_list_or_int32_equal_int64_tensor(entry):
    f = _lengths_entry_points()[entry]
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    lengths = [3, 6, 0, 1]  # a length of 0 included: its outputs are all zero
    expected = f(x, torch.tensor(lengths))
    assert torch.equal(f(x, lengths), expected)
    assert torch.equal(f(x, tuple(lengths)), expected)
    assert torch.equal(f(x, torch.tensor(lengths, dtype=torch.int32)), expected)
    assert torch.all(expected[:, 2] == 0) and torch.all(expected[1:, 3] == 0)
    assert expected[:3, 0].abs().min() > 0 and expected[0, 3].abs().min() > 0


def test_list_lengths_match_packed_nn_gru():
    ref, ours = pair("cpu", torch.float64, 3, 4, num_layers=2, bidirectional=True)
    lengths = [2, 7, 5]
    x = torch.randn(7, 3, 3, dtype=torch.float64)
    out, h = ours(x, lengths=lengths)
    p_out, p_h = ref(pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False))
    assert_close(out, pad_packed_sequence(p_out, total_length=7)[0], TOL[torch.float64], "out")
    assert_close(h, p_h, TOL[torch.float64], "h_n")


# ---- CPU autocast: the dtypes (and values) nn.GRU / nn.GRUCell give ----

@pytest.mark.parametrize("x_dtype, hx_dtype", [
    (torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16),
    (torch.bfloat16, None), (torch.float32, None), (torch.bfloat16, torch.bfloat16),
], ids=["x-bf16-hx-fp32", "x-fp32-hx-bf16", "x-bf16-no-hx", "x-fp32-no-hx", "both-bf16"])
def test_gru_under_cpu_autocast_returns_nn_grus_dtypes(x_dtype, hx_dtype):
    """nn.GRU under CPU autocast returns output and h_n in hx's dtype (hx defaults to zeros of
    the input's dtype); ours too, at least as accurately (against float64 on the same inputs)."""
    ref, ours = pair("cpu", torch.float32, 4, 6, num_layers=2, bidirectional=True)
    ref64 = copy.deepcopy(ref).double()
    x = torch.randn(5, 3, 4).to(x_dtype)
    hx = torch.randn(4, 3, 6).to(hx_dtype) if hx_dtype is not None else None
    exact = ref64(x.double(), hx.double() if hx is not None else None)
    with torch.autocast("cpu"):
        theirs = ref(x, hx) if hx is not None else ref(x)
        got = ours(x, hx) if hx is not None else ours(x)
    for what, o, t, e in zip(("output", "h_n"), got, theirs, exact):
        assert o.dtype == t.dtype, f"{what}: {o.dtype}, nn.GRU gives {t.dtype}"
        assert rel_err(o, e) <= 2 * rel_err(t, e) + 1e-6, what
        assert rel_err(o, t) <= 2e-2, what  # the same function, up to nn.GRU's bf16 GEMMs


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


# ---- meta device (deferred init, shape inference) ----

@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("kind", ["GRU", "LayerNormGRU"])
def test_meta_device_gives_nn_grus_shapes(kind, batch_first):
    kwargs = dict(num_layers=2, bidirectional=True, batch_first=batch_first, device="meta")
    ref = nn.GRU(3, 5, **kwargs)
    ours = getattr(fusedgru, kind)(3, 5, **kwargs)
    x = torch.randn((2, 7, 3) if batch_first else (7, 2, 3), device="meta")
    hx = torch.randn(4, 2, 5, device="meta")
    for args in ((x,), (x, hx), (x[0] if batch_first else x[:, 0],)):
        expected = ref(*args)
        got = ours(*args)
        for o, e in zip(got, expected, strict=True):
            assert o.device.type == "meta" and o.shape == e.shape and o.dtype == e.dtype
    out, h = ours(x, lengths=torch.tensor([7, 3]))  # values on the host: checked
    assert out.shape == expected_out_shape(batch_first) and h.shape == (4, 2, 5)
    out, h = ours(x, lengths=torch.empty(2, dtype=torch.long, device="meta"))  # not readable
    assert out.shape == expected_out_shape(batch_first) and h.shape == (4, 2, 5)
    with pytest.raises(ValueError, match=r"lengths must have shape \(N,\) = \(2,\), got \(3,\)"):
        ours(x, lengths=torch.empty(3, dtype=torch.long, device="meta"))
    x.requires_grad_()
    out, h = ours(x)
    (out.sum() + h.sum()).backward()
    assert x.grad.shape == x.shape and x.grad.device.type == "meta"
    # deferred init: materialize, then the module computes what nn.GRU does
    ours.to_empty(device="cpu").reset_parameters()
    assert ours(torch.randn(x.shape))[0].shape == expected_out_shape(batch_first)


def expected_out_shape(batch_first):
    return (2, 7, 10) if batch_first else (7, 2, 10)


def test_meta_device_gru_cell():
    ref, ours = nn.GRUCell(3, 5, device="meta"), fusedgru.GRUCell(3, 5, device="meta")
    x = torch.randn(4, 3, device="meta")
    assert ours(x).shape == ref(x).shape == (4, 5) and ours(x).device.type == "meta"


# ---- the functional form names a misshapen weight ----

def test_functional_gru_names_the_misshapen_weight():
    m = fusedgru.GRU(3, 4, num_layers=2, bidirectional=True)
    w = list(m.parameters())  # per layer and direction: weight_ih, weight_hh, bias_ih, bias_hh
    x = torch.randn(5, 2, 3)
    cases = {
        "swapped": ([w[1], w[0]] + w[2:], "weight_ih_l0 must have shape (12, 3), got (12, 4); "
                                          "weight_hh_l0 must have shape (12, 4), got (12, 3)"),
        "1-D": ([w[0], w[2], w[1]] + w[3:], "weight_hh_l0 must have shape (12, 4), got (12,); "
                                            "bias_ih_l0 must have shape (12,), got (12, 4)"),
        "layer 1 reverse": (w[:12] + [w[12][:, :4]] + w[13:],
                            "weight_ih_l1_reverse must have shape (12, 8), got (12, 4)"),
    }
    for what, (params, message) in cases.items():
        with pytest.raises(RuntimeError) as got:
            fusedgru.gru(x, None, params, True, 2, 0.0, False, True, False)
        assert str(got.value) == (
            "GRU weights do not fit input_size=3, hidden_size=4 (from weight_hh_l0), "
            f"num_layers=2, bidirectional=True: {message}"), what
    with pytest.raises(RuntimeError, match=r"weight_hh_l0 must have shape \(3\*hidden_size, "
                                           r"hidden_size\), got \(\)"):
        fusedgru.gru(x, None, [w[0], w[0].sum()] + w[2:], True, 2, 0.0, False, True, False)
    with pytest.raises(RuntimeError, match=r"weight_hh_l0 must have shape \(3\*hidden_size, "
                                           r"hidden_size\), got \(4, 4\)"):
        fusedgru.gru(x, None, [w[0], w[1][:4]] + w[2:], True, 2, 0.0, False, True, False)
    ln = fusedgru.LayerNormGRU(3, 4)
    p = list(ln.parameters())
    with pytest.raises(RuntimeError, match=r"ln_hh_bias_l0 must have shape \(12,\), got \(4,\)"):
        fusedgru.ln_gru(x, None, p[:5] + [p[5][:4]], 1, 0.0, False, False, False)
    # a module whose weight was reassigned with the wrong shape says the same
    m.weight_hh_l1 = nn.Parameter(torch.randn(12, 5))
    with pytest.raises(RuntimeError, match=r"weight_hh_l1 must have shape \(12, 4\), got "
                                           r"\(12, 5\)"):
        m(x)


# ---- convert / revert never silently change behaviour ----

class _OwnForwardGRU(nn.GRU):
    def forward(self, input, hx=None):
        out, h = super().forward(input, hx)
        return 2 * out, h


def _hooked(kind):
    g = nn.GRU(3, 4).double()
    if kind == "forward hook":
        g.register_forward_hook(lambda mod, args, out: (out[0] + 1, out[1]))
    elif kind == "forward pre-hook":
        g.register_forward_pre_hook(lambda mod, args: (args[0] * 2,))
    elif kind == "parametrization":
        nn.utils.parametrizations.weight_norm(g, "weight_hh_l0")
    elif kind == "legacy weight_norm":
        with pytest.warns(FutureWarning):
            nn.utils.weight_norm(g, "weight_hh_l0")
    elif kind == "subclass":
        g = _OwnForwardGRU(3, 4).double()
    return g


CONVERT_REFUSALS = {
    "forward hook": "it has 1 forward hooks (",
    "forward pre-hook": "it has 1 forward pre-hooks (",
    "parametrization": "it has parametrizations on weight_hh_l0 (torch.nn.utils.parametrize",
    "legacy weight_norm": "it has torch.nn.utils.weight_norm on weight_hh_l0",
    "subclass": "its class _OwnForwardGRU subclasses torch.nn.modules.rnn.GRU",
}


@pytest.mark.parametrize("kind", list(CONVERT_REFUSALS))
def test_convert_refuses_what_it_cannot_carry_over(kind):
    net = nn.Sequential(nn.Linear(3, 3), nn.Sequential(_hooked(kind))).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    expected = net[1][0](net[0](x))[0]
    with pytest.raises(ValueError) as got:
        fusedgru.convert(net)
    message = str(got.value)
    assert message.startswith("fusedgru.convert: cannot replace '1.0' (")
    assert CONVERT_REFUSALS[kind] in message and "strict=False" in message
    assert net[1][0] is not None and not isinstance(net[1][0], fusedgru.GRU)
    # strict=False: left as it is, with a warning; the rest is converted
    net.add_module("plain", nn.GRU(3, 4).double())
    with pytest.warns(UserWarning, match=r"cannot replace '1.0' .* left as it is"):
        fusedgru.convert(net, strict=False)
    assert not isinstance(net[1][0], fusedgru.GRU) and isinstance(net.plain, fusedgru.GRU)
    assert torch.equal(net[1][0](net[0](x))[0], expected)
    with pytest.raises(ValueError, match="cannot replace the model itself"):
        fusedgru.convert(_hooked(kind))


def test_convert_keeps_a_shared_module_shared():
    shared, cell = nn.GRU(3, 4).double(), nn.GRUCell(3, 4).double()
    net = nn.Sequential(shared, nn.Sequential(shared, cell), cell, shared).double()
    fusedgru.convert(net)
    assert isinstance(net[0], fusedgru.GRU) and isinstance(net[2], fusedgru.GRUCell)
    assert net[0] is net[1][0] is net[3] and net[2] is net[1][1]
    assert len(list(net.parameters())) == 8  # 4 for the GRU, 4 for the cell, each once
    fusedgru.revert(net)
    assert type(net[0]) is nn.GRU and net[0] is net[1][0] is net[3]
    assert type(net[2]) is nn.GRUCell and net[2] is net[1][1]


def test_revert_refuses_hooks_too():
    m = nn.Sequential(fusedgru.GRU(3, 4))
    m[0].register_forward_hook(lambda mod, args, out: out)
    with pytest.raises(ValueError, match=r"fusedgru.revert: cannot replace '0' \(GRU\) .* "
                                         r"1 forward hooks"):
        fusedgru.revert(m)


# ---- threads sharing one module ----

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

        def worker(i):
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


def test_convert_refuses_before_replacing_anything():
    net = nn.Sequential(nn.GRU(3, 4), _hooked("subclass"), nn.GRU(3, 4))
    net[2].register_forward_hook(lambda mod, args, out: out)
    with pytest.raises(ValueError) as got:
        fusedgru.convert(net)
    assert "cannot replace '1' (_OwnForwardGRU)" in str(got.value)
    assert "cannot replace '2' (GRU)" in str(got.value)
    assert [type(m) for m in net] == [nn.GRU, _OwnForwardGRU, nn.GRU], "nothing replaced"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale", [float("inf"), 1e30, 1e36, 3e38], ids=["inf", "1e30", "1e36", "3e38"])
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
