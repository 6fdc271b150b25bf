"""Shared pieces of the benchmarks: machine description, timing, progress, JSON records."""

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
    return f"cpu{info.get('cpu_count', os.cpu_count())}-{torch.get_num_threads()}threads"


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



def median_times(fns, warmup, reps, timer, rounds=3):
    """Median time of each callable in `fns` (a dict). Each round times every callable in a block
    of consecutive calls, in alternating order, so slow drifts hit all alike while one
    implementation's allocations (page faults of freshly mapped buffers on the CPU) do not leak
    into another's timings."""
    import statistics

    keys = list(fns)
    times = {k: [] for k in keys}
    per_round = max(1, reps // rounds)
    for r in range(rounds):
        for k in (keys if r % 2 == 0 else keys[::-1]):
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


def write_record(name, args, info, rows):
    """Write the JSON record (default benchmarks/results/<date>-<device>[-name].json)."""
    suffix = "" if name == "bench_gru" else f"-{name.removeprefix('bench_')}"
    out = args.out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results",
        f"{datetime.date.today().isoformat()}-{device_tag(args.device, info)}{suffix}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    record = {"benchmark": name, "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
              "machine": info, "flags": vars(args), "results": rows}
    with open(out, "w") as f:
        json.dump(record, f, indent=1)
    print(f"wrote {out}")
    return out
