"""fusedgru.GRU on a GPU only (marked cuda, skipped without one): device mismatches, and both
CUDA paths (persistent and per-step) against cuDNN. The device-parametrized tests of the other
files run on the GPU too."""

import pytest
import torch
from gru_testing import (
    TOL,
    assert_close,
    check_parity,
    grads_for,
    make_input,
    pair,
    rel_err,
    run_with_grads,
)

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


LOW = {"bf16": (torch.bfloat16, 2.0 ** -7), "fp16": (torch.float16, 2.0 ** -10),
       "fp32-tf32": (torch.float32, 2.0 ** -10)}


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("N, H", [(1, 17), (16, 256), (33, 130), (16, 1024)],
                         ids=["N1-H17", "N16-H256", "N33-H130", "N16-H1024"])
def test_tensor_core_forward_against_cudnn(monkeypatch, dtype, N, H):
    """The persistent forward on tensor cores (bf16, fp16; fp32 in TF32 under PyTorch's default
    RNN flag) and its backward: each output and gradient within twice cuDNN's error in the same
    precision (+ 8 ulp / sqrt(numel)), both against float64 on the GPU."""
    low, ulp = LOW[dtype]
    monkeypatch.setattr(torch.backends.cudnn.rnn, "fp32_precision", "tf32")  # the default
    ref64, ours64 = pair("cuda", torch.float64, 24, H)
    x64 = torch.randn(12, N, 24, device="cuda", dtype=torch.float64, requires_grad=True)
    hx64 = torch.randn(1, N, H, device="cuda", dtype=torch.float64, requires_grad=True)
    go, gh = grads_for(ref64, x64, hx64)
    want = run_with_grads(ref64, x64, hx64, go, gh)
    ref, ours = (m.to(low) for m in (ref64, ours64))
    x, hx = (t.detach().to(low).requires_grad_() for t in (x64, hx64))
    got_cudnn = run_with_grads(ref, x, hx, go.to(low), gh.to(low))
    got = run_with_grads(ours, x, hx, go.to(low), gh.to(low))
    def flat(r):  # output, h_n, then the gradients
        return [r[0], r[1], *r[2]]

    for i, (o, c, w) in enumerate(zip(flat(got), flat(got_cudnn), flat(want))):
        eps = 8 * ulp / o.numel() ** 0.5
        assert rel_err(o, w) <= 2 * rel_err(c, w) + eps, (i, rel_err(o, w), rel_err(c, w))
