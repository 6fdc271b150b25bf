"""Shared helpers of the test suite."""

import os
import random

import pytest
import torch
from torch import nn

import fusedgru

# Every run draws fresh random inputs; the seed is printed (conftest.py) so that a failure can be
# replayed with FUSEDGRU_TEST_SEED=<seed>. It also seeds the property tests' example choice.
SEED = int(os.environ.get("FUSEDGRU_TEST_SEED", random.randrange(2**31)))

# Every device-parametrized test runs on the CPU and, marked `cuda`, on the GPU when there is one.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

# Max |ours - nn.GRU| relative to max(1, |nn.GRU|), for results in the same dtype. Measured
# errors: ~1e-15 in float64, ~1e-6 in float32 (different summation orders and exp/tanh).
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


def pair(device, dtype, *args, **kwargs):
    """An nn.GRU and a fusedgru.GRU with the same weights."""
    ref = nn.GRU(*args, **kwargs).to(device=device, dtype=dtype)
    ours = fusedgru.GRU(*args, **kwargs).to(device=device, dtype=dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def max_err(a, b):
    """max |a - b| / max(1, max |b|), in float64 on the CPU (a and b may be on different
    devices: a GPU result against a CPU reference)."""
    if b.numel() == 0:
        return 0.0
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).abs().max() / max(1.0, b.abs().max().item())).item()


def assert_close(ours, ref, tol, what=""):
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    assert ours.dtype == ref.dtype, f"{what}: dtype {ours.dtype} != {ref.dtype}"
    assert torch.isfinite(ours).all(), f"{what}: non-finite values"
    err = max_err(ours, ref)
    assert err <= tol, f"{what}: max scaled error {err:.3g} > {tol:.3g}"


def run_with_grads(module, x, hx, grad_out, grad_h):
    """Forward, then gradients of <out, grad_out> + <h_n, grad_h> w.r.t. x, hx and all weights."""
    out, h_n = module(x, hx) if hx is not None else module(x)
    data = out.data if isinstance(out, nn.utils.rnn.PackedSequence) else out
    loss = (data * grad_out).sum() + (h_n * grad_h).sum()
    leaves = [t for t in (x, hx) if t is not None and t.requires_grad] + list(module.parameters())
    return out, h_n, torch.autograd.grad(loss, leaves)


def rel_err(a, ref):
    """||a - ref|| / ||ref||, in float64 on the CPU (a and ref may be on different devices)."""
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    return ((a - ref).norm() / ref.norm().clamp_min(1e-30)).item()


# ---- parity with nn.GRU ----

def make_input(device, dtype, T, N, C, batch_first):
    shape = (N, T, C) if batch_first else (T, N, C)
    return torch.randn(shape, device=device, dtype=dtype, requires_grad=True)


def check_parity(ref, ours, x, hx, dtype, what=""):
    go, gh = grads_for(ref, x, hx)
    out_r, h_r, g_r = run_with_grads(ref, x, hx, go, gh)
    out_o, h_o, g_o = run_with_grads(ours, x, hx, go, gh)
    tol = TOL[dtype]
    assert_close(out_o, out_r, tol, f"{what} output")
    assert_close(h_o, h_r, tol, f"{what} h_n")
    names = (["input"] + (["hx"] if hx is not None else [])
             + [n for n, _ in ref.named_parameters()])
    for name, a, b in zip(names, g_o, g_r, strict=True):
        assert_close(a, b, tol, f"{what} grad {name}")


def grads_for(ref, x, hx):
    with torch.no_grad():
        out, h = ref(x, hx) if hx is not None else ref(x)
    return torch.randn_like(out), torch.randn_like(h)


# ---- torch.compile against eager ----

def assert_compile_matches_eager(model, *inputs, compiled=None, loss=None,
                                 tol=TOL[torch.float32]):
    """``torch.compile(model, fullgraph=True)`` gives eager's outputs (every tensor ``model``
    returns) and, under grad mode, eager's gradients of ``loss(outputs)`` (default: the sum of
    the first output) with respect to the inputs that require grad and ``model``'s parameters.

    ``compiled``: an already compiled ``model``, to check a later call of it (recompilation for
    new shapes); by default Dynamo's caches are reset and ``model`` is compiled here."""
    if compiled is None:
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True)
    if loss is None:
        def loss(outputs):
            return outputs[0].sum()

    def as_tuple(out):
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    eager, comp = as_tuple(model(*inputs)), as_tuple(compiled(*inputs))
    assert len(comp) == len(eager)
    for i, (c, e) in enumerate(zip(comp, eager, strict=True)):
        assert_close(c, e, tol, f"compiled output {i}")
    if not torch.is_grad_enabled():
        return
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    leaves += list(model.parameters())
    g_e = torch.autograd.grad(loss(eager), leaves)
    g_c = torch.autograd.grad(loss(comp), leaves)
    for i, (c, e) in enumerate(zip(g_c, g_e, strict=True)):
        assert_close(c, e, tol, f"compiled gradient {i}")
