"""Ready-made models built on the fused ops: the causal-conv + GRU (+ attention) stack.

Example::

    >>> from fusedgru.models import CausalConvGRU
    >>> model = CausalConvGRU(input_size=12, hidden_size=32, attention="pool")
    >>> model(torch.randn(4, 20, 12), lengths=[20, 15, 7, 1]).shape
    torch.Size([4, 32])
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _ops
from .conv import CausalConv1d
from .functional import check_lengths, gru
from .rnn import GRU


class CausalConvGRU(nn.Module):
    r"""A stack of ``num_layers`` blocks, each a causal depthwise conv over time (activation
    ``conv_activation``: SiLU by default, ReLU or none; none suits raw regression inputs) followed
    by a unidirectional GRU layer, with a residual connection where input and output widths
    agree, and an optional attention head.

    * ``attention=None``: output ``(N, L, H)``; y_t depends only on x_{<=t}. Streams step by step
      with :meth:`init_state` / :meth:`step`.
    * ``attention="causal"``: adds multi-head causal self-attention over the GRU outputs
      (``scaled_dot_product_attention(is_causal=True)``) with a residual connection; still causal.
    * ``attention="pool"``: reduces the sequence to one ``(N, H)`` vector with learned attention
      weights over the valid steps (for classification). A sequence of length 0 has no step to
      attend to and pools to the zero vector, with zero gradients (a softmax over no step would
      be 0/0 = NaN and turn the whole batch's gradients to NaN).

    Inputs are ``(N, L, C)`` (``(L, N, C)`` with ``batch_first=False``); ``lengths`` (``[N]``
    ints in ``[0, L]``, a tensor or a list, checked as in :func:`fusedgru.gru`) marks
    right-padded sequences: padded steps never affect valid ones, whatever they hold (NaN and
    inf included: they are zeroed on entry, and the outputs there are not defined).

    Args:
        input_size: C, the input features per step
        hidden_size: H, the width of every block's output
        num_layers: the number of conv + GRU blocks, >= 1. Default: 2
        kernel_size: the causal convs' width W. Default: 4
        dilation: the causal convs' dilation. Default: 1
        dropout: dropout between blocks, in training mode. Default: 0
        attention: None, ``"causal"`` or ``"pool"`` (above). Default: None
        num_heads: heads of the causal attention (must divide ``hidden_size``). Default: 1
        batch_first: inputs and outputs are ``(N, L, ...)``. Default: ``True``
        conv_activation: the convs' activation, ``"silu"``, ``"relu"`` or None.
            Default: ``"silu"``

    Inputs: x, lengths
        * **x**: :math:`(N, L, C)`, or :math:`(L, N, C)` with ``batch_first=False``
        * **lengths**: :math:`(N,)` valid lengths in :math:`[0, L]`, or None (all L)

    Outputs: y
        * **y**: :math:`(N, L, H)` (:math:`(L, N, H)` with ``batch_first=False``); with
          ``attention="pool"``, :math:`(N, H)`

    Example::

        >>> from fusedgru.models import CausalConvGRU
        >>> model = CausalConvGRU(input_size=3, hidden_size=16).eval()
        >>> x = torch.randn(2, 10, 3)
        >>> y = model(x)
        >>> y.shape
        torch.Size([2, 10, 16])
        >>> state = model.init_state(2)  # streaming gives the same outputs
        >>> with torch.no_grad():
        ...     steps = []
        ...     for t in range(10):
        ...         y_t, state = model.step(x[:, t], state)
        ...         steps.append(y_t)
        >>> torch.allclose(torch.stack(steps, 1), y, atol=1e-5)
        True
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 2,
                 kernel_size: int = 4, dilation: int = 1, dropout: float = 0.0,
                 attention: str | None = None, num_heads: int = 1, batch_first: bool = True,
                 conv_activation: str | None = "silu"):
        super().__init__()
        if attention not in (None, "causal", "pool"):
            raise ValueError(f"attention must be None, 'causal' or 'pool', got {attention!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not 0 <= dropout <= 1:  # nn.GRU's check and message
            raise ValueError("dropout should be a number in range [0, 1] representing the "
                             "probability of an element being zeroed")
        if attention == "causal" and hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.attention, self.num_heads, self.batch_first = attention, num_heads, batch_first
        self.dropout = dropout
        widths = [input_size] + [hidden_size] * num_layers
        self.convs = nn.ModuleList(
            CausalConv1d(widths[i], kernel_size, dilation, activation=conv_activation,
                         channels_last=True)
            for i in range(num_layers))
        self.grus = nn.ModuleList(GRU(widths[i], hidden_size, batch_first=True)
                                  for i in range(num_layers))
        if attention == "causal":
            self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
            self.proj = nn.Linear(hidden_size, hidden_size)
        elif attention == "pool":
            self.score = nn.Linear(hidden_size, 1)

    def forward(self, x: Tensor, lengths: Tensor | Sequence[int] | None = None) -> Tensor:
        if not self.batch_first:
            x = x.transpose(0, 1)
        if x.dim() != 3:
            raise RuntimeError(f"x must have shape (N, L, C) (or (L, N, C) with "
                               f"batch_first=False), got {tuple(x.shape)}")
        # Checked here as well as in each GRU layer: the pooling below needs it as a tensor, and
        # a bad one should fail before any layer runs.
        lengths = check_lengths(lengths, x.shape[0], x.shape[1], x.device)
        valid = None
        if lengths is not None:
            # The padding is zeroed on entry: the residuals carry the input forward, and the
            # attention's zero weights would turn NaN or inf there into NaN (0 * NaN).
            valid = torch.arange(x.shape[1], device=x.device) < lengths[:, None]  # [N, L]
            x = x.masked_fill(~valid.unsqueeze(-1), 0.0)
        for layer in range(self.num_layers):
            g = self.grus[layer]
            # GRU._weights also reads an nn.GRU's (fusedgru.revert puts nn.GRU here)
            out, _ = gru(self.convs[layer](x), None, GRU._weights(g), g.bias, 1, 0.0, False,
                         False, True, lengths=lengths)
            x = out + x if x.shape[-1] == out.shape[-1] else out
            if self.training and self.dropout > 0 and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        if self.attention == "causal":
            N, L, H = x.shape
            q, k, v = (t.view(N, L, self.num_heads, H // self.num_heads).transpose(1, 2)
                       for t in self.qkv(x).chunk(3, dim=-1))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(a.transpose(1, 2).reshape(N, L, H))
        elif self.attention == "pool":
            scores = self.score(x).squeeze(-1)  # [N, L]
            if valid is None:
                return (scores.softmax(dim=1).unsqueeze(-1) * x).sum(dim=1)
            # A row of length 0 would softmax over all -inf (NaN): give it finite scores, then
            # zero weights. masked_fill passes no gradient to the filled entries, so the row
            # pools to zero with zero gradients and leaves the other rows' gradients finite.
            empty = ~valid.any(dim=1, keepdim=True)
            scores = scores.masked_fill(~valid, float("-inf")).masked_fill(empty, 0.0)
            weights = scores.softmax(dim=1).masked_fill(empty, 0.0)
            return (weights.unsqueeze(-1) * x).sum(dim=1)
        return x if self.batch_first else x.transpose(0, 1)

    def init_state(self, batch_size: int) -> list[tuple[Tensor, Tensor]]:
        """Streaming state: per layer, the conv history ``(N, C, S)`` and the GRU state
        ``(N, H)``, all zeros (what the full forward starts from)."""
        if self.attention is not None:
            raise RuntimeError("streaming needs attention=None")
        w = self.grus[0].weight_hh_l0
        return [(conv.init_state(batch_size),
                 w.new_zeros((batch_size, self.hidden_size))) for conv in self.convs]

    def step(self, x_t: Tensor, state: list[tuple[Tensor, Tensor]]):
        """One time step ``x_t (N, C) -> y_t (N, H)``; returns ``(y_t, state)``. Run under
        ``torch.no_grad()`` (the conv state is updated in place); stepping through a sequence
        gives the full forward's outputs (in eval mode). Per layer: one conv update and one
        ``fusedgru::gru_cell`` (a single fused launch on CUDA for batches up to 32)."""
        if self.attention is not None:
            raise RuntimeError("streaming needs attention=None")
        if len(state) != self.num_layers:
            raise ValueError(f"state must hold one (conv state, h) pair per layer, "
                             f"{self.num_layers}, got {len(state)} (see init_state)")
        new_state = []
        x = x_t
        for layer, (conv_state, h) in enumerate(state):
            c = self.convs[layer].step(x, conv_state)
            g = self.grus[layer]
            h = _ops.gru_cell(c, h, g.weight_ih_l0, g.weight_hh_l0, g.bias_ih_l0, g.bias_hh_l0)
            x = h + x if x.shape[-1] == h.shape[-1] else h
            new_state.append((conv_state, h))
        return x, new_state
