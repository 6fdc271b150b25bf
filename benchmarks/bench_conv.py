"""Causal depthwise conv1d: fusedgru.causal_conv1d against F.conv1d(groups=C) (cuDNN on CUDA) and
a pure-PyTorch shifted sum, on one device, in the same process.

For each (layout, W, dilation, dtype) it times the forward and forward + backward (to x, weight
and bias), interleaving implementations, and reports medians. It also times a copy of the same bytes
(x.clone(): read x, write a tensor of its size, as the forward does) and reports the forward's
share of that bandwidth: the honest yardstick on a CPU, where F.conv1d's own time swings
several-fold between runs.

  python benchmarks/bench_conv.py                  # CPU: N=8 C=256 L=1024 W=4 fp32, 2 threads
  python benchmarks/bench_conv.py --device cuda    # N=8 C=1024 L=4096 bf16, W 4/16/64, d 1/4
  python benchmarks/bench_conv.py --batch 4 --channels 512 --length 2048 --width 4 8

Each row is also said in a sentence. The JSON goes to benchmarks/runs/ (ignored by git) under a
new name per run, see --out.
"""

import itertools
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _common as common  # noqa: E402

import fusedgru  # noqa: E402


def _activation(text):
    return None if text.lower() == "none" else text


def parse_args(argv=None):
    p = common.bench_parser(__doc__)
    # Lower-case names; the short capitals of earlier versions (--N, --C, ...) still work.
    p.add_argument("--batch", "--N", dest="N", type=common.positive_int, metavar="N",
                   help="batch size N (default: 8)")
    p.add_argument("--channels", "--C", dest="C", type=common.positive_int, metavar="C",
                   help="channels C (default: 256 on the CPU, 1024 on CUDA)")
    p.add_argument("--length", "--L", dest="L", type=common.positive_int, metavar="L",
                   help="sequence length L (default: 1024 on the CPU, 4096 on CUDA)")
    p.add_argument("--width", "--W", dest="W", type=common.positive_int, nargs="+", metavar="W",
                   help="kernel widths W (default: 4 on the CPU; 4 16 64 on CUDA)")
    p.add_argument("--dilation", type=common.positive_int, nargs="+", metavar="D",
                   help="dilations d (default: 1 on the CPU; 1 4 on CUDA)")
    p.add_argument("--dtype", nargs="+", choices=list(common.DTYPES))
    p.add_argument("--layouts", nargs="+", default=["ncl", "channels_last"],
                   choices=["ncl", "channels_last"])
    p.add_argument("--activation", default=None, type=_activation,
                   choices=[None, "silu", "relu"], help="none (default), silu or relu")
    common.add_timing_args(p, warmup=5, reps=30)
    p.add_argument("--out", help=common.out_help("-conv", "conv"))
    args = common.parse_bench_args(p, argv)
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
    device, dtype = args.device, common.DTYPES[dt]
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
    fns[("copy", "fwd")] = lambda: x.clone()
    med = common.median_times(fns, args.warmup, args.reps, common.Timer(device))
    rows = []
    for mode in ["fwd", "fwdbwd"]:
        ours = med[("fusedgru", mode)]
        row = dict(layout=layout, N=N, C=C, L=L, W=W, dilation=d, dtype=dt, activation=act,
                   mode=mode, fusedgru_ms=ours, conv1d_ms=med[("F.conv1d", mode)],
                   shifted_ms=med[("shifted", mode)],
                   speedup_vs_conv1d=med[("F.conv1d", mode)] / ours,
                   speedup_vs_shifted=med[("shifted", mode)] / ours)
        if mode == "fwd":
            row["copy_ms"] = med[("copy", "fwd")]
            row["share_of_copy_bandwidth"] = med[("copy", "fwd")] / ours
        rows.append(row)
    return rows


def sentence(r, device):
    """The row in words: "fusedgru.causal_conv1d is 4.10x faster than F.conv1d(groups=C) and
    6.70x faster than the shifted sum, forward (...)"."""
    ref = "F.conv1d(groups=C) (cuDNN)" if device == "cuda" else "F.conv1d(groups=C)"
    what = "forward" if r["mode"] == "fwd" else "forward + backward"
    where = (f"N={r['N']} C={r['C']} L={r['L']} W={r['W']} d={r['dilation']} {r['dtype']} "
             f"{r['layout']}" + (f" {r['activation']}" if r["activation"] else ""))
    vs_conv1d = common.compared(r["fusedgru_ms"], r["conv1d_ms"])
    vs_shifted = common.compared(r["fusedgru_ms"], r["shifted_ms"])
    return (f"fusedgru.causal_conv1d is {vs_conv1d} {ref} and {vs_shifted} the shifted sum, "
            f"{what} ({where})")


def main(argv=None):
    args = parse_args(argv)
    points = list(itertools.product(args.layouts, args.W, args.dilation, args.dtype))
    info, rows = common.run_points(args, "bench_conv", points, bench_point)
    ref = "cuDNN" if args.device == "cuda" else "conv1d"
    cols = [("layout", 13), ("dtype", 5), ("W", 3), ("d", 2), ("mode", 7), ("fusedgru [ms]", 13),
            (f"{ref} [ms]", 11), ("shifted [ms]", 12), (f"speedup vs {ref} [x]", 20),
            ("speedup vs shifted [x]", 22), ("of copy bandwidth", 17)]
    widths = [max(w, len(name)) for name, w in cols]
    head = " ".join(f"{name:>{w}}" for (name, _), w in zip(cols, widths))
    print(head)
    print("-" * len(head))
    for r in rows:
        share = f"{100 * r['share_of_copy_bandwidth']:.0f}%" if "share_of_copy_bandwidth" in r \
            else "-"
        cells = [r["layout"], r["dtype"], r["W"], r["dilation"], r["mode"],
                 f"{r['fusedgru_ms']:.3f}", f"{r['conv1d_ms']:.3f}", f"{r['shifted_ms']:.3f}",
                 f"{r['speedup_vs_conv1d']:.2f}x", f"{r['speedup_vs_shifted']:.2f}x", share]
        print(" ".join(f"{str(c):>{w}}" for c, w in zip(cells, widths)))
    common.legend(f"speedup = other time / fusedgru time (> 1: fusedgru is faster); {ref}: "
                  f"F.conv1d(groups=C) on the left-padded input; shifted: a pure-PyTorch sum of W "
                  f"shifted products; of copy bandwidth: x.clone()'s time / our "
                  f"forward time. fwd = forward under no_grad, fwdbwd = forward + backward to x, "
                  f"weight and bias.")
    summary = [sentence(r, args.device) for r in rows]
    for line in summary:
        print(line)
    out = common.output_path(args, "conv", info)
    common.write_record("bench_conv", args, info, rows, out, summary=summary)
    return out


if __name__ == "__main__":
    main()
