"""CPU peers for bench_gru.py --peers: the GRU runtimes users deploy on instead of nn.GRU for
inference, fed the same weights as the nn.GRU being compared:

- ONNX Runtime's GRU operator, from an ONNX graph built here: one GRU node per layer, gates
  reordered from PyTorch's (r, z, n) to ONNX's (z, r, h), linear_before_reset=1 (PyTorch's
  n = tanh(W_in x + b_in + r * (W_hn h + b_hn))), both biases per direction;
- OpenVINO, reading the same ONNX graph (its GRUSequence with linear_before_reset, i.e. oneDNN's
  lbr_gru), compiled for the CPU with INFERENCE_PRECISION_HINT=f32 so that it does not run bf16
  behind our back on CPUs with bf16 units.

Each peer runs with the given number of intra-op threads, like torch.set_num_threads. Inputs
and outputs are [T, N, I] / [T, N, D*H] float32 arrays, as nn.GRU's time-major tensors.
Shape legend: T time, N batch, I input, H hidden, D directions, L layers.
"""

import importlib.metadata
import importlib.util
import os
import tempfile

import torch
from torch import nn

PEERS = ("onnxruntime", "openvino")
# ONNX's opset with the GRU operator as used here (layout attribute absent = time-major).
ONNX_OPSET = 14


def missing(peer):
    """The pip packages a peer needs that are not installed (empty when it can run)."""
    needs = {"onnxruntime": ["onnx", "onnxruntime"], "openvino": ["onnx", "openvino"]}[peer]
    return [name for name in needs if importlib.util.find_spec(name) is None]


def version(peer):
    return importlib.metadata.version(peer)


def _onnx_gates(w, H):
    """PyTorch's gate blocks (r, z, n) along dim 0 -> ONNX's (z, r, h)."""
    r, z, n = w.split(H, dim=0)
    return torch.cat([z, r, n])


def onnx_gru_model(ref: nn.GRU, state=False):
    """An ONNX model computing ref (time-major input X [T, N, I], output Y [T, N, D*H], zero
    initial state), weights copied as float32. With ``state`` (one layer, one direction): also
    the initial state as input H0 [1, N, H] and the final one as output HN [1, N, H], the
    streaming call."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    H, L = ref.hidden_size, ref.num_layers
    D = 2 if ref.bidirectional else 1
    if state and (L != 1 or D != 1):
        raise ValueError("state=True: one layer, one direction")
    nodes, inits = [], []
    x = "X"
    for layer in range(L):
        Ws, Rs, Bs = [], [], []
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih = getattr(ref, "weight_ih" + sfx).detach().float()
            w_hh = getattr(ref, "weight_hh" + sfx).detach().float()
            if ref.bias:
                b_ih = getattr(ref, "bias_ih" + sfx).detach().float()
                b_hh = getattr(ref, "bias_hh" + sfx).detach().float()
            else:
                b_ih = b_hh = torch.zeros(3 * H)
            Ws.append(_onnx_gates(w_ih, H))
            Rs.append(_onnx_gates(w_hh, H))
            Bs.append(torch.cat([_onnx_gates(b_ih, H), _onnx_gates(b_hh, H)]))
        names = [f"W{layer}", f"R{layer}", f"B{layer}"]
        for name, t in zip(names, (Ws, Rs, Bs)):
            inits.append(numpy_helper.from_array(torch.stack(t).numpy(), name))
        y = f"Y{layer}"
        nodes.append(helper.make_node(
            "GRU", [x, *names, *(["", "H0"] if state else [])], [y, *(["HN"] if state else [])],
            hidden_size=H, linear_before_reset=1,
            direction="bidirectional" if D == 2 else "forward"))
        # Y [T, D, N, H] -> [T, N, D * H], the next layer's input and the model's output.
        nodes.append(helper.make_node("Transpose", [y], [y + "t"], perm=[0, 2, 1, 3]))
        inits.append(numpy_helper.from_array(torch.tensor([0, 0, D * H]).numpy(), f"S{layer}"))
        x = "Y" if layer == L - 1 else f"X{layer + 1}"
        nodes.append(helper.make_node("Reshape", [y + "t", f"S{layer}"], [x]))
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "N", None])]
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", "N", D * H])]
    if state:
        inputs.append(helper.make_tensor_value_info("H0", TensorProto.FLOAT, [1, "N", H]))
        outputs.append(helper.make_tensor_value_info("HN", TensorProto.FLOAT, [1, "N", H]))
    graph = helper.make_graph(nodes, "gru", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def make_runner(peer, ref: nn.GRU, threads, state=False):
    """A callable x -> y (float32 arrays) running ref's weights on the peer; with ``state`` (one
    layer, one direction) (x, h0) -> (y, h_n), h [1, N, H], the streaming call."""
    model = onnx_gru_model(ref, state)
    if peer == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        if state:
            return lambda x, h: tuple(session.run(None, {"X": x, "H0": h}))
        return lambda x: session.run(None, {"X": x})[0]
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:  # OpenVINO reads ONNX from a file
        path = os.path.join(tmp, "gru.onnx")
        with open(path, "wb") as f:
            f.write(model)
        core = ov.Core()
        compiled = core.compile_model(core.read_model(path), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    if state:
        def step(x, h):
            result = request.infer([x, h])
            return result[0], result[1]
        return step
    return lambda x: request.infer([x])[0]
