"""fusedgru.GRU and GRUCell (torch.nn.GRU's and GRUCell's interface, parameters and numerics on
fused kernels), LayerNormGRU, and convert / revert, which swap the stock modules for these and
back inside a model, sharing the parameters.

Example::

    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GRU(8, 16))
    >>> model = fusedgru.convert(model)
    >>> type(model[1])
    <class 'fusedgru.rnn.GRU'>
"""

import inspect
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence
from torch.nn.utils.weight_norm import WeightNorm

from . import _ops, reference
from ._ops import fused_or_reference
from .functional import (
    _C10_NAMES,
    _autocast,
    _check_devices_and_dtypes,
    autocast_enabled,
    gru,
    ln_gru,
    no_autocast,
)


def _check_batch_sizes(data: Tensor, batch_sizes: Tensor) -> Tensor:
    """A PackedSequence's batch_sizes checked as nn.GRU's packed path needs them (int64, its
    error; one dimension; non-negative and non-increasing, as pack_padded_sequence makes them), and
    its data cut to the sum(batch_sizes) rows nn.GRU reads (it ignores any more; fewer is an
    error). A hand-built PackedSequence can break each of these."""
    if batch_sizes.dtype != torch.int64:
        found = _C10_NAMES.get(batch_sizes.dtype, batch_sizes.dtype)
        raise RuntimeError(f"expected scalar type Long but found {found}")
    if batch_sizes.dim() != 1:
        raise RuntimeError(f"batch_sizes must have one dimension, got shape "
                           f"{tuple(batch_sizes.shape)}")
    if batch_sizes.numel() == 0:  # nn.GRU's own error (it reads batch_sizes[0])
        raise IndexError("index 0 is out of bounds for dimension 0 with size 0")
    sizes = batch_sizes.tolist()
    if sizes[-1] < 0 or any(a < b for a, b in zip(sizes, sizes[1:])):
        raise RuntimeError(f"batch_sizes must be non-negative and non-increasing (as "
                           f"pack_padded_sequence makes them), got {sizes}")
    total = sum(sizes)
    if data.shape[0] < total:
        raise RuntimeError(f"PackedSequence data has {data.shape[0]} rows, fewer than "
                           f"sum(batch_sizes) = {total}")
    return data[:total]


def _packed_to_padded(data: Tensor, batch_sizes: Tensor):
    """PackedSequence data [sum(lengths), C] -> padded [T, N, C], the packed rows' positions in the
    flattened [T*N] grid, and lengths [N] (sorted, non-increasing)."""
    T, N = batch_sizes.numel(), int(batch_sizes[0])
    mask = torch.arange(N).unsqueeze(0) < batch_sizes.unsqueeze(1)  # [T, N]
    rows = mask.reshape(-1).nonzero().squeeze(1).to(data.device)
    padded = data.new_zeros((T * N, data.shape[1])).index_copy(0, rows, data)
    return padded.view(T, N, -1), rows, mask.sum(0)


class _GRUInterface:
    """nn.GRU's forward contract over ``self._run``: 3-D (batch_first or not), unbatched 2-D or
    PackedSequence input, optional hx, nn.GRU's checks and messages, plus ``lengths``."""

    def forward(self, input, hx: Tensor | None = None,
                lengths: Tensor | Sequence[int] | None = None):
        """nn.GRU's forward; ``lengths`` (an extension: ``[N]`` ints in ``[0, T]``, a tensor or
        a list) runs row i over its first ``lengths[i]`` steps only: outputs past them are zero
        and ``h_n`` is the state at each row's last valid step, as with a PackedSequence, but on
        the padded batch directly. Its shape and dtype are always checked, its values when they
        are on the host; on CUDA the kernels clamp them into ``[0, T]`` (no host sync), see
        :func:`fusedgru.gru`."""
        # lengths only where given: the node then also runs on nn.GRU (fusedgru.revert)
        traced = _ops.fx_leaf(self, input, hx, **({} if lengths is None else {"lengths": lengths}))
        if traced is not None:
            return traced
        D = 2 if self.bidirectional else 1
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("lengths cannot be given with a PackedSequence input")
            data, batch_sizes, sorted_indices, unsorted_indices = input
            data = _check_batch_sizes(data, batch_sizes)
            if hx is None:
                hx = data.new_zeros((self.num_layers * D, int(batch_sizes[0]), self.hidden_size))
            else:
                hx = self.permute_hidden(hx, sorted_indices)
            self.check_forward_args(data, hx, batch_sizes)
            padded, rows, lengths = _packed_to_padded(data, batch_sizes)
            out, h_n = self._run(padded, hx, batch_first=False, lengths=lengths)
            out_data = out.reshape(-1, out.shape[-1]).index_select(0, rows)
            packed = PackedSequence(out_data, batch_sizes, sorted_indices, unsorted_indices)
            return packed, self.permute_hidden(h_n, unsorted_indices)

        if input.dim() not in (2, 3):
            raise ValueError(f"GRU: Expected input to be 2D or 3D, got {input.dim()}D instead")
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
            if hx is not None:
                if hx.dim() != 2:
                    raise RuntimeError(
                        "For unbatched 2-D input, hx should also be 2-D but got "
                        f"{hx.dim()}-D tensor")
                hx = hx.unsqueeze(1)
        elif hx is not None and hx.dim() != 3:
            raise RuntimeError(
                f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")
        if hx is None:
            hx = input.new_zeros((self.num_layers * D, input.shape[batch_dim], self.hidden_size))
        self.check_forward_args(input, hx, None)
        if input.shape[0 if not self.batch_first else 1] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        # lengths is checked in functional._layers, which every entry point goes through.
        output, h_n = self._run(input, hx, batch_first=self.batch_first, lengths=lengths)
        if not is_batched:
            output = output.squeeze(batch_dim)
            h_n = h_n.squeeze(1)
        return output, h_n

    def check_input(self, input: Tensor, batch_sizes: Tensor | None) -> None:
        # nn.RNNBase compares against the cached _flat_weights; compare against the live weights.
        if input.dtype != self.weight_ih_l0.dtype and not autocast_enabled(input.device.type):
            w = self.weight_ih_l0.dtype
            raise ValueError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype ({w}). "
                f"Convert input: input.to({w}), or convert model: model.to({input.dtype})")
        expected_dim = 2 if batch_sizes is not None else 3
        if input.dim() != expected_dim:
            raise RuntimeError(f"input must have {expected_dim} dimensions, got {input.dim()}")
        if self.input_size != input.size(-1):
            raise RuntimeError(
                "input.size(-1) must be equal to input_size. "
                f"Expected {self.input_size}, got {input.size(-1)}")


