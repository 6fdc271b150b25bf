"""fusedgru.GRU against torch.nn.GRU (cuDNN on CUDA) on one device, in the same process.

For every point of the grid (T, N, I, H, layers, dtype[, TF32]) it times inference (forward under
no_grad) and training (forward + backward to the input and all weights), interleaving the two
implementations, and reports medians: time, tokens/s (T*N per second), time per step, speedup.
Prints a table and writes JSON (machine, versions, flags, results).

  python benchmarks/bench_gru.py                      # CPU: T=128 N=16 I=H=256, fp32, 2 threads
  python benchmarks/bench_gru.py --device cuda        # T=256, N in 1,16,64,256, H in 256,1024,
                                                      # bf16 and fp32 with TF32 on and off
"""

import argparse
import itertools
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import fusedgru  # noqa: E402
from _common import DTYPES, Timer, machine_info, median_times, progress, write_record  # noqa: E402

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--T", type=int, nargs="+", help="sequence lengths")
    p.add_argument("--N", type=int, nargs="+", help="batch sizes")
    p.add_argument("--H", type=int, nargs="+", help="hidden sizes")
    p.add_argument("--I", type=int, nargs="+", help="input sizes (default: I = H)")
    p.add_argument("--layers", type=int, nargs="+", default=[1])
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--variant", default="gru", choices=["gru", "layernorm", "packed", "cell"],
                   help="gru: fusedgru.GRU vs nn.GRU; layernorm: fusedgru.LayerNormGRU (the cost "
                        "of its normalization, against the same nn.GRU); packed: variable "
                        "lengths drawn uniformly from 1..T, nn.GRU on a PackedSequence (packing "
                        "and unpacking included) vs fusedgru.GRU(x, lengths=...) on the padded "
                        "batch; cell: streaming, T steps of fusedgru.GRUCell vs nn.GRUCell in a "
                        "Python loop carrying h (1 layer)")
    p.add_argument("--dtype", nargs="+", choices=list(DTYPES))
    p.add_argument("--tf32", nargs="+", choices=["on", "off"],
                   help="fp32 on CUDA: torch.backends.cudnn/cuda.matmul.allow_tf32, the same "
                        "setting for both implementations (default: both)")
    p.add_argument("--paths", nargs="+", default=["auto"], choices=["auto", "per-step"],
                   help="CUDA: auto (the planner's choice: the persistent kernels where they "
                        "fit) and/or per-step (FUSEDGRU_PERSISTENT=0), each point in one process")
    p.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    p.add_argument("--threads", type=int, default=2, help="CPU intra-op threads")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--out", help="JSON path (default: benchmarks/results/<date>-<device>.json)")
    p.add_argument("--plot", action="store_true", help="also write a PNG of speedup vs batch")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    args.T = args.T or ([256] if cuda else [128])
    args.N = args.N or ([1, 16, 64, 256] if cuda else [16])
    args.H = args.H or ([256, 1024] if cuda else [256])
    args.dtype = args.dtype or (["bf16", "fp32"] if cuda else ["fp32"])
    args.tf32 = args.tf32 or ["on", "off"]
    return args


