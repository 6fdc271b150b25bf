"""Python side of the compiled ops: fake (meta) kernels for torch.compile and autograd.

The schemas live in csrc/registration.cpp, the kernels in csrc/cpu and csrc/cuda. Shape legend:
T time steps, N batch, C input features, H hidden size.
"""

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

from . import _C  # noqa: F401  (loading the library registers the ops)
from . import reference

SAVED_GATES = 4  # r, z, n, W_hn h + b_hn per hidden unit (csrc/fusedgru.h: kSavedGates)


def needs_reference(*tensors) -> bool:
    """Whether a call must run the torch-op references of ``fusedgru.reference`` instead of the
    fused ops: under forward-mode AD (a dual tensor among ``tensors``) and under the torch.func
    transforms that differentiate (grad, vjp, jacrev, jvp, jacfwd, hessian, also inside vmap).

    The fused ops carry reverse-mode formulas (torch.library.register_autograd) only. Forward
    AD through them would silently drop the tangent (an op whose inputs do not require grad
    skips its autograd node), and torch.func's grad transforms reject the generated autograd
    node (pytorch/pytorch#170834). The references support every transform exactly, at the cost
    of a Python loop over time steps. Plain vmap keeps the fused ops (a per-sample loop).
    Never true while torch.compile or torch.export trace (they support neither transform)."""
    if torch.compiler.is_compiling():
        return False
    if fwAD._current_level >= 0 and any(
            t is not None and fwAD.unpack_dual(t).tangent is not None for t in tensors):
        return True
    if torch._C._functorch.peek_interpreter_stack() is None:
        return False
    differentiating = (TransformType.Grad, TransformType.Jvp)
    return any(i.key() in differentiating for i in retrieve_all_functorch_interpreters())


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
def _gru_backward_fake(grad_output, grad_h_n, grad_workspace, input, hx, weight_ih, weight_hh,
                       lengths, output, workspace, reverse, has_bias, need_input_grad,
                       need_weight_grad):
    T, N, C = input.shape
    H = weight_hh.shape[1]

    def none():  # each gradient not asked for is its own [0] tensor, as in the kernels
        return input.new_empty((0,))

    bm = _batch_major(input)
    grad_input = _empty_steps(input, bm, T, N, C) if need_input_grad else none()
    grad_hx = hx.new_empty((N, H))
    grad_w_ih = weight_ih.new_empty(weight_ih.shape) if need_weight_grad else none()
    grad_w_hh = weight_hh.new_empty(weight_hh.shape) if need_weight_grad else none()
    with_bias = need_weight_grad and has_bias
    grad_b_ih = input.new_empty((3 * H,)) if with_bias else none()
    grad_b_hh = input.new_empty((3 * H,)) if with_bias else none()
    return grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh


# ---- autograd of gru_forward: the fused backward op ----

def _gru_forward_setup_context(ctx, inputs, output):
    input, hx, weight_ih, weight_hh, bias_ih, bias_hh, lengths, reverse, _ = inputs
    out, _, workspace = output
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(input, hx, weight_ih, weight_hh, lengths, out, workspace)
    ctx.reverse = reverse
    ctx.bias_present = (bias_ih is not None, bias_hh is not None)


def _gru_forward_backward(ctx, grad_output, grad_h_n, grad_workspace):
    input, hx, weight_ih, weight_hh, lengths, out, workspace = ctx.saved_tensors
    need = ctx.needs_input_grad
    if grad_output is None:
        grad_output = torch.zeros_like(out)
    if grad_h_n is None:
        grad_h_n = torch.zeros_like(hx)
    grads = torch.ops.fusedgru.gru_backward(
        grad_output, grad_h_n, grad_workspace, input, hx, weight_ih, weight_hh, lengths, out,
        workspace, ctx.reverse, any(ctx.bias_present), need[0], any(need[2:6]))
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


# ---- autograd of gru_backward (double backward): differentiate the torch-op reference ----

# Positions of gru_backward's tensor arguments that gradients flow to (lengths is an index).
_GRU_BACKWARD_DIFFERENTIABLE = (0, 1, 2, 3, 4, 5, 6, 8, 9)


def _gru_backward_setup_context(ctx, inputs, output):
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*inputs[:10])
    ctx.flags = inputs[10:]


