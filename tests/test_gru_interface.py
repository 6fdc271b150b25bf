"""fusedgru.GRU's interface is torch.nn.GRU's: parameters, initialization and state_dict,
constructor and input errors (type and message), the functional form, functional_call,
copies and pickling, the meta device."""

import copy
import io
import math
import re

import pytest
import torch
from gru_testing import DEVICES, TOL, assert_close, pair
from torch import nn

import fusedgru


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


@pytest.mark.parametrize("args, kwargs", [
    ((5, 7, 1, True, False, 0.0, False, 0), {}),  # nn.RNNBase's order: the eighth is proj_size
    ((5, 7, 2, False, True, 0.0, True, 0, "cpu", torch.float64), {}),
    ((5, 7), {"foo": 1}),
    ((5, 7, 1, True, False, 0.0, False, 0, "cpu", None, 5), {}),
    ((5, 7, 1, True, False, 0.0, False, "cpu"), {}),
])
def test_positional_constructor_arguments_match_nn_gru(args, kwargs):
    """The arguments reach nn.RNNBase as nn.GRU passes them: the same module or the same error."""
    try:
        ref = nn.GRU(*args, **kwargs)
    except Exception as expected:
        with pytest.raises(type(expected)) as got:
            fusedgru.GRU(*args, **kwargs)
        assert str(got.value) == str(expected)
        return
    ours = fusedgru.GRU(*args, **kwargs)
    assert repr(ours) == repr(ref)
    assert [(n, p.shape, p.dtype) for n, p in ours.named_parameters()] == \
        [(n, p.shape, p.dtype) for n, p in ref.named_parameters()]


def test_a_positional_projection_is_refused():
    """nn.GRU builds a projection from a positional proj_size, which its forward then rejects
    (`Expected hidden size (1, 2, 3), got [1, 2, 7]`); the keyword's error instead."""
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
        fusedgru.GRU(5, 7, 1, True, False, 0.0, False, 3)


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
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_hx_dtype_mismatch_raises_nn_grus_error(device, grad):
    """On the CPU nn.GRU checks no dtypes: its first product that mixes two raises (hx's with
    weight_hh here), and so do we, in both grad modes. cuDNN checks them (ATen's
    check_attributes wording)."""
    ref, ours = pair(device, torch.float32, 4, 6)
    x = torch.randn(3, 2, 4, device=device)
    hx = torch.randn(1, 2, 6, device=device, dtype=torch.float64)
    want = ("Input and hidden tensors are not the same dtype" if device == "cuda" else
            re.escape("mat1 and mat2 must have the same dtype, but got Double and Float"))
    with torch.set_grad_enabled(grad):
        if device == "cpu":
            with pytest.raises(RuntimeError, match=want):
                ref(x, hx)
        with pytest.raises(RuntimeError, match=want):
            ours(x, hx)


def test_a_weight_set_to_none_raises_nn_grus_type_error():
    ref, ours = pair("cpu", torch.float32, 4, 6)
    for m in (ref, ours):
        m.bias_hh_l0 = None
    x = torch.randn(3, 2, 4)
    with pytest.raises(TypeError) as expected:
        ref(x)
    for hx in (None, torch.randn(1, 2, 6)):
        with pytest.raises(TypeError, match=re.escape(str(expected.value))):
            ours(x, hx)


def test_functional_gru_matches_module():
    m = fusedgru.GRU(3, 4, num_layers=2, bidirectional=True, batch_first=True).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    hx = torch.randn(4, 2, 4, dtype=torch.float64)
    out_m, h_m = m(x, hx)
    out_f, h_f = fusedgru.gru(x, hx, list(m.parameters()), True, 2, 0.0, False, True, True)
    assert torch.equal(out_m, out_f) and torch.equal(h_m, h_f)
    with pytest.raises(RuntimeError, match="expected 16 GRU parameters"):
        fusedgru.gru(x, hx, list(m.parameters())[:-1], True, 2, 0.0, False, True, True)


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



def change_output(op, out, x, time_dim, in_place):
    """A residual, an in-place activation or the first step zeroed: in place or not."""
    if op == "residual":
        return out.add_(x) if in_place else out + x
    if op == "relu":
        return out.relu_() if in_place else out.relu()
    if in_place:
        out.select(time_dim, 0).zero_()
        return out
    first = out.narrow(time_dim, 0, 1)
    return torch.cat([torch.zeros_like(first), out.narrow(time_dim, 1, out.shape[time_dim] - 1)],
                     dim=time_dim)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["residual", "relu", "zero_first_step"])
@pytest.mark.parametrize("config", [
    dict(cls="GRU"), dict(cls="GRU", batch_first=True), dict(cls="GRU", unbatched=True),
    dict(cls="GRU", num_layers=2, bidirectional=True), dict(cls="GRU", lengths=True),
    dict(cls="LayerNormGRU", batch_first=True)],
    ids=lambda c: "-".join(k if v is True else str(v) for k, v in c.items()))
