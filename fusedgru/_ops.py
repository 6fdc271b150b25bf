"""Python side of the compiled ops: typed wrappers, the fused-or-reference routing, fake (meta)
kernels for torch.compile and autograd.

The schemas live in csrc/registration.cpp, the kernels in csrc/cpu and csrc/cuda. Every module
of the package calls an op through its wrapper below (keyword flags, typed), never
``torch.ops.fusedgru.*`` itself, and decides between the fused ops and ``fusedgru.reference``
through :func:`fused_or_reference` alone. Shape legend: T time steps, N batch, C input
features, H hidden size.
"""

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

# Loading the compiled library (_C) registers the ops.
from . import _C, reference  # noqa: F401

# ---- the schemas, read from the registered ops ----


class _Schema:
    """The argument names of a registered ``fusedgru::<name>`` op, in schema order
    (csrc/registration.cpp), so that autograd formulas address the op's inputs by name instead
    of by position and argument counts come from the schema."""

    def __init__(self, name: str):
        self.qualname = f"fusedgru::{name}"
        schema = getattr(torch.ops.fusedgru, name).default._schema
        self.args = tuple(a.name for a in schema.arguments)
        tensor = torch._C.OptionalType(torch._C.TensorType.get())
        # Tensor and Tensor? arguments (what save_for_backward takes); the rest are flags.
        self.tensors = tuple(a.name for a in schema.arguments if a.type.isSubtypeOf(tensor))
        self.flags = tuple(n for n in self.args if n not in self.tensors)

    def bind(self, inputs: Iterable) -> dict:
        """The op's inputs (setup_context's ``inputs``) by argument name."""
        return dict(zip(self.args, inputs, strict=True))

    def needs_input_grad(self, ctx) -> dict[str, bool]:
        return dict(zip(self.args, ctx.needs_input_grad, strict=True))

    def grads(self, **grads: Tensor | None) -> tuple:
        """The tuple a backward returns: one entry per argument, None unless named."""
        unknown = set(grads) - set(self.args)
        assert not unknown, f"{self.qualname} has no argument {unknown}"
        return tuple(grads.get(name) for name in self.args)


_GRU_FORWARD = _Schema("gru_forward")
_GRU_BACKWARD = _Schema("gru_backward")
_GRU_FORWARD_BIDIRECTIONAL = _Schema("gru_forward_bidirectional")
_GRU_BACKWARD_BIDIRECTIONAL = _Schema("gru_backward_bidirectional")
_GRU_CELL = _Schema("gru_cell")
_LN_GRU_FORWARD = _Schema("ln_gru_forward")
_CONV_FWD = _Schema("causal_conv1d_fwd")
_CONV_BWD = _Schema("causal_conv1d_bwd")

# Widths of the saved activations per (t, n), mirrored from C++ so that the fake kernels can
# allocate the workspaces (torch.library.opcheck in tests/test_opcheck.py and test_ln_gru.py
# checks them against the real ops' outputs).
SAVED_GATES = 4  # r, z, n, W_hn h + b_hn per hidden unit: csrc/fusedgru.h, kSavedGates


def ln_gru_saved_width(H: int) -> int:
    """r, z, n [3H] | LN(W_hh h) [3H] | LN(W_ih x) [3H] | rstd_h, rstd_i: csrc/fusedgru.h,
    ln_gru_saved_width."""
    return 9 * H + 2


# The conv ops' `int activation` (csrc/causal_conv1d.h, enum Activation).
ACTIVATION_CODES = {None: 0, "silu": 1, "relu": 2}
_ACTIVATION_NAMES = {v: k for k, v in ACTIVATION_CODES.items()}


def activation_code(activation: str | None) -> int:
    """The conv ops' code of an activation name, or a ValueError naming the choices."""
    if activation not in ACTIVATION_CODES:
        raise ValueError(f"activation must be None, 'silu' or 'relu', got {activation!r}")
    return ACTIVATION_CODES[activation]


# ---- typed wrappers: one per op, flags by keyword ----

def below_autograd_ok() -> bool:
    """Whether op calls may dispatch below autograd: nothing could be recorded (grad mode off:
    inference, and the ops' own backward passes), and not while torch.compile traces (it
    records the op itself), under forward-mode AD or a torch.func transform (their dispatch
    must see the op). The ops' Python autograd kernel (torch.library.register_autograd below)
    would otherwise be entered only to pass the call on: ~10 us a call, more than a streaming
    step of a small GRU (benchmarks/NOTES.md). Not under torch.jit.trace either: the modules'
    lean inference paths call other ops than their general ones, and the trace's check traces
    again under no_grad, which must record the same graph."""
    return not (torch.is_grad_enabled() or torch.compiler.is_compiling()
                or torch.jit.is_tracing() or fwAD._current_level >= 0
                or torch._C._functorch.peek_interpreter_stack() is not None)


