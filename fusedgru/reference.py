"""Pure-PyTorch references of the fused ops: the same functions, written with differentiable
torch operations. Tests compare the kernels against them, and the double backward of the GRU
differentiates ``gru_layer_backward`` (autograd of torch ops gives its exact derivative).

Shape legend: T time steps, N batch, C input features, H hidden size. Gate order (r, z, n).

Example::

    >>> from fusedgru import reference
    >>> m = fusedgru.GRU(4, 8)
    >>> x, h0 = torch.randn(5, 3, 4), torch.zeros(3, 8)
    >>> out, h_n, saved = reference.gru_layer(x, h0, m.weight_ih_l0, m.weight_hh_l0,
    ...                                       m.bias_ih_l0, m.bias_hh_l0)
    >>> torch.allclose(out, m(x)[0], atol=1e-5)
    True
"""

import torch
from torch import Tensor

# LayerNormGRU's default epsilon: torch.nn.LayerNorm's.
LAYER_NORM_EPS = 1e-5


def _active_mask(lengths: Tensor | None, T: int, N: int, like: Tensor) -> Tensor:
    """[T, N, 1] bool: row i is active at step t iff t < lengths[i]."""
    if lengths is None:
        return torch.ones((T, N, 1), dtype=torch.bool, device=like.device)
    t = torch.arange(T, device=like.device).unsqueeze(1)
    return (t < lengths.to(like.device).unsqueeze(0)).unsqueeze(2)


def plain_tensor(t: Tensor) -> Tensor:
    """t beneath the wrappers of any torch.func transform it is under (a vmap's batched tensor:
    all samples' values, its batch dimensions wherever vmap put them): the values the host
    reads of an integer argument such as lengths, which no transform differentiates."""
    functorch = torch._C._functorch
    while functorch.is_functorch_wrapped_tensor(t):
        t = functorch.get_unwrapped(t)
    return t


def host_lengths_longest_first(lengths: Tensor | None) -> list[int] | None:
    """The values of lengths, read on the host, where they are on the CPU and non-increasing
    (a PackedSequence's always are). None where the host cannot or should not branch on them:
    no lengths, lengths on a GPU (reading them would sync), under torch.compile (symbolic
    values), batched by vmap (each sample's own), or not in that order."""
    if lengths is None or lengths.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    values = plain_tensor(lengths)
    if values.dim() != 1:  # vmap's batch dimensions
        return None
    lens = values.tolist()
    return None if any(a < b for a, b in zip(lens, lens[1:])) else lens


def _active_prefix(lengths: Tensor | None, T: int) -> list[int] | None:
    """Per step t, how many leading rows are active (lengths[i] > t) where the host reads the
    lengths in that order (host_lengths_longest_first): each step's recurrent product then
    multiplies those rows only, as nn.GRU on a PackedSequence and the fused CPU ops do
    (csrc/gru_common.cpp active_prefix). A product's shape decides whether ATen rounds it under
    torch's bf16 matmul precision, so a reference of all N rows would round where they keep
    fp32. None where every row is multiplied."""
    lens = host_lengths_longest_first(lengths)
    return None if lens is None else [sum(n > t for n in lens) for t in range(T)]


def _padded(t: Tensor, N: int) -> Tensor:
    """t [k, ...] with zero rows appended up to N rows (the rows past their lengths)."""
    if t.shape[0] == N:
        return t
    return torch.cat([t, t.new_zeros(N - t.shape[0], *t.shape[1:])])


def _rows_of_their_own(t: Tensor) -> Tensor:
    """t, or a contiguous copy of a CPU bf16/fp16 t that is not contiguous, before it is the
    left operand of a product: oneDNN's AMX kernels behind ATen's CPU bf16 products read a
    row-major operand's rows past their end when the row stride is larger (a sliced input, an
    hx view), and NaN or inf there reaches the result (benchmarks/NOTES.md, "oneDNN's AMX bf16
    product reads past K"; torch.nn.GRU gives NaN on such an input on an AMX CPU). The fused
    ops' own products go through aten_matmul in C++, which does the same."""
    if t.device.type == "cpu" and t.dtype in (torch.bfloat16, torch.float16) \
            and not t.is_contiguous():
        return t.contiguous()
    return t


