"""fusedgru.GRU and GRUCell (torch.nn.GRU's and GRUCell's interface, parameters and numerics on
fused kernels) and LayerNormGRU."""

import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import reference
from ._ops import needs_reference
from .functional import _check_devices_and_dtypes, gru, ln_gru


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

    def forward(self, input, hx: Tensor | None = None, *, lengths: Tensor | None = None):
        """nn.GRU's forward; ``lengths`` (an extension, [N] ints) runs row i over its first
        ``lengths[i]`` steps only: outputs past them are zero and ``h_n`` is the state at each
        row's last valid step, as with a PackedSequence, but on the padded batch directly."""
        D = 2 if self.bidirectional else 1
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError("lengths cannot be given with a PackedSequence input")
            data, batch_sizes, sorted_indices, unsorted_indices = input
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
        if lengths is not None:
            lengths = torch.as_tensor(lengths)
            if lengths.shape != (input.shape[batch_dim],):
                raise ValueError(f"lengths must have shape ({input.shape[batch_dim]},), "
                                 f"got {tuple(lengths.shape)}")
        output, h_n = self._run(input, hx, batch_first=self.batch_first, lengths=lengths)
        if not is_batched:
            output = output.squeeze(batch_dim)
            h_n = h_n.squeeze(1)
        return output, h_n

    def check_input(self, input: Tensor, batch_sizes: Tensor | None) -> None:
        # nn.RNNBase compares against the cached _flat_weights; compare against the live weights.
        if input.dtype != self.weight_ih_l0.dtype and not torch.is_autocast_enabled(
                input.device.type):
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

    Same constructor, parameters (names, shapes, initialization, ``state_dict``), inputs and
    outputs as ``torch.nn.GRU``: for each layer, direction and time step

    .. math::
        r_t = \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z_t = \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t = \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})) \\
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    ``forward(input, hx=None) -> (output, h_n)`` accepts ``[T, N, C]`` (``[N, T, C]`` with
    ``batch_first``), unbatched ``[T, C]``, or a ``PackedSequence``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        **kwargs,
    ) -> None:
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if kwargs:
            raise TypeError(
                f"GRU.__init__() got an unexpected keyword argument '{next(iter(kwargs))}'")
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, 0, device, dtype)

    def flatten_parameters(self) -> None:
        """No-op: the fused kernels read each weight where it is (nn.GRU packs them for cuDNN)."""

    def _weights(self) -> list[Tensor]:
        # getattr (not the cached _flat_weights) so torch.func.functional_call and weight
        # reassignment are always seen.
        return [getattr(self, name) for name in self._flat_weights_names]

    def _run(self, input, hx, batch_first, lengths=None):
        return gru(input, hx, self._weights(), self.bias, self.num_layers, self.dropout,
                   self.training, self.bidirectional, batch_first, lengths=lengths)