def plain_cpu_training(*tensors: Tensor) -> bool:
    """Whether a call is plain eager CPU training: ``tensors[0]`` (the input) on the CPU, grad
    mode on and one of ``tensors`` requiring grad, with nothing around it that would see which
    ops run: not torch.compile or torch.export (they trace), torch.jit.trace,
    torch.onnx.export, forward-mode AD, a torch.func transform (vmap has no batching rule for
    aten::gru) or CPU autocast (nn's ops would run their GEMMs in the autocast dtype, the fused
    path in fp32), and in float32 or float64 (bf16 and fp16 products on oneDNN's AMX kernels
    read past the rows of a view, csrc/gru_common.cpp aten_matmul, which the fused path copies
    first). Only there may a module hand a training call to nn's own ATen op (GRUCell's steps,
    a GRU's single step)."""
    return (tensors[0].is_cpu and torch.is_grad_enabled()
            and tensors[0].dtype in (torch.float32, torch.float64)
            and any(isinstance(t, Tensor) and t.requires_grad for t in tensors)
            and not (torch.compiler.is_compiling() or torch.jit.is_tracing() or onnx_exporting()
                     or fwAD._current_level >= 0
                     or torch._C._functorch.peek_interpreter_stack() is not None
                     or torch.is_autocast_enabled("cpu")))


def fx_leaf(module: torch.nn.Module, *args, **kwargs):
    """Under ``torch.fx.symbolic_trace`` (an argument is an FX Proxy): the module's call as one
    ``call_module`` node, the Proxy of its result; else None. FX's tracer keeps torch.nn's
    modules (nn.GRU, nn.GRUCell, nn.Conv1d) as such leaves by their namespace and traces into
    every other module, where the forward's checks of shapes would branch on proxies; ours are
    leaves too, so a model traces as it did with nn.GRU (FX passes, graph-mode tooling)."""
    # The tracer's own flag first: outside a trace (every other call, streaming steps
    # included) no argument is looked at. Where a torch lacks the flag, the arguments decide.
    if not getattr(torch.fx._symbolic_trace, "_is_fx_tracing_flag", True):
        return None
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.fx.Proxy):
            tracer = a.tracer
            name = tracer.path_of_module(module)
            if not name:  # the trace's root: FX traces into it, as it does into nn.GRU there
                return None
            return tracer.create_proxy("call_module", name, args, kwargs)
    return None


def onnx_exporting() -> bool:
    """Whether ``torch.onnx.export`` is tracing (the TorchScript-based exporter, which loads
    torch.onnx; it is not imported here, so a call that is not an export pays a dict lookup)."""
    if torch.compiler.is_compiling():
        return False
    onnx = sys.modules.get("torch.onnx")
    return onnx is not None and onnx.is_in_onnx_export()


_ONNX_OPSET = 9  # the first opset whose GRU operator nn.GRU's export uses (torch's symbolics)
_onnx_registered = False


def register_onnx_symbolic() -> None:
    """ONNX for the whole-GRU op ``fusedgru::gru``: the GRU operators torch's exporter writes for
    nn.GRU (``aten::gru``: one ONNX GRU per layer, gates reordered to z, r, h,
    linear_before_reset=1), by torch's own symbolic for it. Registered on the first export (the
    exporter looks symbolics up after tracing)."""
    global _onnx_registered
    if _onnx_registered:
        return
    from torch.onnx import register_custom_op_symbolic, symbolic_helper, symbolic_opset9

    @symbolic_helper.parse_args("v", "v", "v", "i", "i", "i", "i")
    def gru_symbolic(g, input, hx, params, has_biases, num_layers, bidirectional, batch_first):
        return symbolic_opset9._generic_rnn(
            g, "GRU", input, hx, symbolic_helper._unpack_list(params), has_biases, num_layers,
            0.0, False, bidirectional, batch_first)

    register_custom_op_symbolic("fusedgru::gru", gru_symbolic, _ONNX_OPSET)
    _onnx_registered = True


def _call(op, **kwargs):
    """``op(**kwargs)``, below autograd where :func:`below_autograd_ok`."""
    if not below_autograd_ok():
        return op(**kwargs)
    with torch._C._AutoDispatchBelowAutograd():
        return op(**kwargs)


