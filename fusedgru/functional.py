"""Functional GRU over the fused ops, for callers that hold their own weights: :func:`gru` takes
the arguments of ``torch._VF.gru`` (what ``nn.GRU`` calls), :func:`ln_gru` those of
:class:`fusedgru.LayerNormGRU`.

Example::

    >>> m = torch.nn.GRU(4, 8)
    >>> out, h_n = fusedgru.gru(torch.randn(5, 3, 4), None, m._flat_weights, True, 1, 0.0,
    ...                         False, False, False)
    >>> out.shape, h_n.shape
    (torch.Size([5, 3, 8]), torch.Size([1, 3, 8]))
"""

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _ops, reference
from ._ops import fused_or_reference


def _check_devices_and_dtypes(input: Tensor, hx: Tensor, params: Sequence[Tensor]) -> None:
    # Same wording as ATen's RNN checks (aten/src/ATen/native/RNN.cpp, check_attributes).
    for kind, t in [("hidden", hx), *(("parameter", p) for p in params)]:
        if t.device != input.device:
            raise RuntimeError(
                f"Input and {kind} tensors are not at the same device, found input tensor at "
                f"{input.device} and {kind} tensor at {t.device}")
    if input.device.type == "cpu":
        # nn.GRU's and nn.GRUCell's CPU paths check no dtypes (cuDNN's do, below): their first
        # product that mixes two raises, input's with weight_ih, then hx's with weight_hh; with
        # biases that is addmm's error, without them mm's (params[2]: a bias, or a weight).
        biased = len(params) > 2 and params[2].dim() == 1
        for a, b in ((input, params[0]), (hx, params[1])):
            if a.dtype != b.dtype:
                if biased:
                    raise RuntimeError(f"mat1 and mat2 must have the same dtype, but got "
                                       f"{_C10_NAMES.get(a.dtype, a.dtype)} and "
                                       f"{_C10_NAMES.get(b.dtype, b.dtype)}")
                raise RuntimeError(f"expected m1 and m2 to have the same dtype, but got: "
                                   f"{_TYPE_META_NAMES.get(a.dtype, a.dtype)} != "
                                   f"{_TYPE_META_NAMES.get(b.dtype, b.dtype)}")
    if hx.dtype != input.dtype:
        raise RuntimeError(
            "Input and hidden tensors are not the same dtype, found input tensor with "
            f"{input.dtype} and hidden tensor with {hx.dtype}")
    for p in params:
        if p.dtype != input.dtype:
            raise RuntimeError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype ({p.dtype}). "
                f"Convert input: input.to({p.dtype}), or convert model: model.to({input.dtype})")


def autocast_enabled(device_type: str) -> bool:
    """torch.is_autocast_enabled, and False on the meta device, where autocast does not exist
    (torch.is_autocast_enabled raises "unknown device type for autocast"). Not through
    torch.amp.is_autocast_available: Dynamo cannot trace that builtin (torch 2.11 on CUDA), and a
    fullgraph torch.compile of the module then fails."""
    return device_type != "meta" and torch.is_autocast_enabled(device_type)


def no_autocast(device_type: str):
    """A context that turns autocast off on device_type if it is on (else a no-op, so graphs
    exported without autocast carry no autocast regions)."""
    if autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _autocast(input: Tensor, hx: Tensor, params: Sequence[Tensor]):
    """Cast like nn.GRU / nn.GRUCell under torch.autocast.

    CUDA: cuDNN's RNN is on autocast's lower-precision list, so the layer runs in the autocast
    dtype. CPU: autocast leaves the RNN op alone and casts only its GEMMs (to its dtype); the gate
    arithmetic then follows type promotion of the GEMMs' results with hx, so nn.GRU's output
    and h_n (nn.GRUCell's h') come back in ``promote_types(autocast dtype, hx's dtype)``:
    bfloat16 input with float32 hx gives float32, float32 input with bfloat16 hx gives
    bfloat16, a float16 hx under bfloat16 autocast float32; hx defaults to zeros of input's
    dtype. We run the whole layer in that dtype: the same result dtypes, with GEMMs at least
    as precise as nn.GRU's."""
    device_type = input.device.type
    if not autocast_enabled(device_type):
        return input, hx, params
    if device_type == "cuda":
        dtype = torch.get_autocast_dtype("cuda")
    elif hx.is_floating_point():
        _refuse_float64_with_others(input, hx, params)
        dtype = torch.promote_types(torch.get_autocast_dtype("cpu"), hx.dtype)
    else:
        return input, hx, params
    if input.dtype == hx.dtype == dtype and all(p.dtype == dtype for p in params):
        return input, hx, params
    return input.to(dtype), hx.to(dtype), [p.to(dtype) for p in params]