class GRU(_GRUInterface, nn.RNNBase):
    r"""Drop-in replacement for :class:`torch.nn.GRU` running fused CPU/CUDA kernels.

    Applies a multi-layer gated recurrent unit (GRU) RNN to an input sequence. For each layer,
    direction and time step (gate order r, z, n, as in ``nn.GRU``):

    .. math::
        r_t = \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z_t = \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t = \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})) \\
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    Same constructor, parameters (names, shapes, initialization, ``state_dict``), inputs,
    outputs and errors as ``torch.nn.GRU``, so an ``nn.GRU``'s state dict loads as is (and
    :func:`fusedgru.convert` swaps the modules of a model in place). Beyond ``nn.GRU``: the
    ``lengths`` keyword, double backward, backward in eval mode, ``torch.compile(fullgraph=True)``
    and ``torch.export``.

    Args:
        input_size: The number of expected features in the input `x`
        hidden_size: The number of features in the hidden state `h`
        num_layers: Number of recurrent layers, each taking the previous one's output.
            Default: 1
        bias: If ``False``, the layers use no bias weights `b_ih` and `b_hh`. Default: ``True``
        batch_first: If ``True``, the input and output tensors are `(batch, seq, feature)`
            instead of `(seq, batch, feature)` (not the hidden states). Default: ``False``
        dropout: If non-zero, dropout with this probability on the outputs of each layer but
            the last, in training mode. Default: 0
        bidirectional: If ``True``, a bidirectional GRU. Default: ``False``
        device: where the parameters are created (any device ``nn.GRU`` takes, ``"meta"``
            included). Default: the current default device
        dtype: the parameters' dtype. Default: the default dtype

    Inputs: input, h_0, lengths
        * **input**: tensor of shape :math:`(L, H_{in})` for unbatched input,
          :math:`(L, N, H_{in})` when ``batch_first=False`` or :math:`(N, L, H_{in})` when
          ``batch_first=True``: the input sequence, any strides. It may also be a packed
          variable length sequence (:func:`torch.nn.utils.rnn.pack_padded_sequence`).
        * **h_0**: tensor of shape :math:`(D * \text{num\_layers}, H_{out})` or
          :math:`(D * \text{num\_layers}, N, H_{out})`: the initial hidden state. Defaults to
          zeros if not provided.
        * **lengths** (an extension of ``nn.GRU``; the third argument): :math:`(N,)` integers in
          :math:`[0, L]`, a tensor or a list. Row i runs its first ``lengths[i]`` steps only,
          as with a PackedSequence but on the padded batch directly: outputs past a length are
          zero and ``h_n`` is each row's state at its last valid step (``h_0`` for a length of
          0). Its shape and dtype are always checked, its values when they are on the host; a
          CUDA tensor's values are not read (no host sync): the kernels clamp them into
          :math:`[0, L]`.

        where

        .. math::
            \begin{aligned}
                N ={} & \text{batch size} \\
                L ={} & \text{sequence length} \\
                D ={} & 2 \text{ if bidirectional=True otherwise } 1 \\
                H_{in} ={} & \text{input\_size} \\
                H_{out} ={} & \text{hidden\_size}
            \end{aligned}

    Outputs: output, h_n
        * **output**: tensor of shape :math:`(L, D * H_{out})` for unbatched input,
          :math:`(L, N, D * H_{out})` when ``batch_first=False`` or :math:`(N, L, D * H_{out})`
          when ``batch_first=True``: the last layer's :math:`h_t` for each t (both directions
          concatenated). A :class:`torch.nn.utils.rnn.PackedSequence` for a packed input.
        * **h_n**: tensor of shape :math:`(D * \text{num\_layers}, H_{out})` or
          :math:`(D * \text{num\_layers}, N, H_{out})`: the final hidden state of each layer
          and direction.

    Attributes:
        weight_ih_l[k]: the learnable input-hidden weights of the k-th layer
            (W_ir|W_iz|W_in), of shape `(3*hidden_size, input_size)` for `k = 0`, otherwise
            `(3*hidden_size, D*hidden_size)`
        weight_hh_l[k]: the learnable hidden-hidden weights of the k-th layer
            (W_hr|W_hz|W_hn), of shape `(3*hidden_size, hidden_size)`
        bias_ih_l[k]: the learnable input-hidden bias of the k-th layer (b_ir|b_iz|b_in), of
            shape `(3*hidden_size)`
        bias_hh_l[k]: the learnable hidden-hidden bias of the k-th layer (b_hr|b_hz|b_hn), of
            shape `(3*hidden_size)`

        All initialized from :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})`, :math:`k =
        1 / \text{hidden\_size}`, as in ``nn.GRU``; the backward direction's carry a
        ``_reverse`` suffix.

    Example::

        >>> rnn = fusedgru.GRU(10, 20, 2)
        >>> input = torch.randn(5, 3, 10)
        >>> h0 = torch.randn(2, 3, 20)
        >>> output, hn = rnn(input, h0)
        >>> output.shape, hn.shape
        (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]))
        >>> ref = torch.nn.GRU(10, 20, 2)
        >>> ref.load_state_dict(rnn.state_dict())
        <All keys matched successfully>
        >>> torch.allclose(ref(input, h0)[0], output, atol=1e-5)
        True
        >>> # right-padded rows of lengths 5, 2 and 0, without packing
        >>> output, hn = rnn(input, lengths=[5, 2, 0])
        >>> output[2:, 1].abs().max().item()
        0.0
    """

    def __init__(self, *args, **kwargs) -> None:
        # As nn.GRU: the arguments go to nn.RNNBase as given, so positional ones land where they
        # land there (the eighth is proj_size, then device and dtype) and every error is its.
        # A positional proj_size other than 0 raises what the keyword raises (nn.GRU would
        # build a GRU with a projection that its forward then rejects).
        positional_proj = args[7] if len(args) > 7 else 0
        if "proj_size" in kwargs or (type(positional_proj) is int and positional_proj != 0):
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)

    def _documented_init(self, input_size: int, hidden_size: int, num_layers: int = 1,
                         bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                         bidirectional: bool = False, device=None, dtype=None) -> None:
        """nn.GRU's documented signature, which help() and inspect show for __init__."""

    __init__.__signature__ = inspect.signature(_documented_init)
    del _documented_init

    def flatten_parameters(self) -> None:
        """No-op: the fused kernels read each weight where it is (nn.GRU packs them for cuDNN)."""

    def forward(self, input, hx: Tensor | None = None,
                lengths: Tensor | Sequence[int] | None = None):
        if lengths is None and hx is not None and not _ops.onnx_exporting():
            lean = self._lean_forward(input, hx)
            if lean is not None:
                return lean
        return super().forward(input, hx, lengths=lengths)

    forward.__doc__ = _GRUInterface.forward.__doc__

    def _lean_forward(self, input, hx):
        """The common inference call (streaming: one call per step carrying ``hx``) straight to
        the CPU kernels: plain CPU tensors, ``hx`` given, no gradient wanted (grad mode off), no
        ``lengths``, no dropout to apply (nor an invalid one to refuse), not under
        torch.compile, torch.jit.trace, autocast, forward-mode AD or a torch.func transform
        (:func:`fusedgru._ops.below_autograd_ok`). It returns None
        unless every one of nn.GRU's checks would pass, and the full path then runs and raises
        nn.GRU's error, so errors are the same; what it skips is the full path's general
        machinery (PackedSequence, lengths, autocast, autograd, the reference fallback)."""
        if (not _ops.below_autograd_ok() or type(input) is not Tensor or type(hx) is not Tensor
                or not input.is_cpu or not hx.is_cpu or torch.is_autocast_enabled("cpu")
                or (self.training and self.dropout != 0 and self.num_layers > 1)):
            return None
        D = 2 if self.bidirectional else 1
        H, L, C = self.hidden_size, self.num_layers, self.input_size
        dtype = input.dtype
        if input.dim() == 3:
            T, N, c = input.shape
            if self.batch_first:
                T, N = N, T
            hx_shape = (L * D, N, H)
        elif input.dim() == 2:
            T, c = input.shape
            hx_shape = (L * D, H)
        else:
            return None
        if T == 0 or c != C or hx.dtype != dtype or hx.shape != hx_shape or dtype.is_complex:
            return None
        weights = self._weights()
        per = 4 if self.bias else 2
        first = ((3 * H, C), (3 * H, H), (3 * H,), (3 * H,))
        later = ((3 * H, D * H),) + first[1:]
        for i, p in enumerate(weights):
            if (type(p) is not nn.Parameter and type(p) is not Tensor) or p.dtype != dtype \
                    or not p.is_cpu or p.shape != (first if i < per * D else later)[i % per]:
                return None
        return _ops.gru(input, hx, weights, per == 4, L, D == 2, self.batch_first)

    def _weights(self) -> list[Tensor]:
        # The live weights (not the cached _flat_weights) so torch.func.functional_call and
        # weight reassignment are always seen: from _parameters directly (what nn.Module's
        # __getattr__ returns for them, at a fifth of its cost per name), through getattr when
        # one is not there (a parametrization makes it a property of the class).
        params = self._parameters
        weights = [params.get(name) for name in self._flat_weights_names]
        if any(w is None for w in weights) or type(self).__getattr__ is not nn.Module.__getattr__:
            weights = [getattr(self, name) for name in self._flat_weights_names]
        return weights

    def _run(self, input, hx, batch_first, lengths=None):
        weights = self._weights()
        if (lengths is None and input.shape[1 if batch_first else 0] == 1
                and _ops.plain_cpu_training(input, hx, *weights)):
            # nn.GRU's own call (_ops.plain_cpu_training: where nothing else sees which ops
            # run): one step has nothing to fuse across time, and the fused ops' backward of
            # one step ran at 0.4-0.8x its speed (2-core Xeon, H = 64 to 1024: per-call work,
            # and at H = 1024 page faults on two fresh weight gradients per step from one node;
            # benchmarks/NOTES.md).
            return tuple(torch.gru(input, hx, weights, self.bias, self.num_layers, self.dropout,
                                   self.training, self.bidirectional, batch_first))
        return gru(input, hx, weights, self.bias, self.num_layers, self.dropout,
                   self.training, self.bidirectional, batch_first, lengths=lengths)