def gru_forward(input: Tensor, hx: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                bias_ih: Tensor | None = None, bias_hh: Tensor | None = None, *,
                lengths: Tensor | None = None, reverse: bool = False,
                need_workspace: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """``fusedgru::gru_forward``: one GRU layer in one direction.

    input ``[T, N, C]`` (any strides), hx ``[N, H]``, weight_ih ``[3H, C]``, weight_hh
    ``[3H, H]``, biases ``[3H]`` or None, lengths ``[N]`` int64 on input's device or None.
    Returns output ``[T, N, H]``, h_n ``[N, H]`` and the workspace ``[T, N, SAVED_GATES * H]``
    that backward reads (``[0]`` without ``need_workspace``)."""
    return _call(
        torch.ops.fusedgru.gru_forward,
        input=input, hx=hx, weight_ih=weight_ih, weight_hh=weight_hh, bias_ih=bias_ih,
        bias_hh=bias_hh, lengths=lengths, reverse=reverse, need_workspace=need_workspace)


def gru_forward_bidirectional(
        input: Tensor, hx: Tensor, weights: Sequence[Tensor | None],
        reverse_weights: Sequence[Tensor | None], *, lengths: Tensor | None = None,
        need_workspace: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``fusedgru::gru_forward_bidirectional``: both directions of a GRU layer in one call.

    input ``[T, N, C]``, hx ``[2, N, H]``; weights and reverse_weights: each direction's
    ``(weight_ih, weight_hh[, bias_ih, bias_hh])`` as in :func:`gru_forward` (biases may be
    left out or None). Returns output ``[T, N, 2H]`` (forward | reverse, nn.GRU's layout), h_n
    ``[2, N, H]`` and each direction's workspace."""
    for name, w in (("weights", weights), ("reverse_weights", reverse_weights)):
        if len(w) not in (2, 4):
            raise ValueError(f"{name} must be (weight_ih, weight_hh) or (weight_ih, weight_hh, "
                             f"bias_ih, bias_hh), got {len(w)} tensors")
    w_ih, w_hh, b_ih, b_hh = (*weights, None, None)[:4]
    w_ih_r, w_hh_r, b_ih_r, b_hh_r = (*reverse_weights, None, None)[:4]
    return _call(
        torch.ops.fusedgru.gru_forward_bidirectional,
        input=input, hx=hx, weight_ih=w_ih, weight_hh=w_hh, bias_ih=b_ih, bias_hh=b_hh,
        weight_ih_reverse=w_ih_r, weight_hh_reverse=w_hh_r, bias_ih_reverse=b_ih_r,
        bias_hh_reverse=b_hh_r, lengths=lengths, need_workspace=need_workspace)


_GRU = torch.ops.fusedgru.gru.default


def gru(input: Tensor, hx: Tensor, params: Sequence[Tensor], has_biases: bool, num_layers: int,
        bidirectional: bool, batch_first: bool) -> tuple[Tensor, Tensor]:
    """``fusedgru::gru``: a whole GRU (nn.GRU's forward without dropout or lengths) in one call,
    composed in C++ of :func:`gru_forward` / :func:`gru_forward_bidirectional` per layer; below
    autograd on the CPU a single step of at most 8 rows runs in one kernel, layer by layer.

    input ``[T, N, C]`` (``[N, T, C]`` when batch_first) or unbatched ``[T, C]``; hx
    ``[L D, N, H]`` (``[L D, H]``); params: per layer and direction ``(weight_ih, weight_hh[,
    bias_ih, bias_hh])``, nn.GRU's ``_flat_weights`` order. Returns (output, h_n). Arguments
    are positional: it serves the streaming path, where a call's Python is the cost."""
    if not below_autograd_ok():
        return _GRU(input, hx, params, has_biases, num_layers, bidirectional, batch_first)
    with torch._C._AutoDispatchBelowAutograd():
        return _GRU(input, hx, params, has_biases, num_layers, bidirectional, batch_first)


def gru_backward(grad_output: Tensor, grad_h_n: Tensor, *, grad_workspace: Tensor | None = None,
                 input: Tensor, hx: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                 lengths: Tensor | None = None, output: Tensor, workspace: Tensor,
                 reverse: bool, has_bias: bool, need_input_grad: bool,
                 need_weight_grad: bool) -> tuple[Tensor, ...]:
    """``fusedgru::gru_backward``: the gradients of :func:`gru_forward` given those of its
    outputs (``grad_workspace`` only when differentiating twice). Returns (grad_input,
    grad_hx, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh); what was not asked
    for is an empty ``[0]``."""
    return _call(
        torch.ops.fusedgru.gru_backward,
        grad_output=grad_output, grad_h_n=grad_h_n, grad_workspace=grad_workspace, input=input,
        hx=hx, weight_ih=weight_ih, weight_hh=weight_hh, lengths=lengths, output=output,
        workspace=workspace, reverse=reverse, has_bias=has_bias,
        need_input_grad=need_input_grad, need_weight_grad=need_weight_grad)


def gru_backward_bidirectional(
        grad_output: Tensor, grad_h_n: Tensor, *, grad_workspaces: Sequence[Tensor | None],
        input: Tensor, hx: Tensor, weights: Sequence[Tensor], reverse_weights: Sequence[Tensor],
        lengths: Tensor | None = None, output: Tensor, workspaces: Sequence[Tensor],
        has_bias: bool, need_input_grad: bool, need_weight_grad: bool) -> tuple[Tensor, ...]:
    """``fusedgru::gru_backward_bidirectional``: the gradients of
    :func:`gru_forward_bidirectional` given those of its outputs (grad_output ``[T, N, 2H]``,
    grad_h_n ``[2, N, H]``; grad_workspaces per direction, only when differentiating twice).
    weights, reverse_weights: each direction's ``(weight_ih, weight_hh)``; workspaces: each
    direction's. Returns (grad_input, grad_hx ``[2, N, H]``, then each direction's
    grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh); what was not asked for is an
    empty ``[0]``."""
    return _call(
        torch.ops.fusedgru.gru_backward_bidirectional,
        grad_output=grad_output, grad_h_n=grad_h_n, grad_workspace=grad_workspaces[0],
        grad_workspace_reverse=grad_workspaces[1], input=input, hx=hx, weight_ih=weights[0],
        weight_hh=weights[1], weight_ih_reverse=reverse_weights[0],
        weight_hh_reverse=reverse_weights[1], lengths=lengths, output=output,
        workspace=workspaces[0], workspace_reverse=workspaces[1], has_bias=has_bias,
        need_input_grad=need_input_grad, need_weight_grad=need_weight_grad)


_GRU_CELL_OP = torch.ops.fusedgru.gru_cell.default


def gru_cell(input: Tensor, hx: Tensor, weight_ih: Tensor, weight_hh: Tensor,
             bias_ih: Tensor | None = None, bias_hh: Tensor | None = None) -> Tensor:
    """``fusedgru::gru_cell``: one GRU step, input ``[N, C]``, hx ``[N, H]`` -> h' ``[N, H]``.
    Arguments are passed on positionally, as :func:`gru`'s: it serves streaming steps, where a
    call's Python is the cost."""
    if not below_autograd_ok():
        return _GRU_CELL_OP(input, hx, weight_ih, weight_hh, bias_ih, bias_hh)
    with torch._C._AutoDispatchBelowAutograd():
        return _GRU_CELL_OP(input, hx, weight_ih, weight_hh, bias_ih, bias_hh)


def ln_gru_forward(input: Tensor, hx: Tensor, weight_ih: Tensor, weight_hh: Tensor,
                   ln_ih_weight: Tensor, ln_ih_bias: Tensor, ln_hh_weight: Tensor,
                   ln_hh_bias: Tensor, *, lengths: Tensor | None = None, reverse: bool = False,
                   eps: float, need_workspace: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """``fusedgru::ln_gru_forward``: one layer-normalized GRU layer in one direction (LN gains
    and biases ``[3H]``). Returns output ``[T, N, H]``, h_n ``[N, H]`` and the workspace
    ``[T, N, ln_gru_saved_width(H)]`` (``[0]`` without ``need_workspace``)."""
    return _call(
        torch.ops.fusedgru.ln_gru_forward,
        input=input, hx=hx, weight_ih=weight_ih, weight_hh=weight_hh, ln_ih_weight=ln_ih_weight,
        ln_ih_bias=ln_ih_bias, ln_hh_weight=ln_hh_weight, ln_hh_bias=ln_hh_bias, lengths=lengths,
        reverse=reverse, eps=eps, need_workspace=need_workspace)


def ln_gru_backward(grad_output: Tensor, grad_h_n: Tensor, *, input: Tensor, hx: Tensor,
                    weight_ih: Tensor, weight_hh: Tensor, ln_ih_weight: Tensor,
                    ln_hh_weight: Tensor, ln_hh_bias: Tensor, lengths: Tensor | None = None,
                    output: Tensor, workspace: Tensor, reverse: bool, need_input_grad: bool,
                    need_weight_grad: bool) -> tuple[Tensor, ...]:
    """``fusedgru::ln_gru_backward``: the gradients of :func:`ln_gru_forward`, in the order
    (input, hx, weight_ih, weight_hh, ln_ih_weight, ln_ih_bias, ln_hh_weight, ln_hh_bias)."""
    return _call(
        torch.ops.fusedgru.ln_gru_backward,
        grad_output=grad_output, grad_h_n=grad_h_n, input=input, hx=hx, weight_ih=weight_ih,
        weight_hh=weight_hh, ln_ih_weight=ln_ih_weight, ln_hh_weight=ln_hh_weight,
        ln_hh_bias=ln_hh_bias, lengths=lengths, output=output, workspace=workspace,
        reverse=reverse, need_input_grad=need_input_grad, need_weight_grad=need_weight_grad)


def causal_conv1d_fwd(x: Tensor, weight: Tensor, bias: Tensor | None = None, *,
                      initial_state: Tensor | None = None, dilation: int = 1,
                      activation: str | None = None) -> Tensor:
    """``fusedgru::causal_conv1d_fwd``: x ``[N, C, L]``, weight ``[C, W]``, bias ``[C]``,
    initial_state ``[N, C, (W-1)*dilation]`` -> y ``[N, C, L]`` in the layout of x."""
    return _call(
        torch.ops.fusedgru.causal_conv1d_fwd,
        x=x, weight=weight, bias=bias, initial_state=initial_state, dilation=dilation,
        activation=activation_code(activation))


def causal_conv1d_bwd(grad_y: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None = None, *,
                      initial_state: Tensor | None = None, dilation: int = 1,
                      activation: str | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``fusedgru::causal_conv1d_bwd``: (grad_x, grad_weight ``[C, W]``, grad_bias ``[C]`` or
    ``[0]``, grad_initial_state or ``[0]``)."""
    return _call(
        torch.ops.fusedgru.causal_conv1d_bwd,
        grad_y=grad_y, x=x, weight=weight, bias=bias, initial_state=initial_state,
        dilation=dilation, activation=activation_code(activation))


def causal_conv1d_update(x: Tensor, conv_state: Tensor, weight: Tensor,
                         bias: Tensor | None = None, *, dilation: int = 1,
                         activation: str | None = None) -> Tensor:
    """``fusedgru::causal_conv1d_update``: one streaming step, x ``[N, C]`` -> y ``[N, C]``;
    conv_state ``[N, C, (W-1)*dilation]`` is shifted by one and x appended, in place."""
    return torch.ops.fusedgru.causal_conv1d_update(
        x=x, conv_state=conv_state, weight=weight, bias=bias, dilation=dilation,
        activation=activation_code(activation))


# ---- fused or reference: the one place that chooses ----

def needs_reference(*tensors) -> bool:
    """Whether a call must run the torch-op references of ``fusedgru.reference`` instead of the
    fused ops: under forward-mode AD (a dual tensor among ``tensors``) and under the torch.func
    transforms that differentiate (grad, vjp, jacrev, jvp, jacfwd, hessian, also inside vmap).

    The fused ops carry reverse-mode formulas (torch.library.register_autograd) only. Forward
    AD through them would silently drop the tangent (an op whose inputs do not require grad
    skips its autograd node), and torch.func's grad transforms reject the generated autograd
    node (pytorch/pytorch#170834). The references support every transform exactly, at the cost
    of a Python loop over time steps. Plain vmap keeps the fused ops (a per-sample loop).
    Never true while torch.compile or torch.export trace (they support neither transform).
    Always true under ``torch.onnx.export``: the references are torch ops, which it exports
    (the conv as Pad and Conv, a GRUCell step as its matmuls; the multi-step GRUs decide before
    this: :func:`fusedgru.functional.gru` exports as nn.GRU, LayerNormGRU refuses). Always true
    for complex tensors, which nn.GRU and nn.GRUCell run on the CPU and the kernels do not."""
    if any(t is not None and t.is_complex() for t in tensors):
        return True
    if torch.compiler.is_compiling():
        return False
    if onnx_exporting():  # the references are torch ops, which the exporter knows
        return True
    if fwAD._current_level >= 0 and any(
            t is not None and fwAD.unpack_dual(t).tangent is not None for t in tensors):
        return True
    if torch._C._functorch.peek_interpreter_stack() is None:
        return False
    differentiating = (TransformType.Grad, TransformType.Jvp)
    return any(i.key() in differentiating for i in retrieve_all_functorch_interpreters())


_Fn = TypeVar("_Fn", bound=Callable)


def fused_or_reference(fused: _Fn, reference_fn: _Fn, *tensors: Tensor | None) -> _Fn:
    """The computation to run on ``tensors`` (a call's inputs and parameters): ``reference_fn``
    (written with differentiable torch ops, from ``fusedgru.reference``) where the fused ops
    cannot serve, see :func:`needs_reference`, else ``fused``. Both take the same arguments
    (or are tuples of functions that do, None where the reference has no counterpart).
    Every module decides through this function."""
    return reference_fn if needs_reference(*tensors) else fused


# ---- fake kernels and autograd of gru_forward / gru_backward ----

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


def _save_for_backward(ctx, schema: _Schema, a: dict, output, pick) -> None:
    """Save what a forward op's backward reads, ``pick(a, output)`` (a: the op's inputs by
    name). A forward run without its workspace (``need_workspace=False``: a graph captured with
    gradients off by torch.export or torch.jit.trace and trained later, or inputs batched by
    vmap, whose requires_grad reads False) saves its inputs instead, and
    :func:`_saved_for_backward` runs it again with the workspace: one more forward, the same
    gradients (nn.GRU's captured graphs train too)."""
    ctx.pick = pick
    if a["need_workspace"]:
        ctx.rerun = None
        ctx.save_for_backward(*pick(a, output))
    else:
        ctx.rerun = {n: a[n] for n in schema.flags} | {"need_workspace": True}
        ctx.save_for_backward(*(a[n] for n in schema.tensors))


def _saved_for_backward(ctx, schema: _Schema, op) -> tuple:
    """What :func:`_save_for_backward` picked, from the forward again where it saved inputs."""
    if ctx.rerun is None:
        return ctx.saved_tensors
    a = dict(zip(schema.tensors, ctx.saved_tensors, strict=True)) | ctx.rerun
    return ctx.pick(a, _call(op, **a))


def _gru_forward_setup_context(ctx, inputs, output):
    a = _GRU_FORWARD.bind(inputs)
    ctx.set_materialize_grads(False)
    _save_for_backward(ctx, _GRU_FORWARD, a, output, lambda a, o: (
        a["input"], a["hx"], a["weight_ih"], a["weight_hh"], a["lengths"], o[0], o[2]))
    ctx.reverse = a["reverse"]
    ctx.bias_present = {"bias_ih": a["bias_ih"] is not None, "bias_hh": a["bias_hh"] is not None}


_GRU_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def _gru_forward_backward(ctx, grad_output, grad_h_n, grad_workspace):
    input, hx, weight_ih, weight_hh, lengths, out, workspace = _saved_for_backward(
        ctx, _GRU_FORWARD, torch.ops.fusedgru.gru_forward)
    need = _GRU_FORWARD.needs_input_grad(ctx)
    if grad_output is None:
        grad_output = torch.zeros_like(out)
    if grad_h_n is None:
        grad_h_n = torch.zeros_like(hx)
    g_input, g_hx, g_w_ih, g_w_hh, g_b_ih, g_b_hh = gru_backward(
        grad_output, grad_h_n, grad_workspace=grad_workspace, input=input, hx=hx,
        weight_ih=weight_ih, weight_hh=weight_hh, lengths=lengths, output=out,
        workspace=workspace, reverse=ctx.reverse, has_bias=any(ctx.bias_present.values()),
        need_input_grad=need["input"], need_weight_grad=any(need[n] for n in _GRU_WEIGHTS))
    present = ctx.bias_present
    return _GRU_FORWARD.grads(
        input=g_input if need["input"] else None,
        hx=g_hx if need["hx"] else None,
        weight_ih=g_w_ih if need["weight_ih"] else None,
        weight_hh=g_w_hh if need["weight_hh"] else None,
        bias_ih=g_b_ih if need["bias_ih"] and present["bias_ih"] else None,
        bias_hh=g_b_hh if need["bias_hh"] and present["bias_hh"] else None)


torch.library.register_autograd(
    "fusedgru::gru_forward", _gru_forward_backward, setup_context=_gru_forward_setup_context)


# ---- gru_forward_bidirectional: its backward is gru_backward per direction ----

@torch.library.register_fake("fusedgru::gru_forward_bidirectional")
def _gru_forward_bidirectional_fake(input, hx, weight_ih, weight_hh, bias_ih, bias_hh,
                                    weight_ih_reverse, weight_hh_reverse, bias_ih_reverse,
                                    bias_hh_reverse, lengths, need_workspace):
    T, N, _ = input.shape
    H = weight_hh.shape[1]
    bm = _batch_major(input)

    def workspace():
        if need_workspace:
            return _empty_steps(input, bm, T, N, SAVED_GATES * H)
        return input.new_empty((0,))

    return (_empty_steps(input, bm, T, N, 2 * H), hx.new_empty((2, N, H)), workspace(),
            workspace())


# Each direction's arguments of gru_forward_bidirectional, in gru_forward's names.
_DIRECTION_ARGS = (
    {n: n for n in _GRU_WEIGHTS},
    {n: f"{n}_reverse" for n in _GRU_WEIGHTS},
)


def _gru_forward_bidirectional_setup_context(ctx, inputs, output):
    a = _GRU_FORWARD_BIDIRECTIONAL.bind(inputs)
    ctx.set_materialize_grads(False)
    _save_for_backward(ctx, _GRU_FORWARD_BIDIRECTIONAL, a, output, lambda a, o: (
        a["input"], a["hx"],
        *(a[names[w]] for names in _DIRECTION_ARGS for w in ("weight_ih", "weight_hh")),
        a["lengths"], o[0], o[2], o[3]))
    ctx.bias_present = [{b: a[names[b]] is not None for b in ("bias_ih", "bias_hh")}
                        for names in _DIRECTION_ARGS]


def _gru_forward_bidirectional_backward(ctx, grad_output, grad_h_n, grad_ws0, grad_ws1):
    input, hx, w_ih0, w_hh0, w_ih1, w_hh1, lengths, out, ws0, ws1 = _saved_for_backward(
        ctx, _GRU_FORWARD_BIDIRECTIONAL, torch.ops.fusedgru.gru_forward_bidirectional)
    need = _GRU_FORWARD_BIDIRECTIONAL.needs_input_grad(ctx)
    grads = gru_backward_bidirectional(
        grad_output if grad_output is not None else torch.zeros_like(out),
        grad_h_n if grad_h_n is not None else torch.zeros_like(hx),
        grad_workspaces=(grad_ws0, grad_ws1), input=input, hx=hx, weights=(w_ih0, w_hh0),
        reverse_weights=(w_ih1, w_hh1), lengths=lengths, output=out, workspaces=(ws0, ws1),
        has_bias=any(any(p.values()) for p in ctx.bias_present), need_input_grad=need["input"],
        need_weight_grad=any(need[names[n]] for names in _DIRECTION_ARGS for n in _GRU_WEIGHTS))
    g_input, g_hx = grads[:2]
    named = {}
    for d, names in enumerate(_DIRECTION_ARGS):
        for n, g in zip(_GRU_WEIGHTS, grads[2 + 4 * d:6 + 4 * d], strict=True):
            present = n.startswith("weight") or ctx.bias_present[d][n]
            named[names[n]] = g if need[names[n]] and present else None
    return _GRU_FORWARD_BIDIRECTIONAL.grads(
        input=g_input if need["input"] else None, hx=g_hx if need["hx"] else None, **named)


torch.library.register_autograd(
    "fusedgru::gru_forward_bidirectional", _gru_forward_bidirectional_backward,
    setup_context=_gru_forward_bidirectional_setup_context)


@torch.library.register_fake("fusedgru::gru_backward_bidirectional")
def _gru_backward_bidirectional_fake(grad_output, grad_h_n, grad_workspace, grad_workspace_reverse,
                                     input, hx, weight_ih, weight_hh, weight_ih_reverse,
                                     weight_hh_reverse, lengths, output, workspace,
                                     workspace_reverse, has_bias, need_input_grad,
                                     need_weight_grad):
    fwd = _gru_backward_fake(grad_output, grad_h_n[0], grad_workspace, input, hx[0], weight_ih,
                             weight_hh, lengths, output, workspace, False, has_bias,
                             need_input_grad, need_weight_grad)
    rev = _gru_backward_fake(grad_output, grad_h_n[1], grad_workspace_reverse, input, hx[1],
                             weight_ih_reverse, weight_hh_reverse, lengths, output,
                             workspace_reverse, True, has_bias, need_input_grad, need_weight_grad)
    return (fwd[0], hx.new_empty(hx.shape), *fwd[2:], *rev[2:])


# ---- autograd of the backward ops (double backward): differentiate the torch-op reference ----

def _save_tensors_and_flags(schema: _Schema, ctx, inputs) -> None:
    """Save a backward op's tensor arguments for its own backward, and keep its flags."""
    a = schema.bind(inputs)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*(a[n] for n in schema.tensors))
    ctx.flags = {n: a[n] for n in schema.flags}


def _reference_vjp(schema: _Schema, ctx, differentiable: Iterable[str],
                   reference_fn: Callable[[dict], tuple], grad_outputs) -> tuple:
    """Backward of a backward op: the vector-Jacobian product of its torch-op reference.

    differentiable: the names of the tensor arguments gradients may flow to;
    reference_fn(args) -> the op's outputs computed with differentiable torch ops, args being
    the saved tensor arguments by name."""
    args = dict(zip(schema.tensors, ctx.saved_tensors, strict=True))
    need = schema.needs_input_grad(ctx)
    leaves = [n for n in differentiable if args[n] is not None and need[n]]
    with torch.enable_grad():
        for n in leaves:
            args[n] = args[n].detach().requires_grad_()
        outs = reference_fn(args)
        pairs = [(o, g) for o, g in zip(outs, grad_outputs)
                 if o is not None and g is not None and g.numel() > 0 and o.requires_grad]
        if not pairs or not leaves:
            return schema.grads()
        grads = torch.autograd.grad([o for o, _ in pairs], [args[n] for n in leaves],
                                    [g for _, g in pairs], allow_unused=True)
    return schema.grads(**dict(zip(leaves, grads, strict=True)))


def _gru_backward_setup_context(ctx, inputs, output):
    _save_tensors_and_flags(_GRU_BACKWARD, ctx, inputs)


# The tensor arguments of gru_backward that gradients flow to: all but lengths (an index).
_GRU_BACKWARD_DIFFERENTIABLE = tuple(n for n in _GRU_BACKWARD.tensors if n != "lengths")


def _gru_backward_backward(ctx, *grad_outputs):
    flags = ctx.flags
    return _reference_vjp(
        _GRU_BACKWARD, ctx, _GRU_BACKWARD_DIFFERENTIABLE,
        lambda a: reference.gru_layer_backward(**a, reverse=flags["reverse"],
                                               has_bias=flags["has_bias"]),
        grad_outputs)


torch.library.register_autograd(
    "fusedgru::gru_backward", _gru_backward_backward, setup_context=_gru_backward_setup_context)


def _gru_backward_bidirectional_setup_context(ctx, inputs, output):
    _save_tensors_and_flags(_GRU_BACKWARD_BIDIRECTIONAL, ctx, inputs)


_GRU_BACKWARD_BIDIRECTIONAL_DIFFERENTIABLE = tuple(
    n for n in _GRU_BACKWARD_BIDIRECTIONAL.tensors if n != "lengths")


def _gru_backward_bidirectional_backward(ctx, *grad_outputs):
    return _reference_vjp(
        _GRU_BACKWARD_BIDIRECTIONAL, ctx, _GRU_BACKWARD_BIDIRECTIONAL_DIFFERENTIABLE,
        lambda a: reference.gru_layer_backward_bidirectional(**a,
                                                             has_bias=ctx.flags["has_bias"]),
        grad_outputs)


torch.library.register_autograd(
    "fusedgru::gru_backward_bidirectional", _gru_backward_bidirectional_backward,
    setup_context=_gru_backward_bidirectional_setup_context)


# ---- causal depthwise conv1d ----

def _conv_empty_like(x):
    """Mirror of conv_empty_like: channel-last output for a channel-last input, else (N, C, L)."""
    N, C, L = x.shape
    if x.stride(2) != 1 and x.stride(1) == 1:
        return x.new_empty((N, L, C)).transpose(1, 2)
    return x.new_empty((N, C, L))


def _check_same_device(x: Tensor, **others: Tensor | None) -> None:
    """The conv ops' device check (csrc/checks.h, FUSEDGRU_CHECK_SAME_DEVICE) in their fakes,
    which are also their Meta kernels: a call with a weight, bias or state left on the meta
    device dispatches there, and would return uninitialized memory on x's device."""
    for name, t in others.items():
        if t is not None and t.device != x.device:
            raise RuntimeError(f"{name} and x must be on the same device, got {t.device} and "
                               f"{x.device}")


@torch.library.register_fake("fusedgru::causal_conv1d_fwd")
def _causal_conv1d_fwd_fake(x, weight, bias, initial_state, dilation, activation):
    _check_same_device(x, weight=weight, bias=bias, initial_state=initial_state)
    return _conv_empty_like(x)


@torch.library.register_fake("fusedgru::causal_conv1d_bwd")
def _causal_conv1d_bwd_fake(grad_y, x, weight, bias, initial_state, dilation, activation):
    _check_same_device(x, grad_y=grad_y, weight=weight, bias=bias, initial_state=initial_state)
    N, C, L = x.shape
    S = (weight.shape[1] - 1) * dilation
    grad_init = x.new_empty((N, C, S)) if initial_state is not None else x.new_empty((0,))
    grad_bias = weight.new_empty((C,)) if bias is not None else weight.new_empty((0,))
    return _conv_empty_like(x), weight.new_empty(weight.shape), grad_bias, grad_init


@torch.library.register_fake("fusedgru::causal_conv1d_update")
def _causal_conv1d_update_fake(x, conv_state, weight, bias, dilation, activation):
    _check_same_device(x, conv_state=conv_state, weight=weight, bias=bias)
    return x.new_empty(x.shape)


def _conv_fwd_setup_context(ctx, inputs, output):
    a = _CONV_FWD.bind(inputs)
    ctx.save_for_backward(a["x"], a["weight"], a["bias"], a["initial_state"])
    ctx.dilation, ctx.activation = a["dilation"], _ACTIVATION_NAMES[a["activation"]]


def _conv_fwd_backward(ctx, grad_y):
    x, weight, bias, initial_state = ctx.saved_tensors
    g_x, g_w, g_b, g_s = causal_conv1d_bwd(grad_y, x, weight, bias, initial_state=initial_state,
                                           dilation=ctx.dilation, activation=ctx.activation)
    return _CONV_FWD.grads(x=g_x, weight=g_w, bias=g_b if bias is not None else None,
                           initial_state=g_s if initial_state is not None else None)


torch.library.register_autograd("fusedgru::causal_conv1d_fwd", _conv_fwd_backward,
                                setup_context=_conv_fwd_setup_context)


def _conv_bwd_setup_context(ctx, inputs, output):
    _save_tensors_and_flags(_CONV_BWD, ctx, inputs)


def _conv_bwd_backward(ctx, *grad_outputs):
    dilation, activation = ctx.flags["dilation"], _ACTIVATION_NAMES[ctx.flags["activation"]]
    return _reference_vjp(
        _CONV_BWD, ctx, _CONV_BWD.tensors,
        lambda a: reference.causal_conv1d_backward(**a, dilation=dilation, activation=activation),
        grad_outputs)


torch.library.register_autograd("fusedgru::causal_conv1d_bwd", _conv_bwd_backward,
                                setup_context=_conv_bwd_setup_context)


# ---- gru_cell: one step; backward recomputes the step's activations and reuses gru_backward ----

@torch.library.register_fake("fusedgru::gru_cell")
def _gru_cell_fake(input, hx, weight_ih, weight_hh, bias_ih, bias_hh):
    return hx.new_empty((input.shape[0], weight_hh.shape[1]))


def _gru_cell_setup_context(ctx, inputs, output):
    a = _GRU_CELL.bind(inputs)
    ctx.save_for_backward(*(a[n] for n in _GRU_CELL.tensors))


def _gru_cell_backward(ctx, grad):
    input, hx, weight_ih, weight_hh, bias_ih, bias_hh = ctx.saved_tensors
    x = input.unsqueeze(0)  # a sequence of one step
    out, _, workspace = gru_forward(x, hx, weight_ih, weight_hh, bias_ih, bias_hh,
                                    need_workspace=True)
    need = _GRU_CELL.needs_input_grad(ctx)
    g_x, g_hx, g_w_ih, g_w_hh, g_b_ih, g_b_hh = gru_backward(
        torch.zeros_like(out), grad, input=x, hx=hx, weight_ih=weight_ih, weight_hh=weight_hh,
        output=out, workspace=workspace, reverse=False,
        has_bias=bias_ih is not None or bias_hh is not None, need_input_grad=need["input"],
        need_weight_grad=any(need[n] for n in _GRU_WEIGHTS))
    return _GRU_CELL.grads(
        input=g_x[0] if need["input"] else None, hx=g_hx if need["hx"] else None,
        weight_ih=g_w_ih if need["weight_ih"] else None,
        weight_hh=g_w_hh if need["weight_hh"] else None,
        bias_ih=g_b_ih if need["bias_ih"] and bias_ih is not None else None,
        bias_hh=g_b_hh if need["bias_hh"] and bias_hh is not None else None)


torch.library.register_autograd("fusedgru::gru_cell", _gru_cell_backward,
                                setup_context=_gru_cell_setup_context)


# ---- layer-normalized GRU ----

@torch.library.register_fake("fusedgru::ln_gru_forward")
def _ln_gru_forward_fake(input, hx, weight_ih, weight_hh, ln_ih_weight, ln_ih_bias,
                         ln_hh_weight, ln_hh_bias, lengths, reverse, eps, need_workspace):
    T, N, _ = input.shape
    H = weight_hh.shape[1]
    bm = _batch_major(input)
    workspace = (_empty_steps(input, bm, T, N, ln_gru_saved_width(H)) if need_workspace
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


# ln_gru_forward's parameters: what ln_gru_backward returns gradients for, in its order.
_LN_GRU_PARAMS = ("weight_ih", "weight_hh", "ln_ih_weight", "ln_ih_bias", "ln_hh_weight",
                  "ln_hh_bias")


def _ln_gru_setup_context(ctx, inputs, output):
    a = _LN_GRU_FORWARD.bind(inputs)
    ctx.mark_non_differentiable(output[2])
    ctx.set_materialize_grads(False)
    _save_for_backward(ctx, _LN_GRU_FORWARD, a, output, lambda a, o: (
        a["input"], a["hx"], a["weight_ih"], a["weight_hh"], a["ln_ih_weight"],
        a["ln_hh_weight"], a["ln_hh_bias"], a["lengths"], o[0], o[2]))
    ctx.reverse = a["reverse"]


def _ln_gru_backward(ctx, grad_output, grad_h_n, _grad_workspace):
    if torch.is_grad_enabled():
        raise RuntimeError("LayerNormGRU does not support double backward yet "
                           "(fusedgru.GRU does)")
    input, hx, w_ih, w_hh, g_i, g_h, b_h, lengths, out, workspace = _saved_for_backward(
        ctx, _LN_GRU_FORWARD, torch.ops.fusedgru.ln_gru_forward)
    need = _LN_GRU_FORWARD.needs_input_grad(ctx)
    if grad_output is None:
        grad_output = torch.zeros_like(out)
    if grad_h_n is None:
        grad_h_n = torch.zeros_like(hx)
    grads = ln_gru_backward(
        grad_output, grad_h_n, input=input, hx=hx, weight_ih=w_ih, weight_hh=w_hh,
        ln_ih_weight=g_i, ln_hh_weight=g_h, ln_hh_bias=b_h, lengths=lengths, output=out,
        workspace=workspace, reverse=ctx.reverse, need_input_grad=need["input"],
        need_weight_grad=any(need[n] for n in _LN_GRU_PARAMS))
    names = ("input", "hx") + _LN_GRU_PARAMS
    return _LN_GRU_FORWARD.grads(**{n: g if need[n] else None
                                    for n, g in zip(names, grads, strict=True)})


torch.library.register_autograd("fusedgru::ln_gru_forward", _ln_gru_backward,
                                setup_context=_ln_gru_setup_context)
