"""Python side of the compiled ops: fake (meta) kernels for torch.compile and autograd.

The schemas live in csrc/registration.cpp, the kernels in csrc/cpu and csrc/cuda. Shape legend:
T time steps, N batch, C input features, H hidden size.
"""

import torch
from torch import Tensor

from . import _C  # noqa: F401  (loading the library registers the ops)

SAVED_GATES = 4  # r, z, n, W_hn h + b_hn per hidden unit (csrc/fusedgru.h: kSavedGates)


def _batch_major(x: Tensor) -> bool:
    """Mirror of the driver's layout choice: a [T, N, K] view of [N, T, K] storage."""
    return not x.is_contiguous() and x.transpose(0, 1).is_contiguous()


def _empty_steps(like: Tensor, batch_major: bool, T, N, K) -> Tensor:
    if batch_major:
        return like.new_empty((N, T, K)).transpose(0, 1)
    return like.new_empty((T, N, K))


@torch.library.register_fake("fusedgru::gru_forward")
def _gru_forward_fake(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, reverse,
                      need_workspace):
    T, N, _ = input.shape
    H = weight_hh.shape[1]
    bm = _batch_major(input)
    output = _empty_steps(input, bm, T, N, H)
    h_n = hx.new_empty((N, H))
    if need_workspace:
        workspace = _empty_steps(input, bm, T, N, SAVED_GATES * H)
    else:
        workspace = input.new_empty((0,))
    return output, h_n, workspace


@torch.library.register_fake("fusedgru::gru_backward")
def _gru_backward_fake(grad_output, grad_h_n, input, hx, weight_ih, weight_hh, lengths, output,
                       workspace, reverse, has_bias, need_input_grad, need_weight_grad):
    T, N, C = input.shape
    H = weight_hh.shape[1]
    empty = input.new_empty((0,))
    bm = _batch_major(input)
    grad_input = _empty_steps(input, bm, T, N, C) if need_input_grad else empty
    grad_hx = hx.new_empty((N, H))
    grad_w_ih = weight_ih.new_empty(weight_ih.shape) if need_weight_grad else empty
    grad_w_hh = weight_hh.new_empty(weight_hh.shape) if need_weight_grad else empty
    with_bias = need_weight_grad and has_bias
    grad_b_ih = input.new_empty((3 * H,)) if with_bias else empty
    grad_b_hh = input.new_empty((3 * H,)) if with_bias else empty
    return grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


def _gru_forward_setup_context(ctx, inputs, output):
    input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, reverse, _ = inputs
    out, _, workspace = output
    ctx.mark_non_differentiable(workspace)
    ctx.save_for_backward(input, hx, weight_ih, weight_hh, lengths, out, workspace)
    ctx.reverse = reverse
    ctx.has_bias = bias_ih is not None or bias_hh is not None
    ctx.bias_present = (bias_ih is not None, bias_hh is not None)


def _gru_forward_backward(ctx, grad_output, grad_h_n, _grad_workspace):
    input, hx, weight_ih, weight_hh, lengths, out, workspace = ctx.saved_tensors
    need = ctx.needs_input_grad
    need_weight = any(need[2:6])
    grads = torch.ops.fusedgru.gru_backward(
        grad_output, grad_h_n, input, hx, weight_ih, weight_hh, lengths, out, workspace,
        ctx.reverse, ctx.has_bias, need[0], need_weight)
    g_input, g_hx, g_w_ih, g_w_hh, g_b_ih, g_b_hh = grads
    return (
        g_input if need[0] else None,
        g_hx if need[1] else None,
        g_w_ih if need[2] else None,
        g_w_hh if need[3] else None,
        g_b_ih if need[4] and ctx.bias_present[0] else None,
        g_b_hh if need[5] and ctx.bias_present[1] else None,
        None, None, None,
    )


torch.library.register_autograd(
    "fusedgru::gru_forward", _gru_forward_backward, setup_context=_gru_forward_setup_context)