# How ATen's messages name dtypes: c10's ScalarType names, and caffe2::TypeMeta's (mm's error).
_C10_NAMES = {torch.float64: "Double", torch.float32: "Float", torch.bfloat16: "BFloat16",
              torch.float16: "Half", torch.complex64: "ComplexFloat",
              torch.complex128: "ComplexDouble", torch.int64: "Long", torch.int32: "Int",
              torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte", torch.bool: "Bool"}
_TYPE_META_NAMES = {torch.float64: "double", torch.float32: "float",
                    torch.bfloat16: "c10::BFloat16", torch.float16: "c10::Half",
                    torch.complex64: "c10::complex<float>",
                    torch.complex128: "c10::complex<double>"}


def _refuse_float64_with_others(input: Tensor, hx: Tensor, params: Sequence[Tensor]) -> None:
    """CPU autocast never casts float64, so where float64 meets another dtype nn.GRU's (and
    nn.GRUCell's) first GEMM that mixes them raises: the same error, input's product with
    weight_ih first, then hx's with weight_hh (params[0], params[1] in both parameter orders)."""
    tensors = [input, hx, *params]
    if all(t.dtype == torch.float64 for t in tensors) or \
            not any(t.dtype == torch.float64 for t in tensors):
        return
    low = torch.get_autocast_dtype("cpu")

    def cast(t):
        return t.dtype if t.dtype == torch.float64 else low

    pairs = [(input, params[0]), (hx, params[1])] + [(input, p) for p in params[2:]]
    a, b = next((cast(a), cast(b)) for a, b in pairs if cast(a) != cast(b))
    raise RuntimeError(f"mat1 and mat2 must have the same dtype, but got "
                       f"{_C10_NAMES.get(a, a)} and {_C10_NAMES.get(b, b)}")


def check_lengths(lengths, N: int, T: int, device: torch.device) -> Tensor | None:
    """``lengths`` checked and as an int64 tensor on ``device``: shape ``(N,)``, integers (a
    list or tuple of ints is turned into a tensor, as ``pack_padded_sequence`` accepts one), and
    each entry in ``[0, T]`` when the values are on the host (a list or a CPU tensor). A CUDA
    tensor's values are not read here, as that would make the host wait for the device; the CUDA
    kernels clamp its entries into ``[0, T]`` instead. The checks run in the caller's order, so
    an error names the caller's index."""
    if lengths is None:
        return None
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
        if lengths.numel() == 0:  # as_tensor([]) is float32; an empty list of ints is fine
            lengths = lengths.long()
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
    if tuple(lengths.shape) != (N,):
        raise ValueError(f"lengths must have shape (N,) = ({N},), got {tuple(lengths.shape)}")
    # Under torch.compile the values are symbolic; the CPU op checks them when it runs. Under
    # vmap (per-sample lengths) every sample's are checked at once.
    if lengths.device.type == "cpu" and N > 0 and not torch.compiler.is_compiling():
        values = reference.plain_tensor(lengths)
        bad = ((values < 0) | (values > T)).nonzero()
        if bad.numel() > 0:
            v = int(values[tuple(bad[0])])
            got = (f"lengths[{int(bad[0, 0])}] = {v}" if values.dim() == 1
                   else f"{v} among vmap's per-sample lengths")
            raise ValueError(f"lengths must lie in [0, T] = [0, {T}], got {got}")
    return lengths.to(device=device, dtype=torch.int64)


def _shape_str(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _check_weight_shapes(input_size: int, params: Sequence[Tensor], names: Sequence[str],
                         num_layers: int, D: int, what: str) -> int:
    """Check every weight's shape against nn.GRU's layout; returns the hidden size H.

    H is read off the rows of ``weight_hh_l0`` (3H, whichever weight was passed in its place:
    input and recurrent weights and the biases all have 3H rows), so a swapped or misplaced
    weight is reported by its own name rather than as a hidden-state size mismatch."""
    per_layer = len(names)
    first = params[1]
    if first.dim() == 0 or first.shape[0] % 3 != 0 or first.shape[0] == 0:
        raise RuntimeError(
            f"{what} weight_hh_l0 must have shape (3*hidden_size, hidden_size), got "
            f"{_shape_str(first.shape)}")
    H = first.shape[0] // 3
    wrong = []
    for layer in range(num_layers):
        for d in range(D):
            suffix = f"_l{layer}" + ("_reverse" if d else "")
            k = (layer * D + d) * per_layer
            for name, p in zip(names, params[k:k + per_layer]):
                if name == "weight_ih":
                    expected = (3 * H, input_size if layer == 0 else D * H)
                elif name == "weight_hh":
                    expected = (3 * H, H)
                else:
                    expected = (3 * H,)
                if tuple(p.shape) != expected:
                    wrong.append(f"{name}{suffix} must have shape {_shape_str(expected)}, got "
                                 f"{_shape_str(p.shape)}")
    if wrong:
        raise RuntimeError(
            f"{what} weights do not fit input_size={input_size}, hidden_size={H} (from "
            f"weight_hh_l0), num_layers={num_layers}, bidirectional={D == 2}: "
            + "; ".join(wrong))
    return H


def dropout_between_layers(x: Tensor, p: float, lengths: Tensor | None) -> Tensor:
    """F.dropout(x, p) (training) on a layer's output x [T, N, D H], drawn as nn.GRU draws it on
    the CPU, so that one seed gives nn.GRU's masks and leaves the generator where nn.GRU does:
    ATen's dropout fills a noise tensor in its memory order, and nn.GRU's layer outputs are
    time-major [T, N, D H] whatever batch_first says (ours may be batch-major), or the packed
    rows of a PackedSequence, [sum(lengths), D H] (lengths: sorted non-increasing, as the
    CPU path runs them; the finished rows' outputs are zero and stay zero). On a GPU nn.GRU's
    dropout is cuDNN's own generator, which no one matches: plain F.dropout."""
    if (x.device.type != "cpu" or p in (0.0, 1.0)  # p = 1: zeros, no draw (ATen's dropout)
            or torch.compiler.is_compiling()  # compiled RNG is not eager's anyway
            or torch._C._functorch.is_functorch_wrapped_tensor(x)):  # vmap's randomness modes
        return F.dropout(x, p, True)
    if lengths is None:
        noise = torch.empty_like(x, memory_format=torch.contiguous_format)
        noise.bernoulli_(1 - p).div_(1 - p)
    else:
        active = torch.arange(x.shape[0]).unsqueeze(1) < lengths.unsqueeze(0)  # [T, N]
        packed = x.new_empty((int(lengths.sum()), x.shape[2])).bernoulli_(1 - p).div_(1 - p)
        noise = x.new_zeros(x.shape)
        noise[active] = packed  # row-major over [T, N]: the packed rows' order
    return x * noise


def stack_layers(x, hx, params, per_layer, num_layers, D, run_layer, dropout=0.0,
                 run_both=None, lengths=None):
    """The layers and directions of a GRU, each layer's output the next one's input (both
    directions' outputs side by side, dropout between layers: dropout_between_layers, with
    ``lengths`` as the layers run them). x [T, N, C]; hx [L D, N, H]; params: per_layer
    tensors per layer and direction. run_layer(x, h0, layer_params, reverse) -> (output
    [T, N, H], h_n [N, H]); run_both (optional, for D = 2): run_both(x, h0 [2, N, H], both
    directions' params) -> (output [T, N, 2H], h_n [2, N, H]) in one call. Returns (output
    [T, N, D H], h_n [L D, N, H])."""
    h_n = []
    for layer in range(num_layers):
        k = layer * D
        if D == 2 and run_both is not None:
            x, h = run_both(x, hx[k:k + 2], params[k * per_layer:(k + 2) * per_layer])
            h_n.extend(h.unbind(0))
        else:
            outs = []
            for d in range(D):
                out, h = run_layer(x, hx[k + d],
                                   params[(k + d) * per_layer:(k + d + 1) * per_layer], d == 1)
                outs.append(out)
                h_n.append(h)
            x = outs[0] if D == 1 else torch.cat(outs, dim=2)
        if dropout > 0 and layer < num_layers - 1:
            x = dropout_between_layers(x, dropout, lengths)
    return x, h_n[0].unsqueeze(0) if len(h_n) == 1 else torch.stack(h_n, 0)


def _layers(input, hx, params, names, num_layers, dropout, train, bidirectional,
            batch_first, lengths, run_layer, what, run_both=None):
    """The multi-layer, multi-direction loop shared by the GRU variants, and the one place
    their arguments are checked. names: the parameter names of one layer and direction
    (nn.GRU's, without the ``_l{k}`` suffix). run_layer(x, h0, layer_params, lengths, reverse,
    need_workspace) -> (output [T, N, H], h_n [N, H]); run_both (optional): both directions of
    a bidirectional layer in one call, run_both(x, h0 [2, N, H], both directions' params,
    lengths, need_workspace) -> (output [T, N, 2H], h_n [2, N, H])."""
    D = 2 if bidirectional else 1
    per_layer = len(names)
    if num_layers < 1:
        raise RuntimeError(f"num_layers must be at least 1, got {num_layers}")
    # torch._VF.gru's check: only where dropout applies (training, between layers).
    if train and num_layers > 1 and not 0 <= dropout <= 1:
        raise RuntimeError(f"dropout probability has to be between 0 and 1, but got {dropout}")
    if len(params) != num_layers * D * per_layer:  # RuntimeError: torch._VF.gru's type
        raise RuntimeError(
            f"expected {num_layers * D * per_layer} {what} parameters for "
            f"num_layers={num_layers}, bidirectional={bidirectional}, got {len(params)}")
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):  # torch._VF.gru's argument parsing (a weight set to None)
            raise TypeError(f"expected Tensor as element {i} in argument 2, but got "
                            f"{type(p).__name__}")
    if input.dim() != 3:  # nn.GRU's check_input wording
        raise RuntimeError(f"input must have 3 dimensions, got {input.dim()}")
    x = input.transpose(0, 1) if batch_first else input
    T, N = x.shape[0], x.shape[1]
    H = _check_weight_shapes(x.shape[2], params, names, num_layers, D, what)
    expected_hx = (num_layers * D, N, H)
    if hx is None:
        hx = x.new_zeros(expected_hx)
    elif tuple(hx.shape) != expected_hx:
        raise RuntimeError(f"Expected hidden size {expected_hx}, got {list(hx.shape)}")
    # Before any reordering, so that an error names the caller's index.
    lengths = check_lengths(lengths, N, T, x.device)
    x, hx, params = _autocast(x, hx, params)
    _check_devices_and_dtypes(x, hx, params)
    order = None
    if (lengths is not None and x.device.type == "cpu"
            and reference.host_lengths_longest_first(lengths) is None):
        # The CPU kernels skip a step's finished rows when the rows come longest first:
        # run in that order (like PackedSequence), give the results back in the caller's.
        # Rows in that order already stay (a PackedSequence's, and pack_padded_sequence's
        # default enforce_sorted=True); others take pack_padded_sequence's own sort (with
        # enforce_sorted=False), which moves tied rows from 17 on: the dropout's draws follow.
        order = torch.sort(lengths, descending=True).indices
        x, hx, lengths = x.index_select(1, order), hx.index_select(1, order), lengths[order]

    # Not under torch.jit.trace, whose check traces again under no_grad and must record the
    # same graph: a traced graph's backward runs the forward again with its workspace.
    need_workspace = torch.is_grad_enabled() and not torch.jit.is_tracing() and (
        x.requires_grad or hx.requires_grad or any(p.requires_grad for p in params))
    if need_workspace and batch_first and order is None:
        # nn.GRU saves a time-major copy of a batch_first input for its backward, so that an
        # input changed in place after the call, or made under inference_mode, trains there;
        # ours would save a view of it. A copy in the input's own layout (a seq-first input is
        # saved as itself, by nn.GRU too).
        x = x.clone()
    # The inputs are cast already; keep autocast from casting again inside (the references).
    with no_autocast(x.device.type):
        x, h_n = stack_layers(
            x, hx, params, per_layer, num_layers, D,
            lambda x, h0, p, reverse: run_layer(x, h0, p, lengths, reverse, need_workspace),
            dropout if train else 0.0,
            run_both and (lambda x, h0, p: run_both(x, h0, p, lengths, need_workspace)),
            lengths)
    if order is not None:
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel()))
        x, h_n = x.index_select(1, inverse), h_n.index_select(1, inverse)
    elif need_workspace:
        # The ops' backward reads the output they returned (h_{t-1} of each step). Give the
        # caller a copy, so that in-place changes to it (a residual `out += x`, an in-place
        # activation) are allowed, as on nn.GRU's CPU path, instead of failing the backward.
        x = x.clone()
    output = x.transpose(0, 1) if batch_first else x
    return output, h_n