@pytest.mark.parametrize("leaf", ["all", "hx"])
def test_in_place_changes_to_the_output_are_allowed(device, op, config, leaf):
    """A residual `out += x`, an in-place activation or a zeroed step on the GRU's output, as
    training code does after nn.GRU (its CPU path allows it): the gradients of the same change
    made out of place, not an error in the forward or the backward (the ops' backward reads the
    output they returned; the caller gets a copy)."""
    config = dict(config)
    cls = getattr(fusedgru, config.pop("cls"))
    unbatched, lengths = config.pop("unbatched", False), config.pop("lengths", False)
    batch_first = config.get("batch_first", False)
    D = 2 if config.get("bidirectional") else 1
    C, T, N = 6, 5, 3
    torch.manual_seed(3)
    m = cls(C, C // D, **config).to(device=device, dtype=torch.float64)  # output width C
    shape = (T, C) if unbatched else ((N, T, C) if batch_first else (T, N, C))
    x = torch.randn(shape, device=device, dtype=torch.float64)
    hx = torch.randn((m.num_layers * D,) + (() if unbatched else (N,)) + (C // D,),
                     device=device, dtype=torch.float64)
    kwargs = {"lengths": torch.tensor([5, 2, 4])} if lengths else {}
    time_dim = 1 if batch_first and not unbatched else 0
    grads = []
    for in_place in (True, False):
        xi, hi = x.clone().requires_grad_(leaf == "all"), hx.clone().requires_grad_()
        for p in m.parameters():
            p.requires_grad_(leaf == "all")
        out, h_n = m(xi, hi, **kwargs)
        out = change_output(op, out, xi, time_dim, in_place)
        loss = (out * out.detach().cos()).sum() + h_n.sum()
        leaves = [hi] + ([xi, *m.parameters()] if leaf == "all" else [])
        grads.append(torch.autograd.grad(loss, leaves))
    for i, (a, b) in enumerate(zip(*grads, strict=True)):
        assert torch.equal(a, b), f"gradient {i} differs"


@pytest.mark.parametrize("num_layers, dropout, train", [
    (2, -0.5, True), (2, 1.5, True), (2, -0.5, False), (1, 1.5, True), (2, 1.0, True),
    (3, 0.3, True)])
def test_functional_gru_checks_dropout_as_torch_vf_gru(num_layers, dropout, train):
    """fusedgru.gru takes torch._VF.gru's arguments: a dropout outside [0, 1] raises its
    RuntimeError where dropout applies (training, between layers), runs elsewhere."""
    m = nn.GRU(3, 4, num_layers=num_layers)
    x, h = torch.randn(5, 2, 3), torch.zeros(num_layers, 2, 4)
    args = (m._flat_weights, True, num_layers, dropout, train, False, False)
    try:
        torch._VF.gru(x, h, *args)
    except RuntimeError as expected:
        with pytest.raises(RuntimeError) as got:
            fusedgru.gru(x, h, *args)
        assert str(got.value) == str(expected)
    else:
        out, h_n = fusedgru.gru(x, h, *args)
        assert out.shape == (5, 2, 4) and h_n.shape == h.shape


def test_functional_gru_refuses_zero_layers():
    with pytest.raises(RuntimeError, match="num_layers must be at least 1, got 0"):
        fusedgru.gru(torch.randn(5, 2, 3), torch.zeros(0, 2, 4), [], True, 0, 0.0, False, False,
                     False)


@pytest.mark.parametrize("case", ["int32", "more rows", "trailing zero", "fewer rows",
                                  "increasing", "negative"])
def test_a_hand_built_packed_sequence_is_taken_or_refused_as_by_nn_gru(case):
    """PackedSequence(data, batch_sizes) built by hand: where nn.GRU runs it (more data rows
    than sum(batch_sizes): it reads the first ones; a trailing zero batch size), the same
    output; where it raises, a RuntimeError too (int32 batch_sizes: its message; the rest
    fail deep inside nn.GRU, and here with a message that names the problem)."""
    data, sizes = {
        "int32": (5, torch.tensor([3, 2], dtype=torch.int32)),
        "more rows": (7, torch.tensor([3, 2])),
        "trailing zero": (3, torch.tensor([3, 0])),
        "fewer rows": (4, torch.tensor([3, 2])),
        "increasing": (5, torch.tensor([2, 3])),
        "negative": (5, torch.tensor([6, -1])),
    }[case]
    ref, ours = pair("cpu", torch.float64, 3, 4)
    seq = nn.utils.rnn.PackedSequence(torch.randn(data, 3, dtype=torch.float64), sizes)
    if case in ("more rows", "trailing zero"):
        (out_r, h_r), (out_o, h_o) = ref(seq), ours(seq)
        assert torch.equal(out_o.batch_sizes, out_r.batch_sizes)
        assert_close(out_o.data, out_r.data, TOL[torch.float64], "output")
        assert_close(h_o, h_r, TOL[torch.float64], "h_n")
        return
    with pytest.raises(RuntimeError) as expected:
        ref(seq)
    want = {"int32": re.escape(str(expected.value)),
            "fewer rows": r"PackedSequence data has 4 rows, fewer than sum\(batch_sizes\) = 5",
            }.get(case, r"batch_sizes must be non-negative and non-increasing")
    with pytest.raises(RuntimeError, match=want):
        ours(seq)

