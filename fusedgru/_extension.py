"""Loading the compiled core ``fusedgru._C``, with errors that say what to do.

``import fusedgru`` calls :func:`load` before anything touches the ops. It checks, in this order:

* that the extension was built at all (a fresh checkout has no ``_C*.so``);
* that it was built against the torch that is running: setup.py records that torch in
  ``fusedgru/_build_info.py`` (torch has no stable C++ ABI across releases, and a binary built
  against another one fails to load or, worse, misbehaves);
* that it loads.

Each failure is an ``ImportError`` whose message gives the command that fixes it.
"""

import importlib
import importlib.util
import os

import torch

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_SOURCE_ROOT = os.path.dirname(_PACKAGE_DIR)


def _checkout() -> str | None:
    """The source checkout this package is imported from (editable install or the checkout
    itself on sys.path), or None for an installed copy."""
    return _SOURCE_ROOT if os.path.exists(os.path.join(_SOURCE_ROOT, "setup.py")) else None


def build_command() -> str:
    """The command that (re)builds the extension for the running torch, as said in messages."""
    root = _checkout()
    if root is not None:
        return (f"`pip install --no-build-isolation -e .` in {root} (or `make setup`, which "
                f"`make test` runs)")
    return ("`pip install --no-build-isolation .` from the fusedgru source, with this torch "
            "installed")


def public_version(version: str) -> str:
    """A version without its local label: ``2.13.0+cpu`` -> ``2.13.0``."""
    return str(version).split("+", 1)[0]


def mismatch(record, torch_version: str = torch.__version__,
             torch_cuda: str | None = torch.version.cuda) -> str | None:
    """Why an extension built as ``record`` says (its ``torch_version``, ``torch_cuda`` and
    ``cuda_kernels``) cannot run under the given torch, or None when it can.

    Releases must agree (``2.13.0+cpu`` and ``2.13.0+cu128`` share the C++ ABI); an extension
    with CUDA kernels also needs a CUDA build of torch."""
    built = str(record.torch_version)
    if public_version(built) != public_version(torch_version):
        return (f"fusedgru was built against torch {built} but torch {torch_version} is running: "
                f"rebuild with {build_command()}")
    if getattr(record, "cuda_kernels", False) and torch_cuda is None:
        return (f"fusedgru was built with its CUDA kernels against torch {built} (CUDA "
                f"{record.torch_cuda}) but torch {torch_version} has no CUDA support: install "
                f"the CUDA build of torch, or rebuild with {build_command()}")
    return None


def load(package: str = "fusedgru"):
    """Import ``<package>._C`` (which registers the ``fusedgru::*`` ops) after the checks above;
    returns the module."""
    if importlib.util.find_spec(f"{package}._C") is None:
        raise ImportError(
            f"the fusedgru extension is not built (no compiled {package}._C in {_PACKAGE_DIR}): "
            f"run {build_command()}")
    try:
        record = importlib.import_module(f"{package}._build_info")
    except ImportError:
        record = None  # built by a setup.py older than the record: nothing to check against
    if record is not None:
        problem = mismatch(record)
        if problem is not None:
            raise ImportError(problem)
    try:
        return importlib.import_module(f"{package}._C")
    except (ImportError, OSError) as e:
        built = f" against torch {record.torch_version}" if record is not None else ""
        raise ImportError(
            f"the fusedgru extension in {_PACKAGE_DIR} (built{built}) does not load under torch "
            f"{torch.__version__}: {e}. Rebuild with {build_command()}") from e