# Parameter names of one layer and direction, in params order (nn.GRU's _flat_weights_names).
_GRU_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_LN_GRU_NAMES = ("weight_ih", "weight_hh", "ln_ih_weight", "ln_ih_bias", "ln_hh_weight",
                 "ln_hh_bias")


def _onnx_gru(input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
              batch_first, lengths):
    """:func:`gru` under ``torch.onnx.export``: the whole GRU as one ``fusedgru::gru`` node,
    which exports as nn.GRU does (:func:`fusedgru._ops.register_onnx_symbolic`)."""
    if lengths is not None:
        raise RuntimeError(
            "fusedgru.GRU: ONNX export of a call with lengths or a PackedSequence is not "
            "supported; export the stock module (fusedgru.revert(model)) with a "
            "PackedSequence, or call this one without lengths")
    if train and dropout > 0 and num_layers > 1:
        raise RuntimeError("fusedgru.GRU: an ONNX export applies no dropout; export the model "
                           "in eval mode")
    if hx is None:
        D = 2 if bidirectional else 1
        N = input.shape[0 if batch_first else 1]
        hx = input.new_zeros((num_layers * D, N, params[1].shape[1]))
    _ops.register_onnx_symbolic()
    return _ops.gru(input, hx, params, has_biases, num_layers, bidirectional, batch_first)


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
    lengths: Tensor | Sequence[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Multi-layer GRU on fused kernels; the arguments of ``torch._VF.gru``.

    Args:
        input: ``[T, N, C]``, or ``[N, T, C]`` with ``batch_first``; any strides.
        hx: ``[num_layers * D, N, H]`` initial hidden state (D = 2 if bidirectional), or None
            for zeros.
        params: per layer and direction ``weight_ih [3H, C_l]``, ``weight_hh [3H, H]`` and, with
            ``has_biases``, ``bias_ih [3H]``, ``bias_hh [3H]``: ``nn.GRU._flat_weights`` order.
        has_biases: whether ``params`` hold the biases.
        num_layers: the number of layers.
        dropout: dropout probability on the outputs of all layers but the last, when ``train``.
        train: training mode (dropout on).
        bidirectional: run each layer in both directions (D = 2).
        batch_first: ``input`` and ``output`` are ``[N, T, ...]``.
        lengths: optional ``[N]`` integer tensor (or list of ints) of valid lengths in
            ``[0, T]``; row i runs time steps ``t < lengths[i]`` (the reverse direction starts
            at ``lengths[i] - 1``), outputs past it are zero and its ``h_n`` is its state after
            its last valid step (``hx`` itself for a length of 0). Checked for shape ``(N,)``
            and dtype; its values are checked when they are on the host (a list or a CPU
            tensor), while a CUDA tensor's are not read (no host synchronization): the CUDA
            kernels clamp each entry into ``[0, T]``.

    Raises:
        RuntimeError: a weight whose shape does not fit nn.GRU's layout (named as in nn.GRU,
            e.g. ``weight_hh_l0``), or an ``hx`` of the wrong size.
        ValueError / TypeError: ``lengths`` of the wrong shape or range / dtype.

    Returns:
        ``output [T, N, D*H]`` (``[N, T, D*H]`` with batch_first) and ``h_n [num_layers*D, N, H]``.

    Example::

        >>> m = torch.nn.GRU(4, 8, num_layers=2, bidirectional=True)
        >>> x = torch.randn(5, 3, 4)
        >>> out, h_n = fusedgru.gru(x, None, m._flat_weights, True, 2, 0.0, False, True, False)
        >>> out.shape, h_n.shape
        (torch.Size([5, 3, 16]), torch.Size([4, 3, 8]))
        >>> torch.allclose(out, m(x)[0], atol=1e-5)
        True
    """

    if _ops.onnx_exporting():
        return _onnx_gru(input, hx, params, has_biases, num_layers, dropout, train,
                         bidirectional, batch_first, lengths)

    def fused_layer(x, h0, w, lengths, reverse, need_workspace):
        b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
        out, h, _ = _ops.gru_forward(x, h0, w[0], w[1], b_ih, b_hh, lengths=lengths,
                                     reverse=reverse, need_workspace=need_workspace)
        return out, h

    def fused_both(x, h0, w, lengths, need_workspace):
        per = len(w) // 2  # each direction's (w_ih, w_hh[, b_ih, b_hh])
        out, h, _, _ = _ops.gru_forward_bidirectional(
            x, h0, w[:per], w[per:], lengths=lengths, need_workspace=need_workspace)
        return out, h

    def reference_layer(x, h0, w, lengths, reverse, need_workspace):
        # No workspace: autograd of the torch ops saves what their backward needs.
        b_ih, b_hh = (w[2], w[3]) if has_biases else (None, None)
        out, h, _ = reference.gru_layer(x, h0, w[0], w[1], b_ih, b_hh, lengths, reverse)
        return out, h

    run_layer, run_both = fused_or_reference((fused_layer, fused_both), (reference_layer, None),
                                             input, hx, *params)
    names = _GRU_NAMES if has_biases else _GRU_NAMES[:2]
    return _layers(input, hx, params, names, num_layers, dropout, train, bidirectional,
                   batch_first, lengths, run_layer, "GRU", run_both)


def ln_gru(
    input: Tensor,
    hx: Tensor | None,
    params: Sequence[Tensor],
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
    lengths: Tensor | Sequence[int] | None = None,
    eps: float = reference.LAYER_NORM_EPS,
) -> tuple[Tensor, Tensor]:
    """Multi-layer layer-normalized GRU (see :class:`fusedgru.LayerNormGRU`). Arguments as
    :func:`gru`, with ``params`` per layer and direction ``weight_ih [3H, C_l]``,
    ``weight_hh [3H, H]``, ``ln_ih_weight``, ``ln_ih_bias``, ``ln_hh_weight``, ``ln_hh_bias``
    (each ``[3H]``).

    Args:
        input: ``[T, N, C]``, or ``[N, T, C]`` with ``batch_first``.
        hx: ``[num_layers * D, N, H]`` or None for zeros.
        params: per layer, and within a layer per direction (forward, then reverse), the
            six tensors above in that order. :class:`fusedgru.LayerNormGRU` registers its
            parameters in another order (all weights first, as nn.GRU's, then the LayerNorm
            parameters), so gather them by name, as in the example.
        num_layers, dropout, train, bidirectional, batch_first, lengths: as in :func:`gru`.
        eps: the LayerNorm epsilon.

    Returns:
        ``output [T, N, D*H]`` (``[N, T, D*H]`` with batch_first) and ``h_n [num_layers*D, N, H]``.

    Example::

        >>> m = fusedgru.LayerNormGRU(4, 8, num_layers=2, bidirectional=True)
        >>> x = torch.randn(5, 3, 4)
        >>> names = ("weight_ih", "weight_hh", "ln_ih_weight", "ln_ih_bias", "ln_hh_weight",
        ...          "ln_hh_bias")
        >>> params = [getattr(m, f"{n}_l{k}{d}") for k in range(2) for d in ("", "_reverse")
        ...           for n in names]
        >>> out, h_n = fusedgru.ln_gru(x, None, params, 2, 0.0, False, True, False)
        >>> torch.allclose(out, m(x)[0])
        True
    """

    if _ops.onnx_exporting():  # its reference would unroll the traced T steps
        raise RuntimeError("LayerNormGRU has no ONNX export (ONNX has no layer-normalized GRU "
                           "operator)")

    def fused_layer(x, h0, w, lengths, reverse, need_workspace):
        out, h, _ = _ops.ln_gru_forward(x, h0, *w, lengths=lengths, reverse=reverse, eps=eps,
                                        need_workspace=need_workspace)
        return out, h

    def reference_layer(x, h0, w, lengths, reverse, need_workspace):
        return reference.ln_gru_layer(x, h0, *w, lengths, reverse, eps)

    run_layer = fused_or_reference(fused_layer, reference_layer, input, hx, *params)
    return _layers(input, hx, params, _LN_GRU_NAMES, num_layers, dropout, train, bidirectional,
                   batch_first, lengths, run_layer, "LayerNormGRU")
