"""The public API's docstrings: each one follows torch's layout (Args, Inputs / Outputs with
shapes for modules, an Example), and every example runs as a doctest (a few seconds in all)."""

import doctest
import importlib
import inspect

import pytest
import torch

import fusedgru
from fusedgru import models, reference

MODULES = ["fusedgru", "fusedgru.rnn", "fusedgru.conv", "fusedgru.functional", "fusedgru.models",
           "fusedgru.reference"]
# The public objects and the sections each docstring must have.
LAYERS = [fusedgru.GRU, fusedgru.GRUCell, fusedgru.LayerNormGRU, fusedgru.CausalConv1d,
          models.CausalConvGRU]
FUNCTIONS = [fusedgru.gru, fusedgru.ln_gru, fusedgru.causal_conv1d, fusedgru.causal_conv1d_update,
             fusedgru.convert, fusedgru.revert, reference.gru_layer, reference.gru_layer_backward,
             reference.causal_conv1d, reference.causal_conv1d_backward, reference.ln_gru_layer]


def test_every_public_name_is_covered():
    objects = [getattr(fusedgru, n) for n in fusedgru.__all__]
    public = {o for o in objects if inspect.isclass(o) or inspect.isfunction(o)}
    missing = public - set(LAYERS) - set(FUNCTIONS) - {fusedgru.has_cuda_kernels}
    assert not missing, f"add to LAYERS/FUNCTIONS: {missing}"


@pytest.mark.parametrize("obj", LAYERS, ids=lambda o: o.__qualname__)
def test_layer_docstring_has_torch_sections(obj):
    doc = inspect.getdoc(obj)
    for section in ("Args:", "Inputs:", "Outputs:", "Example::", ">>> "):
        assert section in doc, f"{obj.__qualname__}'s docstring lacks {section!r}"
    for name in inspect.signature(obj.__init__).parameters:
        if name not in ("self", "kwargs"):
            assert f"{name}:" in doc, f"{obj.__qualname__}'s Args lack {name!r}"


@pytest.mark.parametrize("obj", FUNCTIONS + [fusedgru.has_cuda_kernels],
                         ids=lambda o: f"{o.__module__}.{o.__qualname__}")
def test_function_docstring_has_torch_sections(obj):
    doc = inspect.getdoc(obj)
    sections = ("Returns:", "Example::", ">>> ") + (("Args:",) if inspect.signature(
        obj).parameters else ())
    for section in sections:
        assert section in doc, f"{obj.__qualname__}'s docstring lacks {section!r}"
    for name in inspect.signature(obj).parameters:
        assert name in doc, f"{obj.__qualname__}'s docstring does not describe {name!r}"


@pytest.mark.parametrize("name", MODULES)
def test_module_docstring_examples_run(name):
    module = importlib.import_module(name)
    assert module.__doc__ and ">>> " in module.__doc__, f"{name} has no example"
    finder = doctest.DocTestFinder(exclude_empty=True)
    globs = {"torch": torch, "fusedgru": fusedgru, "reference": reference}
    tests = finder.find(module, name, extraglobs=globs)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    torch.manual_seed(0)
    examples = 0
    for test in tests:
        runner.run(test)
        examples += len(test.examples)
    result = runner.summarize(verbose=False)
    assert examples > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed " \
                               f"in {name} (output above)"
