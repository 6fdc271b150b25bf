"""fusedgru: fused GRU and causal depthwise conv1d kernels behind drop-in PyTorch modules."""

import torch

from ._version import __version__
from . import _ops  # noqa: F401  (registers the ops' fake kernels and autograd)
from . import models, reference
from .conv import CausalConv1d, causal_conv1d, causal_conv1d_update
from .functional import gru, ln_gru
from .rnn import GRU, GRUCell, LayerNormGRU, convert, revert


def has_cuda_kernels() -> bool:
    """Whether this build of the extension holds the CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("fusedgru::gru_forward", "CUDA")


__all__ = ["GRU", "GRUCell", "LayerNormGRU", "CausalConv1d", "__version__", "causal_conv1d", "causal_conv1d_update",
           "convert", "gru", "has_cuda_kernels", "ln_gru", "models", "reference", "revert"]