class LayerNormGRU(_GRUInterface, nn.RNNBase):
    r"""GRU with layer normalization of the gate pre-activations (Ba et al. 2016), the input and
    the recurrent contributions normalized separately over their 3H values, fused into the
    kernels (functional form: :func:`fusedgru.ln_gru`):

    .. math::
        a^i_t = \mathrm{LN}(W_{ih} x_t)\,\gamma_i + \beta_i, \quad
        a^h_t = \mathrm{LN}(W_{hh} h_{t-1})\,\gamma_h + \beta_h \\
        r_t = \sigma(a^i_r + a^h_r), \quad z_t = \sigma(a^i_z + a^h_z), \quad
        n_t = \tanh(a^i_n + r_t \odot a^h_n), \quad h_t = (1 - z_t) n_t + z_t h_{t-1}

    The LayerNorm biases take the place of nn.GRU's ``b_ih``/``b_hh``. Parameters per layer and
    direction: ``weight_ih_l{k}``, ``weight_hh_l{k}`` (nn.GRU's shapes and initialization),
    ``ln_ih_weight_l{k}``, ``ln_ih_bias_l{k}``, ``ln_hh_weight_l{k}``, ``ln_hh_bias_l{k}``
    (``[3H]``, initialized to ones and zeros); ``_reverse`` suffixes for the backward direction.
    Single backward only (no double backward).

    Args:
        input_size: The number of expected features in the input `x`
        hidden_size: The number of features in the hidden state `h`
        num_layers: Number of recurrent layers. Default: 1
        batch_first: If ``True``, input and output are `(batch, seq, feature)`.
            Default: ``False``
        dropout: dropout probability on the outputs of each layer but the last, in training
            mode. Default: 0
        bidirectional: If ``True``, a bidirectional GRU. Default: ``False``
        eps: the LayerNorm epsilon, > 0. Default: 1e-5
        device: where the parameters are created. Default: the current default device
        dtype: the parameters' dtype. Default: the default dtype

    Inputs: input, h_0, lengths
        As :class:`fusedgru.GRU`: **input** :math:`(L, H_{in})`, :math:`(L, N, H_{in})` or
        :math:`(N, L, H_{in})` (``batch_first``), or a PackedSequence; **h_0**
        :math:`(D * \text{num\_layers}[, N], H_{out})`, zeros if not given; the keyword
        **lengths** :math:`(N,)`.

    Outputs: output, h_n
        As :class:`fusedgru.GRU`: **output** :math:`(L[, N], D * H_{out})` (or
        :math:`(N, L, D * H_{out})`), **h_n** :math:`(D * \text{num\_layers}[, N], H_{out})`.

    Example::

        >>> rnn = fusedgru.LayerNormGRU(10, 20, num_layers=2, batch_first=True)
        >>> output, hn = rnn(torch.randn(3, 5, 10))
        >>> output.shape, hn.shape
        (torch.Size([3, 5, 20]), torch.Size([2, 3, 20]))
        >>> rnn.ln_ih_weight_l0.shape  # LayerNorm gains of layer 0's input side: (3H,)
        torch.Size([60])
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 eps: float = reference.LAYER_NORM_EPS, device=None, dtype=None) -> None:
        super().__init__("GRU", input_size, hidden_size, num_layers, False, batch_first,
                         dropout, bidirectional, 0, device, dtype)
        if eps <= 0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.eps = eps
        names = []
        for layer in range(num_layers):
            for suffix in (["", "_reverse"] if bidirectional else [""]):
                for kind, value in (("ln_ih_weight", 1.0), ("ln_ih_bias", 0.0),
                                    ("ln_hh_weight", 1.0), ("ln_hh_bias", 0.0)):
                    name = f"{kind}_l{layer}{suffix}"
                    setattr(self, name, nn.Parameter(torch.full(
                        (3 * hidden_size,), value, device=device, dtype=dtype)))
                    names.append(name)
        self._ln_names = names

    def reset_parameters(self) -> None:
        super().reset_parameters()  # nn.GRU's uniform init of the weights
        for name in getattr(self, "_ln_names", []):
            nn.init.constant_(getattr(self, name), 1.0 if "weight" in name else 0.0)

    def flatten_parameters(self) -> None:
        """No-op: the fused kernels read each weight where it is."""

    def extra_repr(self) -> str:
        return super().extra_repr().replace(", bias=False", "") + (
            f", eps={self.eps}" if self.eps != reference.LAYER_NORM_EPS else "")

    def _run(self, input, hx, batch_first, lengths=None):
        params = []
        D = 2 if self.bidirectional else 1
        for layer in range(self.num_layers):
            for d in range(D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                params += [getattr(self, f"{n}{sfx}") for n in (
                    "weight_ih", "weight_hh", "ln_ih_weight", "ln_ih_bias", "ln_hh_weight",
                    "ln_hh_bias")]
        return ln_gru(input, hx, params, self.num_layers, self.dropout, self.training,
                      self.bidirectional, batch_first, lengths=lengths, eps=self.eps)


class GRUCell(nn.RNNCellBase):
    r"""Drop-in replacement for :class:`torch.nn.GRUCell` (same parameters, initialization,
    inputs, outputs and errors) on the fused ``fusedgru::gru_cell`` op: one launch per step on
    CUDA for batches up to 32, and on the CPU, up to 8 rows, one parallel pass with no GEMM call
    (in float32 under torch's bf16 matmul precision, ``torch.backends.mkldnn.matmul.
    fp32_precision = "bf16"``, ATen's GEMMs instead where ATen would round a product of that
    shape, so that it rounds as nn.GRUCell's does).
    In plain eager float32/float64 training on the CPU a step is ``torch.gru_cell``,
    nn.GRUCell's own (the fused one-step forward and backward ran slower, README); elsewhere
    in training, and on CUDA, it runs one step of
    ``fusedgru::gru_forward``, which saves what backward needs. In float32 on CUDA, beyond 32
    rows and in training, a step is ``torch.gru_cell``, nn.GRUCell's own arithmetic: its GEMMs
    follow the matmul TF32 flag, where the fused GRU ops
    follow the cuDNN RNN flag as nn.GRU does (PyTorch's defaults differ: TF32 for RNNs, strict for
    matmuls); the one-launch kernel up to 32 rows is strict fp32 under any flags.

    .. math::
        r = \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}), \quad
        z = \sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}) \\
        n = \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn})), \quad
        h' = (1 - z) \odot n + z \odot h

    Args:
        input_size: The number of expected features in the input `x`
        hidden_size: The number of features in the hidden state `h`
        bias: If ``False``, the cell uses no bias weights `b_ih` and `b_hh`. Default: ``True``
        device: where the parameters are created. Default: the current default device
        dtype: the parameters' dtype. Default: the default dtype

    Inputs: input, hidden
        * **input**: tensor of shape :math:`(N, H_{in})` or :math:`(H_{in})`: the input
        * **hidden**: tensor of shape :math:`(N, H_{out})` or :math:`(H_{out})`: the hidden
          state. Defaults to zeros if not provided.

        where N is the batch size, :math:`H_{in}` = input_size, :math:`H_{out}` = hidden_size.

    Outputs: h'
        * **h'**: tensor of shape :math:`(N, H_{out})` or :math:`(H_{out})`: the next hidden
          state

    Attributes:
        weight_ih: the learnable input-hidden weights (W_ir|W_iz|W_in), of shape
            `(3*hidden_size, input_size)`
        weight_hh: the learnable hidden-hidden weights (W_hr|W_hz|W_hn), of shape
            `(3*hidden_size, hidden_size)`
        bias_ih: the learnable input-hidden bias, of shape `(3*hidden_size)`
        bias_hh: the learnable hidden-hidden bias, of shape `(3*hidden_size)`

    Example::

        >>> cell = fusedgru.GRUCell(10, 20)
        >>> x = torch.randn(6, 3, 10)  # (time_steps, batch, input_size)
        >>> h = torch.zeros(3, 20)
        >>> with torch.no_grad():
        ...     for t in range(6):
        ...         h = cell(x[t], h)
        >>> h.shape
        torch.Size([3, 20])
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=3, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        traced = _ops.fx_leaf(self, input, hx)
        if traced is not None:
            return traced
        if input.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(f"GRUCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            hx = input.new_zeros((input.shape[0], self.hidden_size))
        elif not is_batched:
            hx = hx.unsqueeze(0)
        w_ih, w_hh = self.weight_ih, self.weight_hh
        b_ih, b_hh = (self.bias_ih, self.bias_hh) if self.bias else (None, None)
        for position, name, w in ((3, "w_ih", w_ih), (4, "w_hh", w_hh)):
            if not isinstance(w, Tensor):  # torch.gru_cell's argument parsing, as nn.GRUCell's
                raise TypeError(f"gru_cell(): argument '{name}' (position {position}) must be "
                                f"Tensor, not {type(w).__name__}")
        # A bias set to None is no bias, as in nn.GRUCell (torch.gru_cell's are optional).
        params = [w_ih, w_hh, *(b for b in (b_ih, b_hh) if b is not None)]
        # ATen's check_rnn_cell_forward_* checks: the sizes the weights have (they may differ
        # from the constructor's under functional_call or after reassignment), its wording;
        # size(), not shape[], for its IndexError on a 1-D hx.
        input_size, hidden_size = params[0].size(1), params[1].size(1)
        if input.size(1) != input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} "
                               f"expected {input_size}")
        if hx.size(0) != input.size(0):
            raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden0 batch "
                               f"size {hx.size(0)}")
        if hx.size(1) != hidden_size:
            raise RuntimeError(f"hidden0 has inconsistent hidden_size: got {hx.size(1)}, "
                               f"expected {hidden_size}")
        if _ops.plain_cpu_training(input, hx, *params):
            # nn.GRUCell's own step (_ops.plain_cpu_training: where nothing else sees which
            # ops run). One step of gru_forward and its backward ran at 0.25-0.76x its speed
            # (2-core Xeon, 1 or 8 rows, H = 256 or 1024): the sequence ops' per-call work, and
            # two fresh weight gradients per step from one node, which glibc gives back to the
            # OS and faults in again (benchmarks/NOTES.md). fusedgru.GRU trains whole
            # sequences fused.
            out = torch.gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh)
            return out if is_batched else out.squeeze(0)
        if w_ih.numel() > 0 and not _ops.onnx_exporting() and self._lean_ok(input, hx, params):
            out = _ops.gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh)
            return out if is_batched else out.squeeze(0)
        # Under autocast, nn.GRUCell's h' takes hx's dtype (see functional._autocast).
        input, hx, params = _autocast(input, hx, params)
        _check_devices_and_dtypes(input, hx, params)
        cast = iter(params)
        w_ih, w_hh = next(cast), next(cast)
        b_ih, b_hh = (None if b is None else next(cast) for b in (b_ih, b_hh))
        if w_ih.numel() == 0:  # input_size or hidden_size 0: ATen's cell, as nn.GRUCell's
            step = torch.gru_cell
        else:
            step = fused_or_reference(_fused_cell_step, _reference_cell_step, input, hx, *params)
        with no_autocast(input.device.type):  # cast already; the references must not recast
            out = step(input, hx, w_ih, w_hh, b_ih, b_hh)
        return out if is_batched else out.squeeze(0)

    @staticmethod
    def _lean_ok(input: Tensor, hx: Tensor, params: Sequence[Tensor]) -> bool:
        """Whether the step may go straight to the op below autograd (the inference step on
        the CPU, as GRU._lean_forward): grad mode off and no transform or trace
        (:func:`fusedgru._ops.below_autograd_ok`, which also rules out the references), no
        autocast, plain CPU tensors of one dtype, so every device and dtype check of the full
        path would pass and none of its casts apply."""
        if (not _ops.below_autograd_ok() or type(input) is not Tensor or type(hx) is not Tensor
                or not input.is_cpu or not hx.is_cpu or hx.dtype != input.dtype
                or input.dtype.is_complex or torch.is_autocast_enabled("cpu")):
            return False
        dtype = input.dtype
        return all((type(p) is nn.Parameter or type(p) is Tensor) and p.is_cpu
                   and p.dtype == dtype for p in params)


