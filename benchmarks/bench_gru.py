"""fusedgru.GRU against torch.nn.GRU (cuDNN on CUDA) on one device, in the same process.

For every point of the grid (T, N, I, H, layers, dtype[, TF32]) it times inference (forward under
no_grad) and training (forward + backward to the input and all weights), interleaving the two
implementations, and reports medians: time, tokens/s (T*N per second), time per step, speedup.
Prints a table and writes JSON (machine, versions, flags, results, the sentences).

  python benchmarks/bench_gru.py                      # CPU: T=128 N=16 I=H=256, fp32, 2 threads
  python benchmarks/bench_gru.py --device cuda        # T=256, N in 1,16,64,256, H in 256,1024,
                                                      # bf16 and fp32 with TF32 on and off
  python benchmarks/bench_gru.py --seq-len 64 --batch 1 8 --hidden 1024 --variant cell
  python benchmarks/bench_gru.py --peers onnxruntime openvino --modes fwd   # CPU inference peers
  python benchmarks/bench_gru.py --variant stream --seq-len 64 --batch 1 --modes fwd \
      --peers onnxruntime openvino          # one call per step carrying h, the peers too
  python benchmarks/bench_gru.py --paths auto aten-gemm   # CPU: packed GEMM vs ATen's
  python benchmarks/bench_gru.py --fp32-matmul ieee bf16   # CPU: strict fp32, and both under
                                                          # torch's bf16 matmul precision

Each row is also said in a sentence ("fusedgru is 1.34x faster than nn.GRU forward (...)").
The JSON goes to benchmarks/runs/ (ignored by git) under a new name per run, see --out.
"""

import importlib.util
import itertools
import os
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _common as common  # noqa: E402
import peers  # noqa: E402

import fusedgru  # noqa: E402

# A peer's output may differ from nn.GRU's by float32 rounding over T steps (measured ~1e-7 at
# T=4, ~1e-6 at T=128): 1e-4 of the output's scale flags a wrong conversion, not rounding.
PEER_TOLERANCE = 1e-4

# The JSON's name suffix per variant (none for the plain GRU, as in benchmarks/results/).
SUFFIX = {"gru": "", "layernorm": "layernorm", "packed": "packed", "cell": "cell",
          "stream": "stream"}


# --paths: the switches the planners read at every call, as each path sets them (unset: the
# default choice).
PATH_ENV = {"auto": {}, "per-step": {"FUSEDGRU_PERSISTENT": "0"},
            "persistent": {"FUSEDGRU_PERSISTENT": "1"}, "aten-gemm": {"FUSEDGRU_PACKED_GEMM": "0"}}
PATH_VARS = sorted({var for env in PATH_ENV.values() for var in env})


