"""Causal depthwise conv1d on fused kernels: functional forms and the CausalConv1d module.

Whole sequences (:func:`causal_conv1d`, with an optional initial state to continue a previous
chunk) and one streaming step at a time (:func:`causal_conv1d_update`, inference only).

Example::

    >>> conv = fusedgru.CausalConv1d(8, kernel_size=4, activation="silu")
    >>> conv(torch.randn(2, 8, 100)).shape
    torch.Size([2, 8, 100])
"""

import math

import torch
from torch import Tensor, nn

from . import _ops, reference
from ._ops import activation_code, fused_or_reference


def _weight_2d(weight: Tensor) -> Tensor:
    if weight.dim() == 3 and weight.shape[1] == 1:
        return weight.squeeze(1)
    if weight.dim() != 2:
        raise RuntimeError(
            f"weight must have shape (C, W) or (C, 1, W), got {tuple(weight.shape)}")
    return weight


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, dilation: int = 1,
                  activation: str | None = None, initial_state: Tensor | None = None,
                  return_final_state: bool = False):
    r"""Causal depthwise 1-D convolution.

    .. math::
        y[n, c, t] = \mathrm{act}\Big(b[c] + \sum_{k=0}^{W-1} w[c, k]\, x[n, c, t - (W-1-k)d]\Big)

    Args:
        x: ``(N, C, L)``, any strides; a channel-last view such as ``h.transpose(1, 2)`` of an
            ``(N, L, C)`` tensor is read in place and ``y`` comes back in the same layout.
        weight: ``(C, W)`` or ``(C, 1, W)`` (the ``nn.Conv1d(C, C, W, groups=C)`` weight), W >= 1.
        bias: ``(C,)`` or None.
        dilation: spacing d >= 1 between taps.
        activation: None, ``"silu"`` or ``"relu"``.
        initial_state: ``(N, C, (W-1)*d)`` inputs before t = 0, oldest first; zeros if None.
        return_final_state: also return the last ``(W-1)*d`` inputs ``(N, C, (W-1)*d)`` (taken
            from ``initial_state``/zeros when L is shorter), to continue the sequence.

    Returns:
        ``y (N, C, L)``, or ``(y, final_state)``.

    Example::

        >>> x = torch.randn(2, 4, 10)  # (N, C, L)
        >>> w, b = torch.randn(4, 3), torch.randn(4)  # width W = 3
        >>> y = fusedgru.causal_conv1d(x, w, b, activation="silu")
        >>> y.shape
        torch.Size([2, 4, 10])
        >>> # causal: the first 6 outputs depend on the first 6 inputs only
        >>> torch.allclose(y[..., :6], fusedgru.causal_conv1d(x[..., :6], w, b, activation="silu"))
        True
        >>> # a sequence in chunks: each continues from the state the previous one returns
        >>> y_a, state = fusedgru.causal_conv1d(x[..., :6], w, b, return_final_state=True)
        >>> y_b = fusedgru.causal_conv1d(x[..., 6:], w, b, initial_state=state)
        >>> torch.allclose(torch.cat([y_a, y_b], 2), fusedgru.causal_conv1d(x, w, b), atol=1e-6)
        True
    """
    weight = _weight_2d(weight)
    activation_code(activation)  # a bad name fails here, before the shape checks
    if x.dim() != 3:
        raise RuntimeError(f"x must have shape (N, C, L), got {tuple(x.shape)}")
    conv = fused_or_reference(_ops.causal_conv1d_fwd, reference.causal_conv1d, x, weight, bias,
                              initial_state)
    y = conv(x, weight, bias, initial_state=initial_state, dilation=dilation,
             activation=activation)
    if not return_final_state:
        return y
    S = (weight.shape[1] - 1) * dilation
    N, C, L = x.shape
    if L >= S:
        # A copy always: contiguous() would hand back x itself (or a view of it) when the slice
        # is contiguous already (L == S, or N = C = 1), and causal_conv1d_update would then
        # overwrite the caller's input.
        final = x[:, :, L - S:].clone(memory_format=torch.contiguous_format)
    else:
        history = initial_state if initial_state is not None else x.new_zeros((N, C, S))
        final = torch.cat([history[:, :, L:], x], dim=2)
    return y, final