# Rows up to which GRUCell's CUDA forward is one strict-fp32 launch (kCellMaxBatch,
# csrc/cuda/gru_cell.cuh); beyond, the op runs the GRU layer's GEMM path.
CUDA_CELL_MAX_BATCH = 32


def _fused_cell_step(input, hx, w_ih, w_hh, b_ih, b_hh):
    # Under torch.jit.trace one op whatever the grad mode: its check traces again under
    # no_grad and must record the same graph (gru_cell's backward recomputes the step).
    needs_grad = torch.is_grad_enabled() and not torch.jit.is_tracing() and any(
        t is not None and t.requires_grad for t in (input, hx, w_ih, w_hh, b_ih, b_hh))
    if input.is_cuda and input.dtype == torch.float32 and (
            needs_grad or input.shape[0] > CUDA_CELL_MAX_BATCH):
        # nn.GRUCell's GEMMs follow the matmul TF32 flag; the GRU ops' follow the RNN flag.
        return torch.gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh)
    if needs_grad:
        # Training: one step of gru_forward saves the activations its backward needs
        # (gru_cell's backward would recompute the step).
        _, h_n, _ = _ops.gru_forward(input.unsqueeze(0), hx, w_ih, w_hh, b_ih, b_hh,
                                     need_workspace=True)
        return h_n
    return _ops.gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh)


