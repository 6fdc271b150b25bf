"""Causal depthwise conv1d: fusedgru.causal_conv1d against F.conv1d(groups=C) (cuDNN on CUDA) and
a pure-PyTorch shifted sum, on one device, in the same process.

For each (layout, W, dilation, dtype) it times the forward and forward + backward (to x, weight
and bias), interleaving implementations, and reports medians. On CUDA it also times a device copy
of the same bytes (read x, write y) and reports the forward's share of that bandwidth.

  python benchmarks/bench_conv.py                  # CPU: N=8 C=256 L=1024 W=4 fp32, 2 threads
  python benchmarks/bench_conv.py --device cuda    # N=8 C=1024 L=4096 bf16, W 4/16/64, d 1/4
"""

import argparse
import itertools
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import fusedgru  # noqa: E402
from _common import DTYPES, Timer, machine_info, median_times, progress, write_record  # noqa: E402

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--N", type=int)
    p.add_argument("--C", type=int)
    p.add_argument("--L", type=int)
    p.add_argument("--W", type=int, nargs="+")
    p.add_argument("--dilation", type=int, nargs="+")
    p.add_argument("--dtype", nargs="+", choices=list(DTYPES))
    p.add_argument("--layouts", nargs="+", default=["ncl", "channels_last"],
                   choices=["ncl", "channels_last"])
    p.add_argument("--activation", default=None, choices=[None, "silu", "relu"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--out")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    args.N = args.N or 8
    args.C = args.C or (1024 if cuda else 256)
    args.L = args.L or (4096 if cuda else 1024)
    args.W = args.W or ([4, 16, 64] if cuda else [4])
    args.dilation = args.dilation or ([1, 4] if cuda else [1])
    args.dtype = args.dtype or (["bf16"] if cuda else ["fp32"])
    return args


def shifted_sum(x, w, b, d, act):
    C, W = w.shape
    S = (W - 1) * d
    L = x.shape[2]
    xp = F.pad(x, (S, 0))
    y = b[:, None] + w[:, 0, None] * xp[..., :L]
    for k in range(1, W):
        y = y + w[:, k, None] * xp[..., k * d:k * d + L]
    return fusedgru.reference._ACTIVATIONS[act](y)


def bench_point(args, layout, W, d, dt):
    device, dtype = args.device, DTYPES[dt]
    N, C, L = args.N, args.C, args.L
    if layout == "channels_last":
        x = torch.randn(N, L, C, device=device, dtype=dtype).transpose(1, 2)
    else:
        x = torch.randn(N, C, L, device=device, dtype=dtype)
    w = torch.randn(C, W, device=device, dtype=dtype) / W
    b = torch.randn(C, device=device, dtype=dtype)
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    if layout == "channels_last":
        xg = x.transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    # The gradient arrives in the layout the output leaves in (channel-last between GRU layers).
    gy = torch.randn_like(xg)
    S, act = (W - 1) * d, args.activation

    impls = {
        "fusedgru": lambda x_, w_, b_: fusedgru.causal_conv1d(x_, w_, b_, dilation=d,
                                                              activation=act),
        "F.conv1d": lambda x_, w_, b_: fusedgru.reference._ACTIVATIONS[act](
            F.conv1d(F.pad(x_, (S, 0)), w_[:, None], b_, dilation=d, groups=C)),
        "shifted": lambda x_, w_, b_: shifted_sum(x_, w_, b_, d, act),
    }
    fns = {}
    for name, f in impls.items():
        def fwd(f=f):
            with torch.no_grad():
                f(x, w, b)

        def fwdbwd(f=f):
            torch.autograd.grad(f(xg, wg, bg), [xg, wg, bg], gy)

        fns[(name, "fwd")], fns[(name, "fwdbwd")] = fwd, fwdbwd
    if device == "cuda":
        fns[("copy", "fwd")] = lambda: x.clone()
    med = median_times(fns, args.warmup, args.reps, Timer(device))
    rows = []
    for mode in ["fwd", "fwdbwd"]:
        ours = med[("fusedgru", mode)]
        row = dict(layout=layout, N=N, C=C, L=L, W=W, dilation=d, dtype=dt, activation=act,
                   mode=mode, fusedgru_ms=ours, conv1d_ms=med[("F.conv1d", mode)],
                   shifted_ms=med[("shifted", mode)],
                   speedup_vs_conv1d=med[("F.conv1d", mode)] / ours,
                   speedup_vs_shifted=med[("shifted", mode)] / ours)
        if device == "cuda" and mode == "fwd":
            row["copy_ms"] = med[("copy", "fwd")]
            row["share_of_copy_bandwidth"] = med[("copy", "fwd")] / ours
        rows.append(row)
    return rows


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    info = machine_info(args.device)
    points = list(itertools.product(args.layouts, args.W, args.dilation, args.dtype))
    rows = []
    for point in progress(points, "bench_conv"):
        rows.extend(bench_point(args, *point))
    ref = "cuDNN" if args.device == "cuda" else "conv1d"
    head = (f"{'layout':>13} {'dtype':>5} {'W':>3} {'d':>2} {'mode':>7} {'fusedgru ms':>12} "
            f"{ref + ' ms':>10} {'shifted ms':>11} {'vs ' + ref:>10} {'vs shifted':>11} "
            f"{'of copy bw':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        share = f"{100 * r['share_of_copy_bandwidth']:.0f}%" if "share_of_copy_bandwidth" in r \
            else "-"
        print(f"{r['layout']:>13} {r['dtype']:>5} {r['W']:>3} {r['dilation']:>2} {r['mode']:>7} "
              f"{r['fusedgru_ms']:>12.3f} {r['conv1d_ms']:>10.3f} {r['shifted_ms']:>11.3f} "
              f"{r['speedup_vs_conv1d']:>9.1f}x {r['speedup_vs_shifted']:>10.1f}x {share:>10}")
    write_record("bench_conv", args, info, rows)


if __name__ == "__main__":
    main()