def causal_conv1d_update(x: Tensor, conv_state: Tensor, weight: Tensor,
                         bias: Tensor | None = None, *, dilation: int = 1,
                         activation: str | None = None) -> Tensor:
    """One streaming step of :func:`causal_conv1d`.

    ``x (N, C)`` is the new time step; ``conv_state (N, C, (W-1)*d)`` holds the previous inputs,
    oldest first, and is shifted by one with ``x`` appended, in place. Returns ``y (N, C)``.
    Stepping through a sequence gives ``causal_conv1d`` of the whole of it up to rounding (the
    two kernels sum the taps in different orders: ~1 ulp), and the final ``conv_state`` equals
    its ``final_state`` exactly. Inference only: it has no gradient (train on chunks
    with ``causal_conv1d(..., initial_state=..., return_final_state=True)``).

    Args:
        x: ``(N, C)``, the new time step.
        conv_state: ``(N, C, (W-1)*d)``, the previous inputs, oldest first; updated in place
            (so it may not overlap itself, ``x`` or the weight).
        weight: ``(C, W)`` or ``(C, 1, W)``.
        bias: ``(C,)`` or None.
        dilation: spacing d >= 1 between taps.
        activation: None, ``"silu"`` or ``"relu"``.

    Returns:
        ``y (N, C)``.

    Raises:
        RuntimeError: when gradients are asked for (an input requires grad under grad mode).

    Example::

        >>> x, w = torch.randn(2, 4, 10), torch.randn(4, 3)
        >>> state = torch.zeros(2, 4, 2)  # (N, C, (W-1)*d)
        >>> with torch.no_grad():
        ...     ys = [fusedgru.causal_conv1d_update(x[..., t], state, w) for t in range(10)]
        >>> torch.allclose(torch.stack(ys, 2), fusedgru.causal_conv1d(x, w), atol=1e-6)
        True
        >>> torch.equal(state, x[..., 8:])  # the last (W-1)*d inputs
        True
    """
    weight = _weight_2d(weight)
    activation_code(activation)  # a bad name fails here, before the gradient check
    if torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, conv_state, weight, bias)):
        raise RuntimeError(
            "causal_conv1d_update updates conv_state in place and has no gradient; call it "
            "under torch.no_grad(), or train with causal_conv1d(..., initial_state=..., "
            "return_final_state=True)")
    return _ops.causal_conv1d_update(x, conv_state, weight, bias, dilation=dilation,
                                     activation=activation)


