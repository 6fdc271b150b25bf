"""fusedgru: fused GRU and causal depthwise conv1d kernels behind drop-in PyTorch modules."""

from ._version import __version__
from . import _ops  # noqa: F401  (registers the ops' fake kernels and autograd)
from .functional import gru
from .gru import GRU, convert

__all__ = ["GRU", "__version__", "convert", "gru"]