def _reference_vjp(ctx, args, differentiable, reference_fn, grad_outputs, num_args):
    """Backward of a backward op: the vector-Jacobian product of its torch-op reference.

    args: the op's saved arguments; differentiable: positions gradients may flow to;
    reference_fn(args) -> the op's outputs computed with differentiable torch ops."""
    args = list(args)
    leaves = [i for i in differentiable if args[i] is not None and ctx.needs_input_grad[i]]
    result = [None] * num_args
    with torch.enable_grad():
        for i in leaves:
            args[i] = args[i].detach().requires_grad_()
        outs = reference_fn(args)
        pairs = [(o, g) for o, g in zip(outs, grad_outputs)
                 if o is not None and g is not None and g.numel() > 0 and o.requires_grad]
        if not pairs or not leaves:
            return tuple(result)
        grads = torch.autograd.grad([o for o, _ in pairs], [args[i] for i in leaves],
                                    [g for _, g in pairs], allow_unused=True)
    for i, g in zip(leaves, grads):
        result[i] = g
    return tuple(result)


def _gru_backward_backward(ctx, *grad_outputs):
    reverse, has_bias, _, _ = ctx.flags
    return _reference_vjp(
        ctx, ctx.saved_tensors, _GRU_BACKWARD_DIFFERENTIABLE,
        lambda a: reference.gru_layer_backward(*a, reverse, has_bias), grad_outputs, 14)


torch.library.register_autograd(
    "fusedgru::gru_backward", _gru_backward_backward, setup_context=_gru_backward_setup_context)


# ---- causal depthwise conv1d ----

def _conv_empty_like(x):
    """Mirror of conv_empty_like: channel-last output for a channel-last input, else (N, C, L)."""
    N, C, L = x.shape
    if x.stride(2) != 1 and x.stride(1) == 1:
        return x.new_empty((N, L, C)).transpose(1, 2)
    return x.new_empty((N, C, L))


@torch.library.register_fake("fusedgru::causal_conv1d_fwd")
def _causal_conv1d_fwd_fake(x, weight, bias, initial_state, dilation, activation):
    return _conv_empty_like(x)


@torch.library.register_fake("fusedgru::causal_conv1d_bwd")
def _causal_conv1d_bwd_fake(grad_y, x, weight, bias, initial_state, dilation, activation):
    N, C, L = x.shape
    S = (weight.shape[1] - 1) * dilation
    grad_init = x.new_empty((N, C, S)) if initial_state is not None else x.new_empty((0,))
    grad_bias = weight.new_empty((C,)) if bias is not None else weight.new_empty((0,))
    return _conv_empty_like(x), weight.new_empty(weight.shape), grad_bias, grad_init


@torch.library.register_fake("fusedgru::causal_conv1d_update")
def _causal_conv1d_update_fake(x, conv_state, weight, bias, dilation, activation):
    return x.new_empty(x.shape)


ACTIVATION_CODES = {None: 0, "silu": 1, "relu": 2}
_ACTIVATION_NAMES = {v: k for k, v in ACTIVATION_CODES.items()}


def _conv_fwd_setup_context(ctx, inputs, output):
    x, weight, bias, initial_state, dilation, activation = inputs
    ctx.save_for_backward(x, weight, bias, initial_state)
    ctx.dilation, ctx.activation = dilation, activation


def _conv_fwd_backward(ctx, grad_y):
    x, weight, bias, initial_state = ctx.saved_tensors
    g_x, g_w, g_b, g_s = torch.ops.fusedgru.causal_conv1d_bwd(
        grad_y, x, weight, bias, initial_state, ctx.dilation, ctx.activation)
    return (g_x, g_w, g_b if bias is not None else None,
            g_s if initial_state is not None else None, None, None)


torch.library.register_autograd("fusedgru::causal_conv1d_fwd", _conv_fwd_backward,
                                setup_context=_conv_fwd_setup_context)


def _conv_bwd_setup_context(ctx, inputs, output):
    grad_y, x, weight, bias, initial_state, dilation, activation = inputs
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(grad_y, x, weight, bias, initial_state)
    ctx.dilation, ctx.activation = dilation, activation


def _conv_bwd_backward(ctx, *grad_outputs):
    activation = _ACTIVATION_NAMES[ctx.activation]
    return _reference_vjp(
        ctx, ctx.saved_tensors, range(5),
        lambda a: reference.causal_conv1d_backward(*a, ctx.dilation, activation),
        grad_outputs, 7)


torch.library.register_autograd("fusedgru::causal_conv1d_bwd", _conv_bwd_backward,
                                setup_context=_conv_bwd_setup_context)


# ---- gru_cell: one step; backward recomputes the step's activations and reuses gru_backward ----

@torch.library.register_fake("fusedgru::gru_cell")
def _gru_cell_fake(input, hx, weight_ih, weight_hh, bias_ih, bias_hh):
    return hx.new_empty((input.shape[0], weight_hh.shape[1]))