class LayerNormGRU(_GRUInterface, nn.RNNBase):
    r"""GRU with layer normalization of the gate pre-activations (Ba et al. 2016), the input and
    the recurrent contributions normalized separately over their 3H values, fused into the
    kernels:

    .. math::
        a^i_t = \mathrm{LN}(W_{ih} x_t)\,\gamma_i + \beta_i, \quad
        a^h_t = \mathrm{LN}(W_{hh} h_{t-1})\,\gamma_h + \beta_h \\
        r_t = \sigma(a^i_r + a^h_r), \quad z_t = \sigma(a^i_z + a^h_z), \quad
        n_t = \tanh(a^i_n + r_t \odot a^h_n), \quad h_t = (1 - z_t) n_t + z_t h_{t-1}

    The LayerNorm biases take the place of nn.GRU's ``b_ih``/``b_hh``. Parameters per layer and
    direction: ``weight_ih_l{k}``, ``weight_hh_l{k}`` (nn.GRU's shapes and initialization),
    ``ln_ih_weight_l{k}``, ``ln_ih_bias_l{k}``, ``ln_hh_weight_l{k}``, ``ln_hh_bias_l{k}``
    (``[3H]``, initialized to ones and zeros); ``_reverse`` suffixes for the backward direction.
    Same forward contract as :class:`fusedgru.GRU`. Single backward only (no double backward).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 eps: float = 1e-5, device=None, dtype=None) -> None:
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
            f", eps={self.eps}" if self.eps != 1e-5 else "")

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
    """Drop-in replacement for :class:`torch.nn.GRUCell` (same parameters, initialization,
    inputs and errors) on the fused ``fusedgru::gru_cell`` op: one launch per step on CUDA for
    batches up to 32."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=3, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
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
        # Same wording as ATen's check_rnn_cell_forward_* checks.
        if input.shape[1] != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.shape[1]} "
                               f"expected {self.input_size}")
        if hx.shape[0] != input.shape[0]:
            raise RuntimeError(f"Input batch size {input.shape[0]} doesn't match hidden0 batch "
                               f"size {hx.shape[0]}")
        if hx.shape[1] != self.hidden_size:
            raise RuntimeError(f"hidden0 has inconsistent hidden_size: got {hx.shape[1]}, "
                               f"expected {self.hidden_size}")
        params = [self.weight_ih, self.weight_hh] + (
            [self.bias_ih, self.bias_hh] if self.bias else [])
        _check_devices_and_dtypes(input, hx, params)
        if needs_reference(input, hx, *params):
            out = reference.gru_layer(input.unsqueeze(0), hx, self.weight_ih, self.weight_hh,
                                      self.bias_ih, self.bias_hh)[1]
        elif torch.is_grad_enabled() and any(t.requires_grad for t in (input, hx, *params)):
            # Training: one step of gru_forward saves the activations its backward needs
            # (gru_cell's backward would recompute the step).
            out = torch.ops.fusedgru.gru_forward(input.unsqueeze(0), hx, self.weight_ih,
                                                 self.weight_hh, self.bias_ih, self.bias_hh, None,
                                                 False, True)[1]
        else:
            out = torch.ops.fusedgru.gru_cell(input, hx, self.weight_ih, self.weight_hh,
                                              self.bias_ih, self.bias_hh)
        return out if is_batched else out.squeeze(0)


def _replace(model: nn.Module, kinds, swap) -> nn.Module:
    """Apply swap to model itself, or to every submodule that is an instance of kinds."""
    if isinstance(model, kinds):
        return swap(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, kinds):
                setattr(parent, name, swap(child))
    return model


def convert(model: nn.Module) -> nn.Module:
    """Replace every ``torch.nn.GRU`` (``nn.GRUCell``) in ``model``, the model itself included, by
    a :class:`fusedgru.GRU` (:class:`fusedgru.GRUCell`) that shares its parameter objects, so
    weights, device, dtype, ``requires_grad`` and optimizer state carry over; returns the model."""

    def swap(gru_module):
        if isinstance(gru_module, nn.GRUCell):
            cell = GRUCell(gru_module.input_size, gru_module.hidden_size, gru_module.bias,
                           device="meta")
            for name, param in gru_module.named_parameters(recurse=False):
                setattr(cell, name, param)
            return cell.train(gru_module.training)
        with warnings.catch_warnings():  # nn.GRU already warned about its own arguments
            warnings.simplefilter("ignore")
            new = GRU(gru_module.input_size, gru_module.hidden_size, gru_module.num_layers,
                      gru_module.bias, gru_module.batch_first, gru_module.dropout,
                      gru_module.bidirectional, device="meta")
        for name in gru_module._flat_weights_names:
            setattr(new, name, getattr(gru_module, name))
        new._init_flat_weights()
        new.train(gru_module.training)
        return new

    return _replace(model, (nn.GRU, nn.GRUCell), swap)


def revert(model: nn.Module) -> nn.Module:
    """The inverse of :func:`convert`: replace every :class:`fusedgru.GRU` (:class:`GRUCell`) in
    ``model`` by a ``torch.nn.GRU`` (``nn.GRUCell``) sharing its parameter objects, for what
    needs the stock modules (``torch.jit.script``, the TorchScript-based ONNX exporter, loading
    without fusedgru installed); returns the model. :class:`LayerNormGRU` has no stock
    counterpart and stays."""

    def swap(module):
        if isinstance(module, GRUCell):
            new = nn.GRUCell(module.input_size, module.hidden_size, module.bias, device="meta")
            for name, param in module.named_parameters(recurse=False):
                setattr(new, name, param)
            return new.train(module.training)
        new = nn.GRU(module.input_size, module.hidden_size, module.num_layers, module.bias,
                     module.batch_first, module.dropout, module.bidirectional, device="meta")
        for name in module._flat_weights_names:
            setattr(new, name, getattr(module, name))
        new._init_flat_weights()
        new.flatten_parameters()
        return new.train(module.training)

    return _replace(model, (GRU, GRUCell), swap)
