"""fusedgru: fused GRU and causal depthwise conv1d kernels behind drop-in PyTorch modules.

* :class:`GRU`, :class:`GRUCell`: drop-in ``torch.nn.GRU`` / ``torch.nn.GRUCell`` (same
  constructor, parameters, ``state_dict``, inputs, outputs and errors) on compiled CPU and CUDA
  kernels; :func:`convert` / :func:`revert` swap them inside a model, sharing the parameters.
* :class:`LayerNormGRU`: a GRU with layer-normalized gate pre-activations, fused.
* :func:`causal_conv1d`, :func:`causal_conv1d_update`, :class:`CausalConv1d`: causal depthwise
  conv1d, whole sequences and streaming.
* :mod:`fusedgru.models` (:class:`~fusedgru.models.CausalConvGRU`), :mod:`fusedgru.reference`
  (pure-PyTorch versions of every op), :func:`gru` / :func:`ln_gru` (functional forms).

The ops are registered as ``torch.ops.fusedgru.*`` when this package is imported; the compiled
extension is built at install time (``pip install --no-build-isolation .``), never at import.

Example::

    >>> import torch, fusedgru
    >>> rnn = fusedgru.GRU(10, 20, num_layers=2)
    >>> output, h_n = rnn(torch.randn(5, 3, 10))
    >>> output.shape, h_n.shape
    (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]))
"""

import torch

from . import _extension
from ._version import __version__

_extension.load(__name__)  # the compiled ops, or an ImportError that says how to build them

# After the load (E402): _ops registers the ops' fake kernels and autograd when imported.
from . import _ops, models, reference  # noqa: E402, F401
from .conv import CausalConv1d, causal_conv1d, causal_conv1d_update  # noqa: E402
from .functional import gru, ln_gru  # noqa: E402
from .rnn import GRU, GRUCell, LayerNormGRU, convert, revert  # noqa: E402


def has_cuda_kernels() -> bool:
    """Whether this build of the extension holds the CUDA kernels.

    They are compiled when the extension is built against a CUDA build of torch with a CUDA
    toolkit present (and ``FUSEDGRU_CPU_ONLY`` unset). Without them every op still runs on the
    CPU; a CUDA tensor then raises torch's "could not run ... with arguments from the 'CUDA'
    backend" error.

    Returns:
        bool: True when the ``fusedgru::*`` ops have CUDA kernels registered.

    Example::

        >>> import fusedgru
        >>> isinstance(fusedgru.has_cuda_kernels(), bool)
        True
    """
    return torch._C._dispatch_has_kernel_for_dispatch_key("fusedgru::gru_forward", "CUDA")


__all__ = ["GRU", "GRUCell", "LayerNormGRU", "CausalConv1d", "__version__", "causal_conv1d",
           "causal_conv1d_update", "convert", "gru", "has_cuda_kernels", "ln_gru", "models",
           "reference", "revert"]