class CausalConv1d(nn.Module):
    r"""Causal depthwise conv1d layer on fused kernels: per channel c,
    :math:`y_t = \mathrm{act}(b_c + \sum_{k} w_{c,k}\, x_{t-(W-1-k)d})`, inputs before
    t = 0 from ``initial_state`` or zero.

    Parameters have the shapes of ``nn.Conv1d(C, C, W, groups=C, dilation=d)`` (``weight``
    ``(C, 1, W)``, ``bias`` ``(C,)``) and its initialization, so state dicts interchange. With
    ``channels_last=True`` it takes and returns ``(N, L, C)``, the layout between GRU layers;
    otherwise ``(N, C, L)``.

    Args:
        channels: C, the number of channels (in and out: depthwise)
        kernel_size: W >= 1, the number of taps
        dilation: d >= 1, the spacing between taps. Default: 1
        bias: If ``False``, no bias. Default: ``True``
        activation: None, ``"silu"`` or ``"relu"``, fused. Default: None
        channels_last: take and return ``(N, L, C)`` instead of ``(N, C, L)``.
            Default: ``False``
        device: where the parameters are created. Default: the current default device
        dtype: the parameters' dtype. Default: the default dtype

    Inputs: x, initial_state, return_final_state
        * **x**: :math:`(N, C, L)`, or :math:`(N, L, C)` with ``channels_last``
        * **initial_state**: :math:`(N, C, (W-1) d)`, the inputs before t = 0, oldest first;
          zeros if None
        * **return_final_state**: also return the last :math:`(W-1) d` inputs, to continue

    Outputs: y (and final_state)
        * **y**: the input's shape
        * **final_state**: :math:`(N, C, (W-1) d)`, with ``return_final_state=True``

    Attributes:
        weight: the learnable taps, of shape `(channels, 1, kernel_size)`
        bias: the learnable bias, of shape `(channels)`, or None

    Example::

        >>> conv = fusedgru.CausalConv1d(8, kernel_size=4, channels_last=True)
        >>> x = torch.randn(2, 50, 8)  # (N, L, C)
        >>> y = conv(x)
        >>> y.shape
        torch.Size([2, 50, 8])
        >>> state = conv.init_state(2)  # streaming, one step at a time
        >>> with torch.no_grad():
        ...     steps = [conv.step(x[:, t], state) for t in range(50)]
        >>> torch.allclose(torch.stack(steps, 1), y, atol=1e-6)
        True
    """

    def __init__(self, channels: int, kernel_size: int, dilation: int = 1, bias: bool = True,
                 activation: str | None = None, channels_last: bool = False, device=None,
                 dtype=None):
        super().__init__()
        if channels <= 0:
            raise ValueError(f"channels must be positive, got {channels}")
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        if dilation < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation}")
        activation_code(activation)
        self.channels, self.kernel_size, self.dilation = channels, kernel_size, dilation
        self.activation, self.channels_last = activation, channels_last
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty((channels, 1, kernel_size), **factory))
        self.bias = nn.Parameter(torch.empty(channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv1d's initialization (fan_in = kernel_size for a depthwise conv).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.kernel_size)
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def state_size(self) -> int:
        """Time steps of history the layer keeps: (kernel_size - 1) * dilation."""
        return (self.kernel_size - 1) * self.dilation

    def forward(self, x: Tensor, initial_state: Tensor | None = None,
                return_final_state: bool = False):
        """``y`` (the layout of ``x``), or ``(y, final_state)``: see the class docstring."""
        traced = _ops.fx_leaf(self, x, initial_state, return_final_state)
        if traced is not None:
            return traced
        if self.channels_last and x.dim() != 3:  # before the transpose, in the caller's terms
            raise RuntimeError(f"x must have shape (N, L, C) (channels_last), got "
                               f"{tuple(x.shape)}")
        xc = x.transpose(1, 2) if self.channels_last else x
        out = causal_conv1d(xc, self.weight, self.bias, dilation=self.dilation,
                            activation=self.activation, initial_state=initial_state,
                            return_final_state=return_final_state)
        if return_final_state:
            y, final = out
            return (y.transpose(1, 2) if self.channels_last else y), final
        return out.transpose(1, 2) if self.channels_last else out

    def init_state(self, batch_size: int) -> Tensor:
        """Zero streaming state (N, C, (W-1)*d) for :meth:`step`."""
        return self.weight.new_zeros((batch_size, self.channels, self.state_size))

    def step(self, x: Tensor, state: Tensor) -> Tensor:
        """One time step x (N, C) -> y (N, C); ``state`` is updated in place."""
        return causal_conv1d_update(x, state, self.weight, self.bias, dilation=self.dilation,
                                    activation=self.activation)

    def extra_repr(self) -> str:
        s = f"{self.channels}, kernel_size={self.kernel_size}"
        if self.dilation != 1:
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        if self.activation is not None:
            s += f", activation={self.activation!r}"
        if self.channels_last:
            s += ", channels_last=True"
        return s
