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
    if b.numel() == 0:
        return 0.0
    return ((a.double() - b.double()).abs().max() / max(1.0, b.double().abs().max().item())).item()


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
    return ((a.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()