def parse_args(argv=None):
    p = common.bench_parser(__doc__)
    # Lower-case names; the short capitals of earlier versions (--T, --N, ...) still work.
    p.add_argument("--seq-len", "--T", dest="T", type=common.positive_int, nargs="+", metavar="T",
                   help="sequence lengths T (default: 128 on the CPU, 256 on CUDA)")
    p.add_argument("--batch", "--N", dest="N", type=common.positive_int, nargs="+", metavar="N",
                   help="batch sizes N (default: 16 on the CPU; 1 16 64 256 on CUDA)")
    p.add_argument("--hidden", "--H", dest="H", type=common.positive_int, nargs="+", metavar="H",
                   help="hidden sizes H (default: 256 on the CPU; 256 1024 on CUDA)")
    p.add_argument("--input-size", "--I", dest="I", type=common.positive_int, nargs="+",
                   metavar="I", help="input sizes I (default: I = H)")
    p.add_argument("--num-layers", "--layers", dest="layers", type=common.positive_int, nargs="+",
                   default=[1], metavar="L", help="numbers of layers (default: 1)")
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--variant", default="gru",
                   choices=["gru", "layernorm", "packed", "cell", "stream"],
                   help="gru: fusedgru.GRU vs nn.GRU; layernorm: fusedgru.LayerNormGRU (the cost "
                        "of its normalization, against the same nn.GRU); packed: variable "
                        "lengths drawn uniformly from 1..T, nn.GRU on a PackedSequence (packing "
                        "and unpacking included) vs fusedgru.GRU(x, lengths=...) on the padded "
                        "batch; cell: streaming, T steps of fusedgru.GRUCell vs nn.GRUCell in a "
                        "Python loop carrying h (1 layer); stream: streaming inference, T calls "
                        "of fusedgru.GRU vs nn.GRU on one step [1, N, I] each, carrying h_n "
                        "(the peers too: one session call per step with its state)")
    p.add_argument("--dtype", nargs="+", choices=list(common.DTYPES))
    p.add_argument("--tf32", nargs="+", choices=["on", "off"],
                   help="fp32 on CUDA: torch.backends.cudnn/cuda.matmul.allow_tf32, the same "
                        "setting for both implementations (default: both)")
    p.add_argument("--fp32-matmul", nargs="+", choices=["ieee", "bf16"], default=["ieee"],
                   help="fp32 on the CPU: torch.backends.mkldnn.matmul.fp32_precision for both "
                        "(bf16: what torch.set_float32_matmul_precision('medium') sets; nn.GRU's "
                        "products and ours then round their operands to bf16 where torch's "
                        "do); default: ieee")
    p.add_argument("--paths", nargs="+", default=["auto"],
                   choices=list(PATH_ENV),
                   help="auto: the default choices; CUDA: per-step (FUSEDGRU_PERSISTENT=0) "
                        "or persistent (=1: the persistent kernels wherever they fit, whatever "
                        "the cost model predicts) instead; CPU: aten-gemm "
                        "(FUSEDGRU_PACKED_GEMM=0: fp32 products through ATen instead of the "
                        "packed AVX-512 GEMM); each point in one process")
    p.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    p.add_argument("--peers", nargs="+", default=[], choices=peers.PEERS,
                   help="CPU, fp32, --variant gru: also time these runtimes' GRU forward on the "
                        "same weights (benchmarks/peers.py; outputs checked against nn.GRU "
                        "first; same thread count; the bench extra installs them)")
    common.add_timing_args(p, warmup=3, reps=20)
    p.add_argument("--out", help=common.out_help("[-<variant>]", "", " (no <variant> for gru)"))
    p.add_argument("--plot", action="store_true",
                   help="also write a PNG of speedup vs batch beside the JSON (same name, .png)")
    args = common.parse_bench_args(p, argv)
    cuda = args.device == "cuda"
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        p.error("--plot needs matplotlib: pip install matplotlib (or make examples-deps)")
    args.T = args.T or ([256] if cuda else [128])
    args.N = args.N or ([1, 16, 64, 256] if cuda else [16])
    args.H = args.H or ([256, 1024] if cuda else [256])
    args.dtype = args.dtype or (["bf16", "fp32"] if cuda else ["fp32"])
    args.tf32 = args.tf32 or ["on", "off"]
    if cuda and args.fp32_matmul != ["ieee"]:
        p.error("--fp32-matmul: --device cpu only (on CUDA, --tf32)")
    for path, device in (("per-step", "cuda"), ("persistent", "cuda"), ("aten-gemm", "cpu")):
        if path in args.paths and args.device != device:
            p.error(f"--paths {path}: --device {device} only")
    if args.peers and (cuda or args.variant not in ("gru", "stream") or args.dtype != ["fp32"]
                       or args.fp32_matmul != ["ieee"]):
        p.error("--peers: CPU, --variant gru or stream, --dtype fp32, --fp32-matmul ieee only "
                "(the peers' strict fp32 inference path)")
    if args.variant == "stream" and (args.modes != ["fwd"] or args.layers != [1]
                                     or args.bidirectional):
        p.error("--variant stream: --modes fwd, one layer, one direction (inference steps)")
    available = []
    for peer in args.peers:
        if peer_missing := peers.missing(peer):
            print(f"[bench_gru] --peers {peer}: skipped, {' and '.join(peer_missing)} not "
                  f"installed (pip install {' '.join(peer_missing)}, or the bench extra)",
                  file=sys.stderr)
        else:
            available.append(peer)
    args.peers = available
    return args


