"""fusedgru.convert / revert: every nn.GRU / nn.GRUCell swapped (and back) sharing its
Parameter objects, and never a silent change of behaviour (hooks, parametrizations,
subclasses, shared modules)."""

import copy

import pytest
import torch
from gru_testing import TOL, assert_close
from torch import nn

import fusedgru


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


def test_convert_replaces_gru_cells():
    net = nn.Sequential(nn.GRUCell(3, 4))
    p = net[0].weight_ih
    fusedgru.convert(net)
    assert isinstance(net[0], fusedgru.GRUCell) and net[0].weight_ih is p


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
    elif kind == "forward on the instance":  # as accelerate's add_hook_to_module does
        plain = g.forward
        g.forward = lambda *args, **kwargs: (2 * plain(*args, **kwargs)[0], None)
    elif kind == "extra buffer":
        g.register_buffer("steps", torch.tensor(0))
    elif kind == "extra parameter":
        g.scale = nn.Parameter(torch.ones(()))
    elif kind == "submodule":
        g.head = nn.Linear(4, 4)
    return g

CONVERT_REFUSALS = {
    "forward hook": "it has 1 forward hooks (",
    "forward pre-hook": "it has 1 forward pre-hooks (",
    "parametrization": "it has parametrizations on weight_hh_l0 (torch.nn.utils.parametrize",
    "legacy weight_norm": "it has torch.nn.utils.weight_norm on weight_hh_l0",
    "subclass": "its class _OwnForwardGRU subclasses torch.nn.modules.rnn.GRU",
    "forward on the instance": "forward set on the instance (in place of its class's)",
    "extra buffer": "it holds buffers steps beyond the stock module's",
    "extra parameter": "it holds parameters scale beyond the stock module's",
    "submodule": "it holds submodules head beyond the stock module's",
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

def test_convert_refuses_before_replacing_anything():
    net = nn.Sequential(nn.GRU(3, 4), _hooked("subclass"), nn.GRU(3, 4))
    net[2].register_forward_hook(lambda mod, args, out: out)
    with pytest.raises(ValueError) as got:
        fusedgru.convert(net)
    assert "cannot replace '1' (_OwnForwardGRU)" in str(got.value)
    assert "cannot replace '2' (GRU)" in str(got.value)
    assert [type(m) for m in net] == [nn.GRU, _OwnForwardGRU, nn.GRU], "nothing replaced"

@pytest.mark.parametrize("cls", [nn.GRU, nn.GRUCell])
def test_convert_and_revert_carry_a_plain_tensor_weight(cls):
    """nn.GRU runs with a weight that is a plain tensor (`del m.w; m.w = t`); the replacement
    holds the same tensor as a plain attribute, and both directions compute the same."""
    torch.manual_seed(0)
    m = cls(3, 4).double()
    w = m.weight_hh_l0 if cls is nn.GRU else m.weight_hh
    name = "weight_hh_l0" if cls is nn.GRU else "weight_hh"
    plain = w.detach().clone()
    delattr(m, name)
    setattr(m, name, plain)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    x = x if cls is nn.GRU else x[0]
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    expected = first(m(x))
    ours = fusedgru.convert(m)
    assert getattr(ours, name) is plain and name not in dict(ours.named_parameters())
    assert torch.allclose(first(ours(x)), expected)
    back = fusedgru.revert(ours)
    assert type(back) is cls and getattr(back, name) is plain
    assert torch.allclose(first(back(x)), expected)

def test_a_torchscript_model_is_refused_not_passed_over():
    """convert cannot change a scripted model: a TypeError that says what to do, not a silent
    no-op; strict=False passes it through with a warning."""
    scripted = torch.jit.script(nn.Sequential(nn.GRU(3, 4)))
    with pytest.raises(TypeError, match="a TorchScript module cannot be changed"):
        fusedgru.convert(scripted)
    with pytest.warns(UserWarning, match="a TorchScript module cannot be changed"):
        assert fusedgru.convert(scripted, strict=False) is scripted


@pytest.mark.parametrize("cls", [nn.GRU, nn.GRUCell])
def test_bias_free_modules_and_user_attributes_go_both_ways(cls):
    """A bias=False GRUCell (its biases registered as None) converts and reverts as a GRU does,
    and attributes a user set on the instance come along: they are the user's data."""
    m = cls(3, 4, bias=False).double()
    m.tag = {"lang": "en"}
    ours = fusedgru.convert(m)
    assert type(ours).__module__ == "fusedgru.rnn" and ours.tag is m.tag
    back = fusedgru.revert(ours)
    assert type(back) is cls and back.tag is m.tag
    x = torch.randn(2, 3, dtype=torch.float64) if cls is nn.GRUCell else \
        torch.randn(5, 2, 3, dtype=torch.float64)
    for a, b in zip(torch.utils._pytree.tree_leaves(ours(x)), torch.utils._pytree.tree_leaves(
            m(x)), strict=True):
        assert_close(a, b, TOL[torch.float64], "converted")


def test_a_reverted_conv_gru_stack_still_runs():
    """models.CausalConvGRU reads its GRUs' weights itself; after revert they are nn.GRUs."""
    m = fusedgru.models.CausalConvGRU(3, 4, num_layers=2).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    want = m(x)
    got = fusedgru.revert(m)(x)
    assert isinstance(m.grus[0], nn.GRU) and not isinstance(m.grus[0], fusedgru.GRU)
    assert_close(got, want, TOL[torch.float64], "reverted")