def _reference_cell_step(input, hx, w_ih, w_hh, b_ih, b_hh):
    _, h_n, _ = reference.gru_layer(input.unsqueeze(0), hx, w_ih, w_hh, b_ih, b_hh)
    return h_n


# Per-module hook registries (nn.Module attributes) whose entries a replacement would drop.
_HOOK_KINDS = {
    "_forward_pre_hooks": "forward pre-hooks",
    "_forward_hooks": "forward hooks",
    "_backward_pre_hooks": "backward pre-hooks",
    "_backward_hooks": "backward hooks",
    "_state_dict_pre_hooks": "state_dict pre-hooks",
    "_state_dict_hooks": "state_dict hooks",
    "_load_state_dict_pre_hooks": "load_state_dict pre-hooks",
    "_load_state_dict_post_hooks": "load_state_dict post-hooks",
}


def _why_not_replaceable(module: nn.Module, stock: tuple[type, ...]) -> str | None:
    """Why swapping ``module`` for its counterpart would change what the model computes, or
    None when the swap is faithful: the counterpart shares the parameters and copies the
    constructor arguments and the training flag, nothing else."""
    if parametrize.is_parametrized(module):
        names = ", ".join(module.parametrizations.keys())
        return (f"it has parametrizations on {names} (torch.nn.utils.parametrize, e.g. "
                f"weight_norm): those weights are recomputed on every call, and the replacement "
                f"would hold plain parameters instead")
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, WeightNorm):  # the legacy torch.nn.utils.weight_norm
            return (f"it has torch.nn.utils.weight_norm on {hook.name} (a forward pre-hook "
                    f"that recomputes {hook.name} on every call), which the replacement would "
                    f"drop")
    for attr, kind in _HOOK_KINDS.items():
        hooks = getattr(module, attr, None)
        if hooks:
            return (f"it has {len(hooks)} {kind} ({', '.join(map(_hook_name, hooks.values()))}), "
                    f"which the replacement would drop")
    if type(module) not in stock:
        base = next(t for t in stock if isinstance(module, t))
        return (f"its class {type(module).__qualname__} subclasses {base.__module__}."
                f"{base.__qualname__}: its own methods (forward, ...) and attributes would be "
                f"lost")
    # What an instance can carry beyond its class (accelerate's hooks set `forward` on the
    # instance); the replacement is a fresh instance of the counterpart class.
    methods = [k for k, v in vars(module).items()
               if not k.startswith("_") and callable(v)
               and not isinstance(v, (nn.Module, Tensor)) and hasattr(type(module), k)]
    if methods:
        return (f"{', '.join(methods)} set on the instance (in place of its class's), which "
                f"the replacement would not have")
    extra = {"buffers": list(module._buffers),
             "parameters": [k for k, v in module._parameters.items()  # bias=False: None
                            if v is not None and k not in _weight_names(module)],
             "submodules": list(module._modules)}
    extra = {kind: names for kind, names in extra.items() if names}
    if extra:
        listed = "; ".join(f"{kind} {', '.join(names)}" for kind, names in extra.items())
        return (f"it holds {listed} beyond the stock module's, which the replacement would not "
                f"have (state_dict keys and parameters() would change)")
    return None


