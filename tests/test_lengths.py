"""The lengths keyword (right-padded rows without packing): the results of a PackedSequence and
of the reference, and one check with the same messages for every entry point."""

import pytest
import torch
from gru_testing import DEVICES, TOL, assert_close, pair
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedgru


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


def test_list_lengths_match_packed_nn_gru():
    ref, ours = pair("cpu", torch.float64, 3, 4, num_layers=2, bidirectional=True)
    lengths = [2, 7, 5]
    x = torch.randn(7, 3, 3, dtype=torch.float64)
    out, h = ours(x, lengths=lengths)
    p_out, p_h = ref(pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False))
    assert_close(out, pad_packed_sequence(p_out, total_length=7)[0], TOL[torch.float64], "out")
    assert_close(h, p_h, TOL[torch.float64], "h_n")


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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fill", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("config", [
    dict(cls="GRU"), dict(cls="GRU", num_layers=2, bidirectional=True, batch_first=True),
    dict(cls="LayerNormGRU", bidirectional=True)],
    ids=lambda c: "-".join(k if v is True else str(v) for k, v in c.items()))
@pytest.mark.parametrize("transform", [False, True], ids=["autograd", "torch.func.grad"])
def test_non_finite_padding_reaches_nothing(device, fill, config, transform):
    """Padding past each row's length that holds NaN or +-inf (log-features of zero frames,
    NaN sentinels, an uninitialized batch buffer) gives the same bits as zero padding in the
    outputs, h_n and every gradient, weight_ih's included (its gradient multiplies the input by
    dG, zero in the padding, and 0 * NaN is NaN unless the padding is left out), on the fused
    ops and on the references that torch.func.grad runs. nn.GRU on a PackedSequence never
    reads the padding."""
    config = dict(config)
    cls = getattr(fusedgru, config.pop("cls"))
    torch.manual_seed(0)
    m = cls(5, 6, **config).to(device=device, dtype=torch.float64)
    batch_first = config.get("batch_first", False)
    T, N = 7, 4
    lengths = torch.tensor([7, 3, 0, 5])
    x = torch.randn((N, T, 5) if batch_first else (T, N, 5), device=device, dtype=torch.float64)
    steps = torch.arange(T).unsqueeze(1 if not batch_first else 0)
    pad = (steps >= lengths.unsqueeze(0 if not batch_first else 1)).to(device).unsqueeze(2)
    params = dict(m.named_parameters())

    def loss(p, x):
        out, h_n = torch.func.functional_call(m, p, (x,), {"lengths": lengths.to(device)})
        return (out * out.detach().cos()).sum() + h_n.sum(), (out, h_n)

    runs = []
    for value in (0.0, float(fill)):
        xi = x.masked_fill(pad, value)
        if transform:
            grads, outs = torch.func.grad(loss, argnums=(0, 1), has_aux=True)(params, xi)
            grads = (*grads[0].values(), grads[1])
        else:
            xi.requires_grad_()
            value_, outs = loss(params, xi)
            grads = torch.autograd.grad(value_, [*params.values(), xi])
        runs.append([*outs, *grads])
    names = ["output", "h_n", *params, "input"]
    for name, a, b in zip(names, *runs, strict=True):
        assert torch.isfinite(b).all() and torch.equal(a, b), f"{name} differs"
