"""One forward launch of each persistent GRU kernel whose measured step cost the cost model could
not explain on the 2026-12-04 H200 run (benchmarks/NOTES.md, "The bench grid: measured against
predicted"), for Nsight Compute; scripts/gpu_check.sh runs it under ncu (stage
profile_persistent), which then reports each launch's warp stall reasons and the SASS lines
where the warps wait:

- the FMA kernel (strict fp32): ~0.8 us per batch row a step, nearly independent of H
  (N = 16, H = 256: 20 us a step, against 5.5 at N = 1);
- the tensor-core kernel (bf16): ~2.5 us per batch chunk of 32 rows (N = 256, H = 128: 23.7 us
  a step, 8 chunks).

Each case runs one forward, checked against nn.GRU (a profile of a wrong kernel is no use), so
the kernel filter below matches two launches. Sizes: T time steps, N batch, H hidden (input
size H).

    python scripts/gpu_profile.py [--device cuda]
    ncu --clock-control none --kernel-name regex:gru_persistent --section WarpStateStats \
        --section SourceCounters python scripts/gpu_profile.py
"""

import argparse
import os

import torch
from torch import nn

import fusedgru

T = 32
# (dtype, N, H) and the largest relative error to nn.GRU allowed (strict fp32 / bf16).
CASES = ((torch.float32, 16, 256, 1e-5), (torch.bfloat16, 256, 128, 3e-2))


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = parser.parse_args()
    os.environ["FUSEDGRU_PERSISTENT"] = "1"  # the persistent kernels wherever a plan fits
    if args.device == "cuda":  # strict fp32: the FMA kernel (TF32 would take tensor cores)
        torch.backends.cudnn.rnn.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    for dtype, N, H, tol in CASES:
        torch.manual_seed(0)
        ref = nn.GRU(H, H).to(args.device, dtype)
        ours = fusedgru.GRU(H, H).to(args.device, dtype)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(T, N, H, device=args.device, dtype=dtype)
        with torch.no_grad():
            err = rel(ours(x)[0], ref(x)[0])  # nn.GRU's kernels do not match the filter
        if not err <= tol:
            raise AssertionError(f"{dtype} N={N} H={H}: relative error {err:.3g} > {tol}")
        if args.device == "cuda":
            torch.cuda.synchronize()
        print(f"{str(dtype).removeprefix('torch.')} T={T} N={N} H={H}: relative error to "
              f"nn.GRU {err:.2e}")


if __name__ == "__main__":
    main()