def _weight_names(module: nn.Module) -> list[str]:
    """The parameter names of an nn.GRU / nn.GRUCell (or ours) of this configuration."""
    if isinstance(module, nn.RNNCellBase):
        return ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if module.bias else [])
    return list(module._flat_weights_names)


def _carry_weights(old: nn.Module, new: nn.Module) -> None:
    """Give ``new`` (built on the meta device) ``old``'s weight objects. A weight that is a plain
    tensor (nn.GRU runs with one, e.g. after ``del m.weight_hh_l0; m.weight_hh_l0 = t``) stays
    a plain attribute, as it was."""
    for name in _weight_names(old):
        value = getattr(old, name)
        if value is not None and not isinstance(value, nn.Parameter):
            delattr(new, name)
        setattr(new, name, value)


def _carry_attributes(old: nn.Module, new: nn.Module) -> None:
    """Give ``new`` the public attributes a user set on ``old`` (``gru.tag = ...``) that a fresh
    module does not have: they are the user's data, which code around the model may read."""
    for name, value in vars(old).items():
        if not name.startswith("_") and name not in vars(new):
            setattr(new, name, value)


def _hook_name(hook) -> str:
    return getattr(hook, "__qualname__", type(hook).__qualname__)


def _replace(model: nn.Module, kinds: tuple[type, ...], swap: Callable[[nn.Module], nn.Module],
             strict: bool, action: str) -> nn.Module:
    """Apply swap to model itself, or to every submodule that is an instance of kinds: only to
    those the swap reproduces (exactly one of kinds, no hooks, no parametrizations); for the
    others raise before replacing anything (strict) or warn and leave them. A module found at
    several places is swapped once and the one replacement put at all of them, so sharing
    (tied encoders, a layer reused in a loop) is kept."""
    if isinstance(model, torch.jit.ScriptModule):
        message = (f"fusedgru.{action}: a TorchScript module cannot be changed, so nothing was "
                   f"replaced; {action} the eager model, then trace or export it")
        if strict:
            raise TypeError(message + f" (or call {action}(..., strict=False) to pass it through)")
        warnings.warn(message, stacklevel=3)
        return model
    # (parent or None for the model itself, attribute name, module, path in model)
    sites: list[tuple[nn.Module | None, str, nn.Module, str]] = []
    if isinstance(model, kinds):
        sites.append((None, "", model, ""))
    else:
        for parent_path, parent in model.named_modules():
            # parent._modules, not named_children(): that skips a second name for the same child.
            for name, child in parent._modules.items():
                if isinstance(child, kinds):
                    sites.append((parent, name, child,
                                  f"{parent_path}.{name}" if parent_path else name))
    problems: dict[int, str] = {}  # id(module) -> why it stays, at its first path
    for _, _, module, path in sites:
        if id(module) not in problems:
            reason = _why_not_replaceable(module, kinds)
            if reason is not None:
                where = repr(path) if path else "the model itself"
                problems[id(module)] = (f"cannot replace {where} ({type(module).__qualname__}) "
                                        f"without changing what it computes: {reason}")
    if problems and strict:
        raise ValueError(f"fusedgru.{action}: " + "; ".join(problems.values())
                         + f". Remove that, or call {action}(..., strict=False) to leave such "
                           "modules as they are")
    for message in problems.values():
        warnings.warn(f"fusedgru.{action}: {message}; left as it is (strict=False)",
                      stacklevel=3)
    replaced: dict[int, nn.Module] = {}  # id(original) -> its one replacement
    for parent, name, module, _ in sites:
        if id(module) in problems:
            continue
        if id(module) not in replaced:
            replaced[id(module)] = swap(module)
        if parent is None:
            return replaced[id(module)]
        setattr(parent, name, replaced[id(module)])
    return model


