"""Pure-PyTorch references of the fused ops: the same functions, written with differentiable
torch operations. Tests compare the kernels against them, and the double backward of the GRU
differentiates ``gru_layer_backward`` (autograd of torch ops gives its exact derivative).

Shape legend: T time steps, N batch, C input features, H hidden size. Gate order (r, z, n).
"""

import torch
from torch import Tensor


def _active_mask(lengths: Tensor | None, T: int, N: int, like: Tensor) -> Tensor:
    """[T, N, 1] bool: row i is active at step t iff t < lengths[i]."""
    if lengths is None:
        return torch.ones((T, N, 1), dtype=torch.bool, device=like.device)
    t = torch.arange(T, device=like.device).unsqueeze(1)
    return (t < lengths.to(like.device).unsqueeze(0)).unsqueeze(2)


def gru_layer(input: Tensor, hx: Tensor, weight_ih: Tensor, weight_hh: Tensor,
              bias_ih: Tensor | None = None, bias_hh: Tensor | None = None,
              lengths: Tensor | None = None, reverse: bool = False):
    """One GRU layer in one direction, as ``fusedgru::gru_forward``.

    input [T, N, C], hx [N, H], weight_ih [3H, C], weight_hh [3H, H], biases [3H] or None,
    lengths [N] or None. Returns output [T, N, H] (zero past each length), h_n [N, H] and the
    saved activations [T, N, 4H] = (r, z, n, W_hn h + b_hn), zero where inactive.
    """
    T, N, _ = input.shape
    H = hx.shape[1]
    gi = torch.nn.functional.linear(input, weight_ih, bias_ih)
    active = _active_mask(lengths, T, N, input)
    h = hx
    outs, saved = [None] * T, [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        gh = torch.nn.functional.linear(h, weight_hh, bias_hh)
        i_r, i_z, i_n = gi[t].split(H, dim=1)
        h_r, h_z, h_n = gh.split(H, dim=1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        h_new = n + z * (h - n)
        m = active[t]
        h = torch.where(m, h_new, h)
        outs[t] = torch.where(m, h_new, torch.zeros_like(h_new))
        saved[t] = torch.where(m, torch.cat([r, z, n, h_n], dim=1), torch.zeros(()).to(h))
    return torch.stack(outs), h, torch.stack(saved)


def gru_layer_backward(grad_output: Tensor, grad_h_n: Tensor, grad_workspace: Tensor | None,
                       input: Tensor, hx: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                       lengths: Tensor | None, output: Tensor, workspace: Tensor, reverse: bool,
                       has_bias: bool):
    """``fusedgru::gru_backward`` in torch ops: the gradients of ``gru_layer`` given those of its
    outputs, computed from the saved activations exactly as the kernels do.

    Returns (grad_input, grad_hx, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh);
    the bias gradients are None without ``has_bias``.
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
    grad_w_ih = dgi_all.reshape(-1, 3 * H).t() @ input.reshape(-1, input.shape[2])
    grad_w_hh = dgh_all.reshape(-1, 3 * H).t() @ hprev.reshape(-1, H)
    grad_b_ih = dgi_all.sum((0, 1)) if has_bias else None
    grad_b_hh = dgh_all.sum((0, 1)) if has_bias else None
    return grad_input, dh, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


_ACTIVATIONS = {None: lambda v: v, "silu": torch.nn.functional.silu, "relu": torch.relu}


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, dilation: int = 1,
                  activation: str | None = None, initial_state: Tensor | None = None) -> Tensor:
    """Causal depthwise conv1d through F.conv1d, as ``fusedgru::causal_conv1d_fwd``.

    x [N, C, L], weight [C, W], bias [C] or None, initial_state [N, C, (W-1)*dilation] or None
    (zeros): the inputs before t = 0, oldest first.
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
    second derivatives). Returns (grad_x, grad_weight, grad_bias or None, grad_initial_state or
    None)."""
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
                 eps: float = 1e-5):
    """One layer-normalized GRU layer, as ``fusedgru::ln_gru_forward`` (without the saved
    activations): a_i = LN(W_ih x) g_i + b_i and a_h = LN(W_hh h) g_h + b_h over 3H values each,
    r = sigmoid(a_i,r + a_h,r), z = sigmoid(a_i,z + a_h,z), n = tanh(a_i,n + r a_h,n),
    h' = n + z (h - n). Returns output [T, N, H] (zero past each length) and h_n [N, H]."""
    T, N, _ = input.shape
    H = hx.shape[1]
    ln = torch.nn.functional.layer_norm
    a_i = ln(input @ weight_ih.t(), (3 * H,), ln_ih_weight, ln_ih_bias, eps)
    active = _active_mask(lengths, T, N, input)
    h = hx
    outs = [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        a_h = ln(h @ weight_hh.t(), (3 * H,), ln_hh_weight, ln_hh_bias, eps)
        i_r, i_z, i_n = a_i[t].split(H, dim=1)
        h_r, h_z, h_n = a_h.split(H, dim=1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        h_new = n + z * (h - n)
        h = torch.where(active[t], h_new, h)
        outs[t] = torch.where(active[t], h_new, torch.zeros_like(h_new))
    return torch.stack(outs), h
