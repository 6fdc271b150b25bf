"""ONNX export (torch's TorchScript-based exporter, ``torch.onnx.export(..., dynamo=False)``):
models holding fusedgru.GRU and fusedgru.GRUCell export as they do with nn.GRU / nn.GRUCell
(one ONNX GRU operator per layer; the cell as its torch ops), and ONNX Runtime gives fusedgru's
outputs. Needs onnx and onnxruntime (the ``bench`` extra, ``make examples-deps``)."""

import io
import warnings

import pytest
import torch
from gru_testing import assert_close
from torch import nn

import fusedgru

onnx = pytest.importorskip("onnx", reason="onnx not installed (make examples-deps)")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (make examples-deps)")


class Seq(nn.Module):
    """A GRU inside a model, with hx given or not."""

    def __init__(self, gru):
        super().__init__()
        self.gru = gru

    def forward(self, x, h=None):
        return self.gru(x, h)


def export(model, args, names, dynamic_axes=None):
    f = io.BytesIO()
    with warnings.catch_warnings():  # the exporter's deprecation and batch-size advice
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, f, dynamo=False, input_names=names,
                          dynamic_axes=dynamic_axes)
    return f.getvalue()


def run(blob, names, args):
    session = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
    return [torch.from_numpy(a) for a in session.run(None, {
        n: a.numpy() for n, a in zip(names, args, strict=True)})]


@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("root", [False, True], ids=["held", "root"])
def test_gru_exports_as_nn_gru_does(num_layers, bidirectional, batch_first, bias, with_hx, root):
    """One ONNX GRU operator per layer, as nn.GRU's export writes, whether the GRU is held by
    the exported model or is the model (the exporter passes every parameter of the root's
    forward with a default positionally, lengths included); ONNX Runtime's outputs equal
    fusedgru's (and nn.GRU's, weights copied), also at other T and N than those traced."""
    D = 2 if bidirectional else 1
    gru = fusedgru.GRU(5, 7, num_layers=num_layers, bidirectional=bidirectional,
                       batch_first=batch_first, bias=bias).eval()
    stock = nn.GRU(5, 7, num_layers=num_layers, bidirectional=bidirectional,
                   batch_first=batch_first, bias=bias).eval()
    stock.load_state_dict(gru.state_dict())
    model = gru if root else Seq(gru)

    def inputs(T, N):
        x = torch.randn((N, T, 5) if batch_first else (T, N, 5))
        return (x, torch.randn(num_layers * D, N, 7)) if with_hx else (x,)

    names = ["x", "h"][:2 if with_hx else 1]
    axes = {"x": {0: "N", 1: "T"} if batch_first else {0: "T", 1: "N"}}
    if with_hx:
        axes["h"] = {1: "N"}
    blob = export(model, inputs(6, 3), names, axes)
    ops = [n.op_type for n in onnx.load_from_string(blob).graph.node]
    assert ops.count("GRU") == num_layers and not any("fusedgru" in op for op in ops)
    for T, N in ((6, 3), (11, 1), (2, 5)):
        args = inputs(T, N)
        got = run(blob, names, args)
        with torch.no_grad():
            want, want_stock = model(*args), stock(*args)
        for g, w, s in zip(got, want, want_stock, strict=True):
            assert_close(g, w, 1e-5, f"T={T} N={N}")
            assert_close(g, s, 1e-5, f"T={T} N={N} against nn.GRU")


def test_unbatched_input_and_gru_cell_export():
    """An unbatched sequence through GRU, then GRUCell steps (exported as nn.GRUCell's torch
    ops), inside one model."""

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = fusedgru.GRU(4, 6)
            self.cell = fusedgru.GRUCell(6, 6)

        def forward(self, x):
            y, h = self.gru(x)
            return self.cell(y, h.expand(y.shape[0], 6))

    model = Model().eval()
    x = torch.randn(9, 4)
    blob = export(model, (x,), ["x"])
    ops = [n.op_type for n in onnx.load_from_string(blob).graph.node]
    assert "GRU" in ops and not any("fusedgru" in op for op in ops)
    with torch.no_grad():
        want = model(x)
    assert_close(run(blob, ["x"], (x,))[0], want, 1e-5)


def test_export_with_lengths_says_what_to_do():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = fusedgru.GRU(4, 6)

        def forward(self, x, lengths):
            return self.gru(x, lengths=lengths)[0]

    with pytest.raises(RuntimeError,
                       match=r"ONNX export of a call with lengths.*fusedgru.revert\(model\)"):
        export(Model().eval(), (torch.randn(5, 2, 4), torch.tensor([5, 3])), ["x", "lengths"])


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("activation", [None, "silu", "relu"])
def test_causal_conv_exports_as_torch_ops(channels_last, activation):
    """CausalConv1d exports as its reference's torch ops (a left pad and a grouped Conv, then
    the activation); ONNX Runtime's outputs equal the fused conv's at other L and N too."""
    conv = fusedgru.CausalConv1d(6, 4, dilation=2, activation=activation,
                                 channels_last=channels_last).eval()

    def inputs(N, L):
        return (torch.randn((N, L, 6) if channels_last else (N, 6, L)),)

    blob = export(conv, inputs(2, 9), ["x"], {"x": {0: "N", 1 if channels_last else 2: "L"}})
    ops = [n.op_type for n in onnx.load_from_string(blob).graph.node]
    assert "Conv" in ops and not any("fusedgru" in op for op in ops)
    for N, L in ((2, 9), (1, 30), (4, 3)):
        args = inputs(N, L)
        with torch.no_grad():
            want = conv(*args)
        assert_close(run(blob, ["x"], args)[0], want, 1e-5, f"N={N} L={L}")


@pytest.mark.parametrize("attention", [None, "causal", "pool"])
def test_the_conv_gru_attention_stack_exports(attention):
    """models.CausalConvGRU (convs, GRU layers, attention) exports whole; ONNX Runtime's
    outputs equal the model's at other N and L too."""
    from fusedgru.models import CausalConvGRU
    model = CausalConvGRU(5, 8, num_layers=2, attention=attention).eval()
    blob = export(model, (torch.randn(3, 10, 5),), ["x"], {"x": {0: "N", 1: "L"}})
    ops = [n.op_type for n in onnx.load_from_string(blob).graph.node]
    assert ops.count("GRU") == 2 and not any("fusedgru" in op for op in ops)
    for N, L in ((3, 10), (1, 17), (5, 4)):
        x = torch.randn(N, L, 5)
        with torch.no_grad():
            want = model(x)
        assert_close(run(blob, ["x"], (x,))[0], want, 1e-5, f"N={N} L={L}")


def test_layer_norm_gru_export_is_refused_clearly():
    with pytest.raises(RuntimeError, match="LayerNormGRU has no ONNX export"):
        export(Seq(fusedgru.LayerNormGRU(4, 6)).eval(), (torch.randn(5, 2, 4),), ["x"])