def convert(model: nn.Module, *, strict: bool = True) -> nn.Module:
    """Replace every ``torch.nn.GRU`` (``nn.GRUCell``) in ``model``, the model itself included, by
    a :class:`fusedgru.GRU` (:class:`fusedgru.GRUCell`) that shares its parameter objects, so
    weights, device, dtype, ``requires_grad`` and optimizer state carry over; returns the model.
    A module referenced at several places becomes one replacement referenced at all of them.

    Only what the replacement reproduces exactly is replaced. A module that is an instance of a
    subclass of ``nn.GRU`` / ``nn.GRUCell`` (its own ``forward`` or attributes), that carries
    hooks (forward, forward pre-, backward, state_dict; also the legacy
    ``torch.nn.utils.weight_norm``), parametrizations (``torch.nn.utils.parametrize``,
    ``torch.nn.utils.parametrizations.weight_norm``), a ``forward`` set on the instance, or
    buffers, parameters or submodules beyond the stock module's would silently lose them. With
    ``strict=True`` (the default) such modules raise a ``ValueError`` naming each one's path in
    ``model`` and the reason, before anything is replaced; with ``strict=False`` they are left as
    they are, each with a ``UserWarning`` saying so, and the rest is converted.

    Args:
        model: an ``nn.Module`` (an ``nn.GRU`` / ``nn.GRUCell`` itself, or any model holding
            them), changed in place.
        strict: raise on a module that cannot be replaced faithfully (``True``, the default),
            or leave it, with a warning (``False``). Keyword only.

    Returns:
        ``model`` with its GRUs replaced; the replacement itself when ``model`` is an
        ``nn.GRU`` / ``nn.GRUCell``.

    Raises:
        ValueError: with ``strict=True``, for a module that cannot be replaced faithfully,
            naming its path and the reason.
        TypeError: with ``strict=True``, for a TorchScript module (it cannot be changed).

    Example::

        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GRU(8, 16))
        >>> w = model[1].weight_hh_l0
        >>> model = fusedgru.convert(model)
        >>> type(model[1]).__module__, model[1].weight_hh_l0 is w
        ('fusedgru.rnn', True)
    """

    def swap(gru_module):
        if isinstance(gru_module, nn.GRUCell):
            cell = GRUCell(gru_module.input_size, gru_module.hidden_size, gru_module.bias,
                           device="meta")
            _carry_weights(gru_module, cell)
            _carry_attributes(gru_module, cell)
            return cell.train(gru_module.training)
        with warnings.catch_warnings():  # nn.GRU already warned about its own arguments
            warnings.simplefilter("ignore")
            new = GRU(gru_module.input_size, gru_module.hidden_size, gru_module.num_layers,
                      gru_module.bias, gru_module.batch_first, gru_module.dropout,
                      gru_module.bidirectional, device="meta")
        _carry_weights(gru_module, new)
        _carry_attributes(gru_module, new)
        new._init_flat_weights()
        new.train(gru_module.training)
        return new

    return _replace(model, (nn.GRU, nn.GRUCell), swap, strict, "convert")