def bench_point(args, T, N, I, H, L, dtype_name, tf32, fp32_matmul, path):
    """One grid point with the path's switches and the CPU's fp32 matmul precision set, both
    given back afterwards."""
    saved = {var: os.environ.get(var) for var in PATH_VARS}
    matmul = torch.backends.mkldnn.matmul
    saved_precision = matmul.fp32_precision
    try:
        for var in PATH_VARS:
            os.environ.pop(var, None)
        os.environ.update(PATH_ENV[path])
        if fp32_matmul is not None:
            matmul.fp32_precision = fp32_matmul
        return timed_point(args, T, N, I, H, L, dtype_name, tf32, fp32_matmul, path)
    finally:
        matmul.fp32_precision = saved_precision
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def timed_point(args, T, N, I, H, L, dtype_name, tf32, fp32_matmul, path):
    device, dtype = args.device, common.DTYPES[dtype_name]
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
    if args.variant == "stream":
        h0 = torch.randn(1, N, H, device=device, dtype=dtype)

        def steps(m, inp):
            h, outs = h0, []
            for t in range(inp.shape[0]):
                out, h = m(inp[t:t + 1], h)
                outs.append(out)
            return torch.cat(outs)

        run = {ref: steps, ours: steps}
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

    # The peers (inference only), each checked against nn.GRU before it is timed.
    peer_fns = {}
    if args.peers:
        x_np = x.numpy()
        with torch.no_grad():
            want = run[ref](ref, x)
        for peer in args.peers:
            if args.variant == "stream":
                step = peers.make_runner(peer, ref, args.threads, state=True)
                h0_np = h0.numpy()

                def runner(x_np, step=step, h0_np=h0_np):
                    h, outs = h0_np, []
                    for t in range(x_np.shape[0]):
                        out, h = step(x_np[t:t + 1], h)
                        outs.append(out)
                    return np.concatenate(outs)
            else:
                runner = peers.make_runner(peer, ref, args.threads)
            err = (torch.from_numpy(runner(x_np)) - want).abs().max().item()
            if err > PEER_TOLERANCE * max(1.0, want.abs().max().item()):
                raise RuntimeError(f"{peer} disagrees with nn.GRU by {err:.3g} (T={T} N={N} "
                                   f"I={I} H={H}): not timed")
            peer_fns[peer] = lambda runner=runner: runner(x_np)

    # Agreement before timing: ||ours - nn.GRU|| / ||nn.GRU|| on the forward output, so a row's
    # speed never stands without its correctness (the tests hold the tolerances).
    with torch.no_grad():
        want, got = run[ref](ref, x).double(), run[ours](ours, x).double()
        err = ((got - want).norm() / want.norm().clamp_min(1e-30)).item()
    timer = common.Timer(device)
    rows = []
    for mode in args.modes:
        fn = fwd if mode == "fwd" else fwdbwd
        fns = {"nn.GRU": lambda fn=fn: fn(ref), "fusedgru": lambda fn=fn: fn(ours)}
        if mode == "fwd":
            fns.update(peer_fns)
        med = common.median_times(fns, args.warmup, args.reps, timer)
        t_ref, t_ours = med["nn.GRU"], med["fusedgru"]
        peer_ms = {peer: med[peer] for peer in peer_fns} if mode == "fwd" else {}
        rows.append(dict(variant=args.variant, T=T, N=N, I=I, H=H, layers=L,
                         bidirectional=args.bidirectional,
                         dtype=dtype_name, tf32=tf32 if dtype_name == "fp32" else None,
                         fp32_matmul=fp32_matmul, path=path, mode=mode, ref_ms=t_ref,
                         fusedgru_ms=t_ours,
                         speedup=t_ref / t_ours, rel_err_vs_ref=err,
                         fusedgru_tokens_per_s=T * N / (t_ours / 1e3),
                         fusedgru_us_per_step=1e3 * t_ours / (T * L),
                         ref_us_per_step=1e3 * t_ref / (T * L), peers_ms=peer_ms,
                         vs_fastest_peer=min(peer_ms.values()) / t_ours if peer_ms else None))
    return rows


def names(variant, device):
    """(ours, reference) as the sentences and the table name them."""
    ref = {"cell": "nn.GRUCell", "packed": "nn.GRU on a PackedSequence",
           "stream": "nn.GRU one call per step"}.get(variant, "nn.GRU")
    if device == "cuda" and variant != "cell":
        ref = ref.replace("nn.GRU", "nn.GRU (cuDNN)")
    ours = {"cell": "fusedgru.GRUCell", "layernorm": "fusedgru.LayerNormGRU"}.get(variant,
                                                                                "fusedgru")
    return ours, ref


def sentence(r, device):
    """The row in words: "fusedgru is 1.34x faster than nn.GRU forward (T=128 N=16 H=256
    fp32)"."""
    ours, ref = names(r["variant"], device)
    what = "forward" if r["mode"] == "fwd" else "forward + backward"
    where = f"T={r['T']} N={r['N']}" + (f" I={r['I']}" if r["I"] != r["H"] else "") + \
        f" H={r['H']}" + (f" layers={r['layers']}" if r["layers"] != 1 else "") + \
        (" bidirectional" if r["bidirectional"] else "") + f" {r['dtype']}" + \
        (f" tf32 {r['tf32']}" if r["tf32"] else "") + \
        (" bf16 matmul precision" if r.get("fp32_matmul") == "bf16" else "") + \
        (f" {r['path']} path" if r["path"] != "auto" else "")
    return common.speed_sentence(ours, ref, r["fusedgru_ms"], r["ref_ms"], f"{what} ({where})")


