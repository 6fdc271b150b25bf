"""Speaker classification from speech features: fusedgru.GRU (on a PackedSequence) against
fusedgru.models.CausalConvGRU(attention="pool") (on the padded batch with lengths).

Data: UCI/UEA Japanese Vowels, shipped in the sktime wheel: 12 LPC cepstrum coefficients per
frame, 7-29 frames per utterance, 9 speakers; 270 training and 370 test utterances. Features are
standardized with training statistics. Reports test accuracy and training time per epoch, plots
the training loss. Writes examples/out/classify.json and classify.png.

  python examples/classify.py [--epochs 40] [--device cpu|cuda] [--seed 0] [--smoke]
"""

import time

import numpy as np
import torch
from _common import japanese_vowels, parser, progress, save_json, setup
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_sequence

import fusedgru
from fusedgru.models import CausalConvGRU

CLASSES = 9


class GRUClassifier(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.gru = fusedgru.GRU(12, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, CLASSES)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, h_n = self.gru(packed)
        return self.head(h_n[-1])


class PoolClassifier(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.body = CausalConvGRU(12, hidden, num_layers=2, kernel_size=3, attention="pool")
        self.head = nn.Linear(hidden, CLASSES)

    def forward(self, x, lengths):
        return self.head(self.body(x, lengths))


def batchify(xs, ys, mean, std):
    seqs = [torch.from_numpy((x - mean) / std) for x in xs]
    return (pad_sequence(seqs, batch_first=True), torch.tensor([len(s) for s in seqs]),
            torch.from_numpy(ys))


def main():
    args = parser(__doc__, epochs=40).parse_args()
    setup(args)
    (x_tr, y_tr, src), (x_te, y_te, _) = japanese_vowels()
    frames = np.concatenate(x_tr)
    mean, std = frames.mean(0), frames.std(0)
    if args.smoke:
        x_tr, y_tr, x_te, y_te = x_tr[:64], y_tr[:64], x_te[:64], y_te[:64]
    X_te, L_te, Y_te = batchify(x_te, y_te, mean, std)
    dev = torch.device(args.device)
    results, curves = {}, {}
    for name, cls in [("fusedgru.GRU", GRUClassifier), ("CausalConvGRU(pool)", PoolClassifier)]:
        torch.manual_seed(args.seed)
        model = cls(64).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        losses, epoch_times = [], []
        for _ in progress(range(1 if args.smoke else args.epochs), desc=name, unit="epoch"):
            model.train()
            perm = np.random.permutation(len(x_tr))
            t0, total = time.perf_counter(), 0.0
            for i in range(0, len(perm), 32):
                b = perm[i:i + 32]
                X, L, Y = batchify([x_tr[j] for j in b], y_tr[b], mean, std)
                loss = nn.functional.cross_entropy(model(X.to(dev), L), Y.to(dev))
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(b)
            epoch_times.append(time.perf_counter() - t0)
            losses.append(total / len(perm))
        model.eval()
        with torch.no_grad():
            pred = model(X_te.to(dev), L_te).argmax(1).cpu()
        acc = float((pred == Y_te).float().mean())
        results[name] = {"test_accuracy": acc, "final_train_loss": losses[-1],
                         "train_seconds_per_epoch": float(np.median(epoch_times))}
        curves[name] = losses
        print(f"{name:>20}: test accuracy {100 * acc:.1f}%  "
              f"{results[name]['train_seconds_per_epoch']:.2f} s/epoch")
    save_json(args, "classify", {
        "dataset": "Japanese Vowels (UCI/UEA, sktime's JapaneseVowels_TRAIN/TEST.ts)",
        "source_file": src, "train": len(x_tr), "test": len(x_te), "device": args.device,
        "epochs": args.epochs, "seed": args.seed, "smoke": args.smoke, "results": results})
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, c in curves.items():
        ax.plot(range(1, len(c) + 1), c,
                label=f"{name} (test acc {100 * results[name]['test_accuracy']:.1f}%)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training cross-entropy")
    ax.set_yscale("log")
    ax.set_title("Japanese Vowels speaker classification")
    ax.legend()
    fig.tight_layout()
    png = f"{args.out}/classify.png"
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