def bench_point(args, T, N, I, H, L, dtype_name, tf32, path):
    device, dtype = args.device, DTYPES[dtype_name]
    # The planner reads FUSEDGRU_PERSISTENT at every call.
    if path == "per-step":
        os.environ["FUSEDGRU_PERSISTENT"] = "0"
    else:
        os.environ.pop("FUSEDGRU_PERSISTENT", None)
    if device == "cuda":
        torch.backends.cudnn.allow_tf32 = tf32 == "on"
        torch.backends.cuda.matmul.allow_tf32 = tf32 == "on"
    if args.variant == "cell":
        ref = nn.GRUCell(I, H).to(device, dtype)
    else:
        ref = nn.GRU(I, H, num_layers=L, bidirectional=args.bidirectional).to(device, dtype)
    if args.variant == "cell":
        ours = fusedgru.GRUCell(I, H).to(device, dtype)
        ours.load_state_dict(ref.state_dict())
    elif args.variant == "layernorm":
        ours = fusedgru.LayerNormGRU(I, H, num_layers=L, bidirectional=args.bidirectional)
        ours.to(device, dtype).load_state_dict(ref.state_dict(), strict=False)
    else:
        ours = fusedgru.GRU(I, H, num_layers=L, bidirectional=args.bidirectional)
        ours.to(device, dtype).load_state_dict(ref.state_dict())
    x = torch.randn(T, N, I, device=device, dtype=dtype)
    xg = x.clone().requires_grad_()
    D = 2 if args.bidirectional else 1
    go = torch.randn(T, N, D * H, device=device, dtype=dtype)
    run = {ref: lambda m, inp: m(inp)[0], ours: lambda m, inp: m(inp)[0]}
    if args.variant == "cell":
        go = go[:, :, :H]

        def stream(m, inp):
            h, outs = None, []
            for t in range(inp.shape[0]):
                h = m(inp[t], h)
                outs.append(h)
            return torch.stack(outs)

        run = {ref: stream, ours: stream}
    if args.variant == "packed":
        lengths = torch.randint(1, T + 1, (N,))
        lengths_dev = lengths.to(device)
        go = go * (torch.arange(T).unsqueeze(1) < lengths).to(device, dtype).unsqueeze(2)

        def packed(m, inp):
            seq = nn.utils.rnn.pack_padded_sequence(inp, lengths, enforce_sorted=False)
            return nn.utils.rnn.pad_packed_sequence(m(seq)[0], total_length=T)[0]

        run = {ref: packed, ours: lambda m, inp: m(inp, lengths=lengths_dev)[0]}

    def fwd(m):
        with torch.no_grad():
            run[m](m, x)

    def fwdbwd(m):
        out = run[m](m, xg)
        torch.autograd.grad(out, [xg, *m.parameters()], go)

    timer = Timer(device)
    rows = []
    for mode in args.modes:
        fn = fwd if mode == "fwd" else fwdbwd
        med = median_times({"nn.GRU": lambda fn=fn: fn(ref), "fusedgru": lambda fn=fn: fn(ours)},
                           args.warmup, args.reps, timer)
        t_ref, t_ours = med["nn.GRU"], med["fusedgru"]
        rows.append(dict(variant=args.variant, T=T, N=N, I=I, H=H, layers=L,
                         bidirectional=args.bidirectional,
                         dtype=dtype_name, tf32=tf32 if dtype_name == "fp32" else None,
                         path=path, mode=mode, ref_ms=t_ref, fusedgru_ms=t_ours, speedup=t_ref / t_ours,
                         fusedgru_tokens_per_s=T * N / (t_ours / 1e3),
                         fusedgru_us_per_step=1e3 * t_ours / (T * L),
                         ref_us_per_step=1e3 * t_ref / (T * L)))
    return rows


def print_table(rows, device):
    ref_name = "cuDNN" if device == "cuda" else "nn.GRU"
    if rows and rows[0]["variant"] == "cell":
        ref_name = "nn.GRUCell"
    head = (f"{'dtype':>5} {'tf32':>4} {'path':>8} {'T':>5} {'N':>5} {'I':>5} {'H':>5} {'L':>2} "
            f"{'mode':>7} "
            f"{ref_name + ' ms':>10} {'fusedgru ms':>12} {'speedup':>8} {'tokens/s':>11} "
            f"{'us/step':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['dtype']:>5} {r['tf32'] or '-':>4} {r['path']:>8} {r['T']:>5} {r['N']:>5} "
              f"{r['I']:>5} "
              f"{r['H']:>5} {r['layers']:>2} {r['mode']:>7} {r['ref_ms']:>10.3f} "
              f"{r['fusedgru_ms']:>12.3f} {r['speedup']:>7.2f}x "
              f"{r['fusedgru_tokens_per_s']:>11.3g} {r['fusedgru_us_per_step']:>8.1f}")


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, mode in zip(axes, ["fwd", "fwdbwd"]):
        groups = {}
        for r in rows:
            if r["mode"] == mode:
                key = f"{r['dtype']}{'/tf32 ' + r['tf32'] if r['tf32'] else ''} H={r['H']}"
                groups.setdefault(key, []).append((r["N"], r["speedup"]))
        for key, pts in sorted(groups.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch N")
        ax.set_title("forward" if mode == "fwd" else "forward + backward")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("speedup over nn.GRU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    torch.set_num_threads(args.threads) if args.device == "cpu" else None
    torch.manual_seed(0)
    info = machine_info(args.device)
    points = []
    for T, N, H, L, dt in itertools.product(args.T, args.N, args.H, args.layers, args.dtype):
        for I in (args.I or [H]):
            for tf32 in (args.tf32 if dt == "fp32" and args.device == "cuda" else [None]):
                for path in (args.paths if args.device == "cuda" else ["auto"]):
                    points.append((T, N, I, H, L, dt, tf32, path))
    rows = []
    for point in progress(points, "bench_gru"):
        rows.extend(bench_point(args, *point))
    print_table(rows, args.device)
    out = write_record("bench_gru", args, info, rows)
    if args.plot:
        png = os.path.splitext(out)[0] + ".png"
        plot(rows, png)
        print(f"wrote {png}")


if __name__ == "__main__":
    main()