def sentences(r, device):
    """The row against nn.GRU, then against each peer, in words."""
    out = [sentence(r, device)]
    where = sentence(r, device).split(" forward", 1)[1]
    for peer, ms in r["peers_ms"].items():
        out.append(common.speed_sentence("fusedgru", f"{peer} {peers.version(peer)}",
                                         r["fusedgru_ms"], ms, "forward" + where))
    return out


def print_table(rows, device):
    ours, ref = names(rows[0]["variant"] if rows else "gru", device)
    ref = ref.replace(" on a PackedSequence", " packed")
    bf16_mm = any(r.get("fp32_matmul") == "bf16" for r in rows)
    cols = [("dtype", 5), ("tf32", 4)] + ([("fp32 matmul", 11)] if bf16_mm else []) + [
            ("path", 10), ("T", 5), ("N", 5), ("I", 5), ("H", 5),
            ("L", 2), ("mode", 7), (f"{ref} [ms]", 12), ("fusedgru [ms]", 13),
            ("speedup [x]", 11), ("fusedgru [tokens/s]", 19), ("fusedgru [us/step]", 18),
            (f"{ref} [us/step]", 17), ("rel err", 8)]
    peer_names = sorted({p for r in rows for p in r["peers_ms"]})
    cols += [(f"{p} [ms]", 12) for p in peer_names]
    if peer_names:
        cols.append(("vs fastest peer [x]", 19))
    widths = [max(w, len(name)) for name, w in cols]
    head = " ".join(f"{name:>{w}}" for (name, _), w in zip(cols, widths))
    print(head)
    print("-" * len(head))
    for r in rows:
        cells = [r["dtype"], r["tf32"] or "-"] + \
            ([r["fp32_matmul"] or "-"] if bf16_mm else []) + \
            [r["path"], r["T"], r["N"], r["I"], r["H"], r["layers"], r["mode"],
             f"{r['ref_ms']:.3f}", f"{r['fusedgru_ms']:.3f}", f"{r['speedup']:.2f}x",
             f"{r['fusedgru_tokens_per_s']:.3g}", f"{r['fusedgru_us_per_step']:.1f}",
             f"{r['ref_us_per_step']:.1f}", f"{r['rel_err_vs_ref']:.1e}"]
        cells += [f"{r['peers_ms'][p]:.3f}" if p in r["peers_ms"] else "-" for p in peer_names]
        if peer_names:
            cells.append(f"{r['vs_fastest_peer']:.2f}x" if r["vs_fastest_peer"] else "-")
        print(" ".join(f"{str(c):>{w}}" for c, w in zip(cells, widths)))
    common.legend(f"speedup = {ref} time / fusedgru time (> 1: fusedgru is faster); tokens/s = "
                  f"T*N per second; us/step = time / (T * layers); fwd = forward under no_grad, "
                  f"fwdbwd = forward + backward to the input and all weights. Medians of --reps "
                  f"calls. rel err = ||fusedgru - {ref}|| / ||{ref}|| on the forward output." +
                  (" vs fastest peer = the fastest peer's time / fusedgru time (peers: forward "
                   "only, same weights and threads)." if peer_names else ""))
    for r in rows:
        for line in sentences(r, device):
            print(line)


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
    points = []
    for T, N, H, L, dt in itertools.product(args.T, args.N, args.H, args.layers, args.dtype):
        for I in (args.I or [H]):
            for tf32 in (args.tf32 if dt == "fp32" and args.device == "cuda" else [None]):
                for mm in (args.fp32_matmul if dt == "fp32" and args.device == "cpu"
                           else [None]):
                    for path in args.paths:
                        points.append((T, N, I, H, L, dt, tf32, mm, path))
    info, rows = common.run_points(args, "bench_gru", points, bench_point)
    if args.peers:
        info["peers"] = {peer: peers.version(peer) for peer in args.peers}
    print_table(rows, args.device)
    out = common.output_path(args, SUFFIX[args.variant], info)
    common.write_record("bench_gru", args, info, rows, out,
                 summary=[line for r in rows for line in sentences(r, args.device)])
    if args.plot:
        png = os.path.splitext(out)[0] + ".png"
        plot(rows, png)
        print(f"wrote {png}")
    return out


if __name__ == "__main__":
    main()
