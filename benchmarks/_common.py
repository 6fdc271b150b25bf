"""Shared pieces of the benchmarks: arguments, machine description, timing, progress, JSON
records."""

import argparse
import datetime
import json
import os
import platform
import re
import sys
import time

import torch

import fusedgru

DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16,
          "fp16": torch.float16}


def machine_info(device):
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "fusedgru": fusedgru.__version__,
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}
    try:
        with open("/proc/cpuinfo") as f:
            names = re.findall(r"model name\s*:\s*(.*)", f.read())
        info["cpu"] = names[0] if names else info["cpu"]
        info["cpu_count"] = len(names)
    except OSError:
        pass
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, sm_count=props.multi_processor_count,
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def device_tag(device, info):
    if device == "cuda":
        name = info["gpu"].lower()
        m = re.search(r"(h100|h200|a100|b200|l40s?|l4|a10g?|v100|t4|rtx ?\d+)", name)
        return (m.group(1) if m else re.sub(r"[^a-z0-9]+", "-", name)).replace(" ", "")
    return cpu_tag(torch.get_num_threads())


class Timer:
    """Median wall time of a callable: CUDA events on the GPU, perf_counter on the CPU."""

    def __init__(self, device):
        self.cuda = device == "cuda"

    def __call__(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3



# Pause before each block on the CPU (not timed), so that the thread pool of the implementation
# timed just before has gone idle: ONNX Runtime's workers spin for 50-100 ms after a run (its
# default, session.intra_op.allow_spinning), libgomp's (PyTorch's) and OpenVINO's for a few ms,
# and on a 2-core machine a spinning pool takes the cores from whoever runs next. Measured on the
# 2-core VM (benchmarks/NOTES.md, 2026-12-05): fusedgru T=128 N=16 H=256 15.6 ms after itself,
# 38.3 ms right after ONNX Runtime, 31.8 ms 50 ms after it, 16.4-16.8 ms 100-200 ms after it;
# OpenVINO 17.9 ms after itself, 24.1 ms right after fusedgru, 18.3 ms 10 ms after it.
CPU_SETTLE_S = 0.2


def median_times(fns, warmup, reps, timer, rounds=3):
    """Median time of each callable in `fns` (a dict). Each round times every callable in a block
    of consecutive calls, in alternating order, so slow drifts hit all alike while one
    implementation's allocations (page faults of freshly mapped buffers on the CPU) do not leak
    into another's timings. On the CPU each block starts after CPU_SETTLE_S of quiet, so that
    no other implementation's spinning threads are still on the cores."""
    import statistics

    keys = list(fns)
    times = {k: [] for k in keys}
    per_round = max(1, reps // rounds)
    for r in range(rounds):
        for k in (keys if r % 2 == 0 else keys[::-1]):
            if not timer.cuda:
                time.sleep(CPU_SETTLE_S)
            for _ in range(warmup):
                fns[k]()
            for _ in range(per_round):
                times[k].append(timer(fns[k]))
    return {k: statistics.median(v) for k, v in times.items()}


def progress(items, desc):
    """tqdm progress bar when tqdm is installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit="config")


BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
# User runs land here (ignored by git); benchmarks/results/ holds the committed ones, written
# there only with an explicit --out.
RUNS_DIR = os.path.join(BENCH_DIR, "runs")


def positive_int(text):
    """argparse type: an integer >= 1 ("argument --T: must be >= 1, got 0" otherwise)."""
    return _int_at_least(text, 1)


def nonnegative_int(text):
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text, low):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


def bench_parser(doc):
    """The argument parser every benchmark starts from (its docstring as description): --device."""
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    return p


def add_timing_args(p, warmup, reps):
    """--threads, --warmup and --reps (defaults ``warmup`` and ``reps``)."""
    p.add_argument("--threads", type=positive_int, default=2, help="CPU intra-op threads")
    p.add_argument("--warmup", type=nonnegative_int, default=warmup,
                   help="untimed calls before each timed block")
    p.add_argument("--reps", type=positive_int, default=reps, help="timed calls per implementation")


def parse_bench_args(p, argv):
    """``p.parse_args(argv)``; an argparse error for --device cuda without a visible device."""
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    return args


def run_points(args, name, points, bench_point):
    """``bench_point(args, *point)`` for every point, after the common set-up (the CPU's thread
    count, the seed); returns the machine description and all points' rows."""
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    info = machine_info(args.device)
    rows = []
    for point in progress(points, name):
        rows.extend(bench_point(args, *point))
    return info, rows


def cpu_tag(threads):
    """The device part of a CPU run's file name: cpu<cores>-<threads>threads."""
    return f"cpu{_cpu_count()}-{threads}threads"


def _cpu_count():
    try:
        with open("/proc/cpuinfo") as f:
            return len(re.findall(r"model name\s*:", f.read())) or os.cpu_count()
    except OSError:
        return os.cpu_count()


def default_name(suffix, device_tag_text):
    """<date>-<device>[-<suffix>].json: the name of a run's JSON when --out is not given."""
    tail = f"-{suffix}" if suffix else ""
    return f"{datetime.date.today().isoformat()}-{device_tag_text}{tail}.json"


def out_help(pattern, example_suffix, note="", threads=2):
    """The --out help: names the file a run writes by default (on this machine, today)."""
    example = "benchmarks/runs/" + default_name(example_suffix, cpu_tag(threads))
    return (f"JSON path, written as given (--plot's PNG goes beside it, same name). Default: "
            f"benchmarks/runs/<date>-<device>{pattern}.json{note}, with <device> "
            f"cpu<cores>-<threads>threads or the GPU's name (e.g. h100): here {example}. A "
            f"default name never overwrites: -2, -3, ... are appended when it is taken. "
            f"benchmarks/runs/ is ignored by git; to keep a result, pass "
            f"--out benchmarks/results/NAME.json")


def unique_path(path, companions=(".png",)):
    """``path`` itself if neither it nor its companions (same stem, e.g. the PNG of a run)
    exist, else the first of stem-2.json, stem-3.json, ... for which none exists."""
    stem, ext = os.path.splitext(path)
    candidate, n = stem, 1
    while any(os.path.exists(candidate + e) for e in (ext, *companions)):
        n += 1
        candidate = f"{stem}-{n}"
    return candidate + ext


def output_path(args, suffix, info):
    """Where a run writes its JSON: ``args.out`` as given, else a fresh name in RUNS_DIR that
    carries the device and ``suffix`` (the variant) and takes no existing file's place."""
    if args.out:
        return args.out
    return unique_path(os.path.join(RUNS_DIR, default_name(suffix, device_tag(args.device, info))))


def compared(t_ours, t_ref):
    """How a time compares with a reference time, in words: "1.34x faster than", "1.20x slower
    than" or "as fast as" (within 0.5%)."""
    ratio = t_ref / t_ours
    if abs(ratio - 1) < 0.005:
        return "as fast as"
    if ratio > 1:
        return f"{ratio:.2f}x faster than"
    return f"{1 / ratio:.2f}x slower than"


def legend(text, width=100):
    """Print the table's legend wrapped at ``width`` columns."""
    import textwrap

    print(textwrap.fill(text, width))


def speed_sentence(ours_name, ref_name, t_ours, t_ref, what):
    """One row in words: "fusedgru is 1.34x faster than nn.GRU forward (T=128 ...)"."""
    return f"{ours_name} is {compared(t_ours, t_ref)} {ref_name} {what}"


def write_record(name, args, info, rows, out, summary=()):
    """Write the JSON record of a run (machine, versions, flags, results, the summary sentences)
    to ``out`` (see output_path)."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    record = {"benchmark": name, "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "machine": info, "flags": vars(args), "results": rows, "summary": list(summary)}
    with open(out, "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {out}")
    return out
