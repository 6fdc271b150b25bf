"""Next-hour temperature forecasting on a real hourly series: fusedgru.GRU, nn.GRU, nn.LSTM and
fusedgru.models.CausalConvGRU trained the same way on the same chronological split.

Data: hourly air temperature, Seattle 2010 (8,758 hours), shipped in the vega_datasets wheel.
Split 70/10/20 in time; scaling fitted on the training part only; windows of 48 hours predict
the next hour. Reports test sMAPE and RMSE (deg F), training time per epoch, and plots predicted
vs actual. Writes examples/out/forecast.json and forecast.png.

  python examples/forecast.py [--epochs 15] [--device cpu|cuda] [--seed 0] [--smoke]
"""

import time

import numpy as np
import torch
from _common import parser, progress, save_json, seattle_hourly_temperatures, setup
from torch import nn

import fusedgru
from fusedgru.models import CausalConvGRU

WINDOW = 48


class Recurrent(nn.Module):
    """An RNN over the window, then a linear head on its last output."""

    def __init__(self, rnn, hidden):
        super().__init__()
        self.rnn, self.head = rnn, nn.Linear(hidden, 1)

    def forward(self, x):
        out = self.rnn(x)
        out = out[0] if isinstance(out, tuple) else out
        return self.head(out[:, -1]).squeeze(-1)


def make_models(hidden):
    return {
        "fusedgru.GRU": Recurrent(fusedgru.GRU(1, hidden, num_layers=2, batch_first=True), hidden),
        "nn.GRU": Recurrent(nn.GRU(1, hidden, num_layers=2, batch_first=True), hidden),
        "nn.LSTM": Recurrent(nn.LSTM(1, hidden, num_layers=2, batch_first=True), hidden),
        "CausalConvGRU": Recurrent(CausalConvGRU(1, hidden, num_layers=2, kernel_size=4,
                                                conv_activation=None), hidden),
    }


def windows(series, start, end):
    idx = np.arange(max(start, WINDOW), end)
    x = np.stack([series[i - WINDOW:i] for i in idx])[:, :, None]
    return torch.from_numpy(x), torch.from_numpy(series[idx])


def smape(pred, true):
    return float(100 * np.mean(2 * np.abs(pred - true) / (np.abs(pred) + np.abs(true))))


def main():
    args = parser(__doc__, epochs=15).parse_args()
    setup(args)
    series, source = seattle_hourly_temperatures()
    n = len(series)
    n_train, n_val = int(0.7 * n), int(0.1 * n)
    mean, std = series[:n_train].mean(), series[:n_train].std()
    scaled = (series - mean) / std
    x_tr, y_tr = windows(scaled, 0, n_train)
    x_va, y_va = windows(scaled, n_train, n_train + n_val)
    x_te, y_te = windows(scaled, n_train + n_val, n)
    if args.smoke:
        x_tr, y_tr, x_te, y_te = x_tr[:256], y_tr[:256], x_te[:256], y_te[:256]
        x_va, y_va = x_va[:128], y_va[:128]
    dev = torch.device(args.device)
    results, preds = {}, {}
    for name, model in make_models(hidden=64).items():
        torch.manual_seed(args.seed)
        model.to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        epoch_times, best_val, best_state = [], float("inf"), None
        for _ in progress(range(1 if args.smoke else args.epochs), desc=name, unit="epoch"):
            model.train()
            perm = torch.randperm(len(x_tr))
            t0 = time.perf_counter()
            for i in range(0, len(perm), 128):
                b = perm[i:i + 128]
                loss = nn.functional.mse_loss(model(x_tr[b].to(dev)), y_tr[b].to(dev))
                opt.zero_grad()
                loss.backward()
                opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            epoch_times.append(time.perf_counter() - t0)
            model.eval()
            with torch.no_grad():
                val = nn.functional.mse_loss(model(x_va.to(dev)), y_va.to(dev)).item()
            if val < best_val:
                best_val = val
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(best_state)
        model.eval()
        with torch.no_grad():
            p = model(x_te.to(dev)).cpu().numpy() * std + mean
        true = y_te.numpy() * std + mean
        preds[name] = p
        results[name] = {"test_smape_percent": smape(p, true),
                         "test_rmse_degF": float(np.sqrt(np.mean((p - true) ** 2))),
                         "best_val_mse_scaled": best_val,
                         "train_seconds_per_epoch": float(np.median(epoch_times))}
        print(f"{name:>14}: sMAPE {results[name]['test_smape_percent']:.3f}%  "
              f"RMSE {results[name]['test_rmse_degF']:.3f} F  "
              f"{results[name]['train_seconds_per_epoch']:.2f} s/epoch")
    naive = series[n_train + n_val + WINDOW - 1:n - 1] if not args.smoke else None
    record = {"dataset": "Seattle hourly temperature 2010 (vega_datasets seattle-temps.csv)",
              "source_file": source, "hours": n, "window": WINDOW,
              "split": {"train": n_train, "val": n_val, "test": n - n_train - n_val},
              "device": args.device, "epochs": args.epochs, "seed": args.seed,
              "smoke": args.smoke, "results": results}
    if naive is not None:  # persistence baseline: tomorrow's hour = this hour
        record["persistence_baseline_smape_percent"] = smape(
            naive, series[n_train + n_val + WINDOW:])
    save_json(args, "forecast", record)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    k = min(24 * 14, len(y_te))
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.plot((y_te.numpy() * std + mean)[:k], color="black", lw=2, label="actual")
    for name, p in preds.items():
        ax.plot(p[:k], lw=1, label=f"{name} (sMAPE {results[name]['test_smape_percent']:.2f}%)")
    ax.set_xlabel("test hour")
    ax.set_ylabel("temperature (deg F)")
    ax.set_title("Next-hour forecast, first two test weeks")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = f"{args.out}/forecast.png"
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
