"""fusedgru.GRU on a GPU only (marked cuda, skipped without one): device mismatches, and both
CUDA paths (persistent and per-step) against cuDNN. The device-parametrized tests of the other
files run on the GPU too."""

import pytest
import torch
from gru_testing import TOL, assert_close, check_parity, make_input, pair

import fusedgru


@pytest.mark.cuda
def test_device_mismatch_is_clear():
    ours = fusedgru.GRU(4, 6)
    x = torch.randn(3, 2, 4, device="cuda")
    with pytest.raises(RuntimeError,
                       match="Input and parameter tensors are not at the same device"):
        ours(x)
    with pytest.raises(RuntimeError, match="Input and hidden tensors are not at the same device"):
        ours.cuda()(x, torch.randn(1, 2, 6))


@pytest.mark.cuda
@pytest.mark.parametrize("persistent", ["1", "0"], ids=["persistent", "per_step"])
@pytest.mark.parametrize("N, H", [(3, 17), (5, 130), (300, 64)], ids=["N3-H17", "N5-H130",
                                                                       "N300-H64"])
def test_cuda_paths_match_nn_gru(monkeypatch, persistent, N, H):
    """Both CUDA paths (the persistent kernels where they fit, the per-step path with
    FUSEDGRU_PERSISTENT=0 or where they do not: N=300 exceeds shared memory) against cuDNN."""
    monkeypatch.setenv("FUSEDGRU_PERSISTENT", persistent)
    ref, ours = pair("cuda", torch.float64, 7, H, num_layers=2, bidirectional=True)
    x = make_input("cuda", torch.float64, 9, N, 7, False)
    hx = torch.randn(4, N, H, device="cuda", dtype=torch.float64, requires_grad=True)
    check_parity(ref, ours, x, hx, torch.float64, f"FUSEDGRU_PERSISTENT={persistent}")
    lengths = torch.randint(1, 10, (N,))
    out, h_n = ours(x, hx, lengths=lengths.cuda())
    out_r, h_r = ours.cpu()(x.detach().cpu(), hx.detach().cpu(), lengths=lengths)
    assert_close(out.cpu(), out_r, TOL[torch.float64], "lengths output")
    assert_close(h_n.cpu(), h_r, TOL[torch.float64], "lengths h_n")
