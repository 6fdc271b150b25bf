"""Functional GRU over the fused ops, for callers that hold their own weights."""

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import reference
from ._ops import needs_reference


def _check_devices_and_dtypes(input: Tensor, hx: Tensor, params: Sequence[Tensor]) -> None:
    # Same wording as ATen's RNN checks (aten/src/ATen/native/RNN.cpp, check_attributes).
    if hx.device != input.device:
        raise RuntimeError(
            "Input and hidden tensors are not at the same device, found input tensor at "
            f"{input.device} and hidden tensor at {hx.device}")
    for p in params:
        if p.device != input.device:
            raise RuntimeError(
                "Input and parameter tensors are not at the same device, found input tensor at "
                f"{input.device} and parameter tensor at {p.device}")
    if hx.dtype != input.dtype:
        raise RuntimeError(
            "Input and hidden tensors are not the same dtype, found input tensor with "
            f"{input.dtype} and hidden tensor with {hx.dtype}")
    for p in params:
        if p.dtype != input.dtype:
            raise RuntimeError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype ({p.dtype}). "
                f"Convert input: input.to({p.dtype}), or convert model: model.to({input.dtype})")


def _autocast(input: Tensor, hx: Tensor, params: Sequence[Tensor]):
    """Cast like nn.GRU under torch.autocast: CUDA runs the layer in the autocast dtype; the CPU
    autocast leaves GRUs alone, except that the weights follow a low-precision input."""
    device_type = input.device.type
    if not torch.is_autocast_enabled(device_type):
        return input, hx, params
    if device_type == "cuda":
        dtype = torch.get_autocast_dtype("cuda")
    elif input.dtype != params[0].dtype and input.is_floating_point():
        dtype = input.dtype
    else:
        return input, hx, params
    return input.to(dtype), hx.to(dtype), [p.to(dtype) for p in params]


def _layers(input, hx, params, per_layer, num_layers, dropout, train, bidirectional,
            batch_first, lengths, run_layer, what):
    """The multi-layer, multi-direction loop shared by the GRU variants. run_layer(x, h0,
    layer_params, reverse, need_workspace) -> (output [T, N, H], h_n [N, H])."""
    D = 2 if bidirectional else 1
    if len(params) != num_layers * D * per_layer:
        raise ValueError(
            f"expected {num_layers * D * per_layer} {what} parameters for "
            f"num_layers={num_layers}, bidirectional={bidirectional}, got {len(params)}")
    H = params[1].shape[1]
    x = input.transpose(0, 1) if batch_first else input
    expected_hx = (num_layers * D, x.shape[1], H)
    if hx is None:
        hx = x.new_zeros(expected_hx)
    elif tuple(hx.shape) != expected_hx:
        raise RuntimeError(f"Expected hidden size {expected_hx}, got {list(hx.shape)}")
    autocast = torch.is_autocast_enabled(x.device.type)
    x, hx, params = _autocast(x, hx, params)
    _check_devices_and_dtypes(x, hx, params)
    order = None
    if lengths is not None:
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
        lengths = lengths.to(device=x.device, dtype=torch.int64)
        if x.device.type == "cpu":
            # The CPU kernels skip a step's finished rows when the rows come longest first:
            # run in that order (like PackedSequence), give the results back in the caller's.
            order = torch.argsort(lengths, descending=True, stable=True)
            x, hx, lengths = x.index_select(1, order), hx.index_select(1, order), lengths[order]

    need_workspace = torch.is_grad_enabled() and (
        x.requires_grad or hx.requires_grad or any(p.requires_grad for p in params))
    # The inputs are cast already; keep autocast from casting again inside (and keep exported
    # graphs free of autocast regions when it is off).
    no_autocast = torch.autocast(x.device.type, enabled=False) if autocast else \
        contextlib.nullcontext()
    with no_autocast:
        h_n = []
        for layer in range(num_layers):
            outs = []
            for d in range(D):
                k = layer * D + d
                out, h = run_layer(x, hx[k], params[k * per_layer:(k + 1) * per_layer],
                                   lengths, d == 1, need_workspace)
                outs.append(out)
                h_n.append(h)
            x = outs[0] if D == 1 else torch.cat(outs, dim=2)
            if dropout > 0 and train and layer < num_layers - 1:
                x = F.dropout(x, dropout, True)
    h_n = torch.stack(h_n, 0)
    if order is not None:
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel()))
        x, h_n = x.index_select(1, inverse), h_n.index_select(1, inverse)
    output = x.transpose(0, 1) if batch_first else x
    return output, h_n


def gru(
    input: Tensor,
    hx: Tensor | None,
    params: Sequence[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Multi-layer GRU on fused kernels; the arguments of ``torch._VF.gru``.

    Args:
        input: ``[T, N, C]``, or ``[N, T, C]`` with ``batch_first``; any strides.
        hx: ``[num_layers * D, N, H]`` initial hidden state (D = 2 if bidirectional), or None
            for zeros.
        params: per layer and direction ``weight_ih [3H, C_l]``, ``weight_hh [3H, H]`` and, with
            ``has_biases``, ``bias_ih [3H]``, ``bias_hh [3H]``: ``nn.GRU._flat_weights`` order.
        dropout: dropout probability on the outputs of all layers but the last, when ``train``.
        lengths: optional ``[N]`` int64 valid lengths; row i runs time steps ``t < lengths[i]``
            (the reverse direction starts at ``lengths[i] - 1``), outputs past it are zero.

    Returns:
        ``output [T, N, D*H]`` (``[N, T, D*H]`` with batch_first) and ``h_n [num_layers*D, N, H]``.
    """

    use_reference = needs_reference(input, hx, *params)

    def run_layer(x, h0, w, lengths, reverse, need_workspace):
        b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
        if use_reference:
            out, h, _ = reference.gru_layer(x, h0, w[0], w[1], b_ih, b_hh, lengths, reverse)
        else:
            out, h, _ = torch.ops.fusedgru.gru_forward(x, h0, w[0], w[1], b_ih, b_hh, lengths,
                                                       reverse, need_workspace)
        return out, h

    return _layers(input, hx, params, 4 if has_biases else 2, num_layers, dropout, train,
                   bidirectional, batch_first, lengths, run_layer, "GRU")


def ln_gru(
    input: Tensor,
    hx: Tensor | None,
    params: Sequence[Tensor],
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
    lengths: Tensor | None = None,
    eps: float = 1e-5,
) -> tuple[Tensor, Tensor]:
    """Multi-layer layer-normalized GRU (see :class:`fusedgru.LayerNormGRU`). Arguments as
    :func:`gru`, with ``params`` per layer and direction ``weight_ih [3H, C_l]``,
    ``weight_hh [3H, H]``, ``ln_ih_weight``, ``ln_ih_bias``, ``ln_hh_weight``, ``ln_hh_bias``
    (each ``[3H]``)."""

    use_reference = needs_reference(input, hx, *params)

    def run_layer(x, h0, w, lengths, reverse, need_workspace):
        if use_reference:
            return reference.ln_gru_layer(x, h0, *w, lengths, reverse, eps)
        out, h, _ = torch.ops.fusedgru.ln_gru_forward(x, h0, *w, lengths, reverse, eps,
                                                      need_workspace)
        return out, h

    return _layers(input, hx, params, 6, num_layers, dropout, train, bidirectional, batch_first,
                   lengths, run_layer, "LayerNormGRU")