def _gru_cell_setup_context(ctx, inputs, output):
    input, hx, weight_ih, weight_hh, bias_ih, bias_hh = inputs
    ctx.save_for_backward(input, hx, weight_ih, weight_hh, bias_ih, bias_hh)


def _gru_cell_backward(ctx, grad):
    input, hx, weight_ih, weight_hh, bias_ih, bias_hh = ctx.saved_tensors
    x = input.unsqueeze(0)
    out, _, workspace = torch.ops.fusedgru.gru_forward(x, hx, weight_ih, weight_hh, bias_ih,
                                                       bias_hh, None, False, True)
    need = ctx.needs_input_grad
    g_x, g_hx, g_w_ih, g_w_hh, g_b_ih, g_b_hh = torch.ops.fusedgru.gru_backward(
        torch.zeros_like(out), grad, None, x, hx, weight_ih, weight_hh, None, out, workspace,
        False, bias_ih is not None or bias_hh is not None, need[0], any(need[2:]))
    return (g_x[0] if need[0] else None, g_hx if need[1] else None,
            g_w_ih if need[2] else None, g_w_hh if need[3] else None,
            g_b_ih if need[4] and bias_ih is not None else None,
            g_b_hh if need[5] and bias_hh is not None else None)


torch.library.register_autograd("fusedgru::gru_cell", _gru_cell_backward,
                                setup_context=_gru_cell_setup_context)


# ---- layer-normalized GRU ----

@torch.library.register_fake("fusedgru::ln_gru_forward")
def _ln_gru_forward_fake(input, hx, weight_ih, weight_hh, ln_ih_weight, ln_ih_bias,
                         ln_hh_weight, ln_hh_bias, lengths, reverse, eps, need_workspace):
    T, N, _ = input.shape
    H = weight_hh.shape[1]
    bm = _batch_major(input)
    workspace = (_empty_steps(input, bm, T, N, 9 * H + 2) if need_workspace
                 else input.new_empty((0,)))
    return _empty_steps(input, bm, T, N, H), hx.new_empty((N, H)), workspace


@torch.library.register_fake("fusedgru::ln_gru_backward")
def _ln_gru_backward_fake(grad_output, grad_h_n, input, hx, weight_ih, weight_hh, ln_ih_weight,
                          ln_hh_weight, ln_hh_bias, lengths, output, workspace, reverse,
                          need_input_grad, need_weight_grad):
    T, N, C = input.shape
    H = weight_hh.shape[1]

    def none():
        return input.new_empty((0,))

    def param(t):
        return t.new_empty(t.shape) if need_weight_grad else none()

    grad_input = (_empty_steps(input, _batch_major(input), T, N, C) if need_input_grad
                  else none())
    return (grad_input, hx.new_empty((N, H)), param(weight_ih), param(weight_hh),
            param(ln_ih_weight), param(ln_ih_weight), param(ln_hh_weight), param(ln_hh_bias))


def _ln_gru_setup_context(ctx, inputs, output):
    (input, hx, weight_ih, weight_hh, ln_ih_weight, _, ln_hh_weight, ln_hh_bias, lengths,
     reverse, _, _) = inputs
    out, _, workspace = output
    ctx.mark_non_differentiable(workspace)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(input, hx, weight_ih, weight_hh, ln_ih_weight, ln_hh_weight,
                          ln_hh_bias, lengths, out, workspace)
    ctx.reverse = reverse


def _ln_gru_backward(ctx, grad_output, grad_h_n, _grad_workspace):
    if torch.is_grad_enabled():
        raise RuntimeError("LayerNormGRU does not support double backward yet "
                           "(fusedgru.GRU does)")
    input, hx, w_ih, w_hh, g_i, g_h, b_h, lengths, out, workspace = ctx.saved_tensors
    need = ctx.needs_input_grad
    if grad_output is None:
        grad_output = torch.zeros_like(out)
    if grad_h_n is None:
        grad_h_n = torch.zeros_like(hx)
    grads = torch.ops.fusedgru.ln_gru_backward(
        grad_output, grad_h_n, input, hx, w_ih, w_hh, g_i, g_h, b_h, lengths, out, workspace,
        ctx.reverse, need[0], any(need[2:8]))
    return tuple(g if n else None for g, n in zip(grads, need[:8])) + (None,) * 4


torch.library.register_autograd("fusedgru::ln_gru_forward", _ln_gru_backward,
                                setup_context=_ln_gru_setup_context)