def _without_padding(input: Tensor, active: Tensor, lengths: Tensor | None) -> Tensor:
    """input with the steps past each row's length zeroed, for the products with W_ih: their
    gradient in W_ih multiplies the padding by a zero gradient, and 0 * NaN or 0 * inf in the
    padding would still reach it (nn.GRU on a PackedSequence never reads the padding; the
    fused ops' steps_without_padding)."""
    return input if lengths is None else input.masked_fill(~active, 0)


def gates(gi: Tensor, gh: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One step's gates from the input and recurrent pre-activations gi, gh [N, 3H] (gate order
    r, z, n, as nn.GRU) and h_{t-1} [N, H]: (r, z, n, h_t), with
    n = tanh(gi_n + r * gh_n) and h_t = n + z * (h - n) (= (1 - z) n + z h, as ATen computes it)."""
    i_r, i_z, i_n = gi.chunk(3, dim=1)
    h_r, h_z, h_n = gh.chunk(3, dim=1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return r, z, n, n + z * (h - n)


def gru_layer(input: Tensor, hx: Tensor, weight_ih: Tensor, weight_hh: Tensor,
              bias_ih: Tensor | None = None, bias_hh: Tensor | None = None,
              lengths: Tensor | None = None, reverse: bool = False):
    """One GRU layer in one direction, as ``fusedgru::gru_forward``.

    Args:
        input: ``[T, N, C]``.
        hx: ``[N, H]``, the initial state.
        weight_ih: ``[3H, C]``; weight_hh: ``[3H, H]``.
        bias_ih, bias_hh: ``[3H]`` or None.
        lengths: ``[N]`` valid lengths, or None (all T).
        reverse: run from t = T - 1 down (row i from ``lengths[i] - 1``).

    Returns:
        output ``[T, N, H]`` (zero past each length), h_n ``[N, H]`` and the saved activations
        ``[T, N, 4H]`` = (r, z, n, W_hn h + b_hn), zero where inactive.

    Example::

        >>> w_ih, w_hh = torch.randn(12, 3), torch.randn(12, 4)
        >>> out, h_n, saved = reference.gru_layer(torch.randn(5, 2, 3), torch.zeros(2, 4),
        ...                                       w_ih, w_hh, lengths=torch.tensor([5, 3]))
        >>> out.shape, h_n.shape, saved.shape
        (torch.Size([5, 2, 4]), torch.Size([2, 4]), torch.Size([5, 2, 16]))
        >>> torch.equal(h_n[1], out[2, 1])  # row 1 ends at its last valid step
        True
    """
    T, N, _ = input.shape
    H = hx.shape[1]
    active = _active_mask(lengths, T, N, input)
    gi = torch.nn.functional.linear(_rows_of_their_own(_without_padding(input, active, lengths)),
                                    weight_ih, bias_ih)
    prefix = _active_prefix(lengths, T)
    h = _rows_of_their_own(hx)
    outs, saved = [None] * T, [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        k = N if prefix is None else prefix[t]
        gh = torch.nn.functional.linear(h[:k], weight_hh, bias_hh)
        r, z, n, h_new = gates(gi[t, :k], gh, h[:k])
        m, zero = active[t, :k], torch.zeros(()).to(h)
        outs[t] = _padded(torch.where(m, h_new, zero), N)
        saved[t] = _padded(torch.where(m, torch.cat([r, z, n, gh[:, 2 * H:]], dim=1), zero), N)
        h = torch.cat([torch.where(m, h_new, h[:k]), h[k:]])
    return torch.stack(outs), h, torch.stack(saved)


def gru_layer_backward(grad_output: Tensor, grad_h_n: Tensor, grad_workspace: Tensor | None,
                       input: Tensor, hx: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                       lengths: Tensor | None, output: Tensor, workspace: Tensor, reverse: bool,
                       has_bias: bool):
    """``fusedgru::gru_backward`` in torch ops: the gradients of ``gru_layer`` given those of its
    outputs, computed from the saved activations exactly as the kernels do.

    Args:
        grad_output: ``[T, N, H]``, the gradient of ``output``.
        grad_h_n: ``[N, H]``, the gradient of ``h_n``.
        grad_workspace: ``[T, N, 4H]``, the gradient of the saved activations, or None.
        input, hx, weight_ih, weight_hh, lengths, reverse: as given to :func:`gru_layer`.
        output, workspace: what :func:`gru_layer` returned (output, saved activations).
        has_bias: whether the layer has biases.

    Returns:
        (grad_input ``[T, N, C]``, grad_hx ``[N, H]``, grad_weight_ih ``[3H, C]``,
        grad_weight_hh ``[3H, H]``, grad_bias_ih ``[3H]``, grad_bias_hh ``[3H]``); the bias
        gradients are None without ``has_bias``.

    Example::

        >>> x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
        >>> h0 = torch.zeros(2, 5, dtype=torch.float64)
        >>> w_ih = torch.randn(15, 3, dtype=torch.float64)
        >>> w_hh = torch.randn(15, 5, dtype=torch.float64)
        >>> out, h_n, saved = reference.gru_layer(x, h0, w_ih, w_hh)
        >>> g_out, g_h = torch.randn_like(out), torch.randn_like(h_n)
        >>> grads = reference.gru_layer_backward(g_out, g_h, None, x, h0, w_ih, w_hh, None,
        ...                                      out, saved, False, False)
        >>> autograd, = torch.autograd.grad((out, h_n), x, (g_out, g_h))
        >>> torch.allclose(grads[0], autograd)
        True
    """
    T, N, _ = input.shape
    H = hx.shape[1]
    active = _active_mask(lengths, T, N, input)
    r, z, n, hn = workspace.split(H, dim=2)
    if grad_workspace is None:
        g_r = g_z = g_n = g_hn = torch.zeros_like(r)
    else:
        g_r, g_z, g_n, g_hn = grad_workspace.split(H, dim=2)
    # h_{t-1}: the output of the step the forward ran before t, or hx where there is none.
    prev = torch.arange(T, device=input.device) + (1 if reverse else -1)
    lens = lengths.to(input.device) if lengths is not None else torch.full(
        (N,), T, device=input.device)
    has_prev = (prev.unsqueeze(1) >= 0) & (prev.unsqueeze(1) < lens.unsqueeze(0))  # [T, N]
    shifted = output[prev.clamp(0, T - 1)]
    hprev = torch.where(has_prev.unsqueeze(2), shifted, hx.unsqueeze(0).expand_as(shifted))

    dh = grad_h_n
    dgh, dgin = [None] * T, [None] * T
    for t in (range(T) if reverse else range(T - 1, -1, -1)):
        m = active[t]
        g = dh + grad_output[t]
        da_n = (g * (1 - z[t]) + g_n[t]) * (1 - n[t] * n[t])
        da_z = (g * (hprev[t] - n[t]) + g_z[t]) * z[t] * (1 - z[t])
        da_r = (da_n * hn[t] + g_r[t]) * r[t] * (1 - r[t])
        zero = torch.zeros((), dtype=g.dtype, device=g.device)
        dgh[t] = torch.where(m, torch.cat([da_r, da_z, da_n * r[t] + g_hn[t]], dim=1), zero)
        dgin[t] = torch.where(m, da_n, zero)
        dh = torch.where(m, g * z[t], dh) + dgh[t] @ weight_hh
    dgh_all, dgin_all = torch.stack(dgh), torch.stack(dgin)
    dgi_all = torch.cat([dgh_all[..., :2 * H], dgin_all], dim=2)
    grad_input = dgi_all @ weight_ih
    kept = _without_padding(input, active, lengths)
    grad_w_ih = dgi_all.reshape(-1, 3 * H).t() @ kept.reshape(-1, input.shape[2])
    grad_w_hh = dgh_all.reshape(-1, 3 * H).t() @ hprev.reshape(-1, H)
    grad_b_ih = dgi_all.sum((0, 1)) if has_bias else None
    grad_b_hh = dgh_all.sum((0, 1)) if has_bias else None
    return grad_input, dh, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


_ACTIVATIONS = {None: lambda v: v, "silu": torch.nn.functional.silu, "relu": torch.relu}


def gru_layer_backward_bidirectional(
        grad_output: Tensor, grad_h_n: Tensor, grad_workspace: Tensor | None,
        grad_workspace_reverse: Tensor | None, input: Tensor, hx: Tensor, weight_ih: Tensor,
        weight_hh: Tensor, weight_ih_reverse: Tensor, weight_hh_reverse: Tensor,
        lengths: Tensor | None, output: Tensor, workspace: Tensor, workspace_reverse: Tensor,
        has_bias: bool):
    """``fusedgru::gru_backward_bidirectional`` in torch ops: :func:`gru_layer_backward` of each
    direction of a bidirectional layer (grad_output, output ``[T, N, 2H]``; grad_h_n, hx
    ``[2, N, H]``). Returns (grad_input summed over both directions, grad_hx ``[2, N, H]``,
    then the forward direction's and the reverse direction's parameter gradients)."""
    H = weight_hh.shape[1]
    grads = []
    for d, (w_ih, w_hh, g_ws, ws) in enumerate(
            ((weight_ih, weight_hh, grad_workspace, workspace),
             (weight_ih_reverse, weight_hh_reverse, grad_workspace_reverse, workspace_reverse))):
        half = slice(d * H, (d + 1) * H)
        grads.append(gru_layer_backward(grad_output[..., half], grad_h_n[d], g_ws, input, hx[d],
                                        w_ih, w_hh, lengths, output[..., half], ws, d == 1,
                                        has_bias))
    (g_in, g_hx, *params), (g_in_r, g_hx_r, *params_r) = grads
    return (g_in + g_in_r, torch.stack([g_hx, g_hx_r]), *params, *params_r)


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, dilation: int = 1,
                  activation: str | None = None, initial_state: Tensor | None = None) -> Tensor:
    """Causal depthwise conv1d through F.conv1d, as ``fusedgru::causal_conv1d_fwd``.

    Args:
        x: ``[N, C, L]``.
        weight: ``[C, W]``.
        bias: ``[C]`` or None.
        dilation: the spacing between taps.
        activation: None, ``"silu"`` or ``"relu"``.
        initial_state: ``[N, C, (W-1)*dilation]`` or None (zeros): the inputs before t = 0,
            oldest first.

    Returns:
        y ``[N, C, L]``.

    Example::

        >>> x, w, b = torch.randn(2, 4, 10), torch.randn(4, 3), torch.randn(4)
        >>> torch.allclose(reference.causal_conv1d(x, w, b, 1, "relu"),
        ...                fusedgru.causal_conv1d(x, w, b, activation="relu"), atol=1e-6)
        True
    """
    C, W = weight.shape
    S = (W - 1) * dilation
    if initial_state is None:
        xp = torch.nn.functional.pad(x, (S, 0))
    else:
        xp = torch.cat([initial_state, x], dim=2)
    y = torch.nn.functional.conv1d(xp, weight.unsqueeze(1), bias, dilation=dilation, groups=C)
    return _ACTIVATIONS[activation](y)


def causal_conv1d_backward(grad_y: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None,
                           initial_state: Tensor | None, dilation: int,
                           activation: str | None):
    """``fusedgru::causal_conv1d_bwd`` in torch ops (differentiable: its own autograd gives the
    second derivatives).

    Args:
        grad_y: ``[N, C, L]``, the gradient of the output.
        x, weight, bias, initial_state, dilation, activation: as given to :func:`causal_conv1d`.

    Returns:
        (grad_x ``[N, C, L]``, grad_weight ``[C, W]``, grad_bias ``[C]`` or None,
        grad_initial_state ``[N, C, (W-1)*dilation]`` or None).

    Example::

        >>> x, w = torch.randn(1, 2, 6), torch.randn(2, 3)
        >>> g_x, g_w, g_b, g_s = reference.causal_conv1d_backward(torch.ones(1, 2, 6), x, w,
        ...                                                       None, None, 1, None)
        >>> g_x.shape, g_w.shape, g_b, g_s
        (torch.Size([1, 2, 6]), torch.Size([2, 3]), None, None)
    """
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        leaves = [t if t.requires_grad else t.detach().requires_grad_()
                  for t in (x, weight) + tuple(t for t in (bias, initial_state) if t is not None)]
        it = iter(leaves[2:])
        b = next(it) if bias is not None else None
        s = next(it) if initial_state is not None else None
        y = causal_conv1d(leaves[0], leaves[1], b, dilation, activation, s)
        grads = torch.autograd.grad(y, leaves, grad_y, create_graph=create_graph)
    it = iter(grads[2:])
    return (grads[0], grads[1], next(it) if bias is not None else None,
            next(it) if initial_state is not None else None)


def ln_gru_layer(input: Tensor, hx: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                 ln_ih_weight: Tensor, ln_ih_bias: Tensor, ln_hh_weight: Tensor,
                 ln_hh_bias: Tensor, lengths: Tensor | None = None, reverse: bool = False,
                 eps: float = LAYER_NORM_EPS):
    """One layer-normalized GRU layer, as ``fusedgru::ln_gru_forward`` (without the saved
    activations): a_i = LN(W_ih x) g_i + b_i and a_h = LN(W_hh h) g_h + b_h over 3H values each,
    r = sigmoid(a_i,r + a_h,r), z = sigmoid(a_i,z + a_h,z), n = tanh(a_i,n + r a_h,n),
    h' = n + z (h - n).

    Args:
        input: ``[T, N, C]``; hx: ``[N, H]``.
        weight_ih: ``[3H, C]``; weight_hh: ``[3H, H]``.
        ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias: ``[3H]`` each (g_i, b_i, g_h, b_h).
        lengths: ``[N]`` valid lengths, or None; reverse: run from the end.
        eps: the LayerNorm epsilon.

    Returns:
        output ``[T, N, H]`` (zero past each length) and h_n ``[N, H]``.

    Example::

        >>> m = fusedgru.LayerNormGRU(3, 4)
        >>> x = torch.randn(5, 2, 3)
        >>> out, h_n = reference.ln_gru_layer(x, torch.zeros(2, 4), *m.parameters())
        >>> torch.allclose(out, m(x)[0], atol=1e-5)
        True
    """
    T, N, _ = input.shape
    H = hx.shape[1]
    ln = torch.nn.functional.layer_norm
    active = _active_mask(lengths, T, N, input)
    kept = _rows_of_their_own(_without_padding(input, active, lengths))
    a_i = ln(kept @ weight_ih.t(), (3 * H,), ln_ih_weight, ln_ih_bias, eps)
    prefix = _active_prefix(lengths, T)
    h = _rows_of_their_own(hx)
    outs = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        k = N if prefix is None else prefix[t]
        a_h = ln(h[:k] @ weight_hh.t(), (3 * H,), ln_hh_weight, ln_hh_bias, eps)
        _, _, _, h_new = gates(a_i[t, :k], a_h, h[:k])
        m = active[t, :k]
        outs[t] = _padded(torch.where(m, h_new, torch.zeros(()).to(h)), N)
        h = torch.cat([torch.where(m, h_new, h[:k]), h[k:]])
    return torch.stack(outs), h