def revert(model: nn.Module, *, strict: bool = True) -> nn.Module:
    """The inverse of :func:`convert`: replace every :class:`fusedgru.GRU` (:class:`GRUCell`) in
    ``model`` by a ``torch.nn.GRU`` (``nn.GRUCell``) sharing its parameter objects, for what
    needs the stock modules (``torch.jit.script``, the TorchScript-based ONNX exporter, loading
    without fusedgru installed); returns the model. :class:`LayerNormGRU` has no stock
    counterpart and stays. Subclasses, hooks, parametrizations and shared modules are handled
    as in :func:`convert` (``strict``).

    Args:
        model: an ``nn.Module`` (a fusedgru ``GRU`` / ``GRUCell`` itself, or a model holding
            them), changed in place.
        strict: raise on a module that cannot be replaced faithfully (``True``, the default),
            or leave it, with a warning (``False``). Keyword only.

    Returns:
        ``model`` with the stock modules back; the replacement itself when ``model`` is a
        fusedgru ``GRU`` / ``GRUCell``.

    Raises:
        ValueError: with ``strict=True``, for a module that cannot be replaced faithfully.

    Example::

        >>> rnn = fusedgru.revert(fusedgru.GRU(8, 16))
        >>> type(rnn)
        <class 'torch.nn.modules.rnn.GRU'>
    """

    def swap(module):
        if isinstance(module, GRUCell):
            new = nn.GRUCell(module.input_size, module.hidden_size, module.bias, device="meta")
            _carry_weights(module, new)
            _carry_attributes(module, new)
            return new.train(module.training)
        new = nn.GRU(module.input_size, module.hidden_size, module.num_layers, module.bias,
                     module.batch_first, module.dropout, module.bidirectional, device="meta")
        _carry_weights(module, new)
        _carry_attributes(module, new)
        new._init_flat_weights()
        new.flatten_parameters()
        return new.train(module.training)

    return _replace(model, (GRU, GRUCell), swap, strict, "revert")
