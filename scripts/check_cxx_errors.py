"""Whether a C++ argument check of the compiled extension raises a Python error or crashes, on
each device, each in a child process so that a crash is reported instead of ending this one; then
what decides it: the C++ standard library the process maps, and the libstdc++ template code the
extension defines itself (a dlopen'ed library binds its own definitions first).

Why: on the GPU machine (torch 2.11, GCC 13) a TORCH_CHECK that formats an integer segfaulted in
std::basic_ostream::_M_insert<long>, resolved inside fusedgru/_C.abi3.so, for CPU and CUDA ops
alike (2026-12-04, benchmarks/NOTES.md "GPU bring-up"); on the CPU CI machine it raises.

    python scripts/check_cxx_errors.py [--device cpu cuda]   # exit 1 if any check crashed
"""

import argparse
import subprocess
import sys

# A bad weight for the causal conv: the message formats integers ("weight has 3 channels but x
# has 5"), the path that crashed.
BAD_CALL = ("import torch, fusedgru; d = {device!r}; "
            "x = torch.randn(2, 5, 9, device=d); w = torch.randn(3, 4, device=d)\n"
            "try:\n    fusedgru.causal_conv1d(x, w, None)\n"
            "except RuntimeError as e:\n    print('raised:', str(e).splitlines()[0])\n")


def run_bad_call(device):
    r = subprocess.run([sys.executable, "-c", BAD_CALL.format(device=device)],
                       capture_output=True, text=True, timeout=120)
    ok = r.returncode == 0 and "raised: weight has 3 channels but x has 5" in r.stdout
    what = r.stdout.strip() or (r.stderr.strip().splitlines() or ["(no output)"])[-1]
    print(f"{device}: exit {r.returncode}: {what}")
    return ok


def report_libraries():
    import torch  # noqa: F401  (maps the C++ runtime the way a user's process does)

    import fusedgru._C
    with open("/proc/self/maps") as f:
        libs = sorted({line.split()[-1] for line in f if "libstdc++" in line})
    print("libstdc++ mapped:", ", ".join(libs) or "none")
    so = fusedgru._C.__file__
    r = subprocess.run(["nm", "-C", "--defined-only", so], capture_output=True, text=True)
    lines = r.stdout.splitlines()
    std = [line for line in lines
           if " std::" in line and any(k in line for k in ("basic_ostream", "locale", "num_put"))]
    print(f"{so}: defines {len(std)} std:: stream/locale symbols itself")
    for line in std[:12]:
        print("  ", line)
    # Pieces of the C++ runtime itself (not template instantiations): present only when
    # libstdc++ was linked in statically, in part or whole.
    runtime = [line for line in lines if any(k in line for k in (
        "std::codecvt<char16_t", "std::ios_base::Init::Init", "__cxa_throw", "std::locale::_Impl"))]
    print(f"C++ runtime symbols defined in it (static libstdc++?): {len(runtime)}")
    for line in runtime[:6]:
        print("  ", line)
    r = subprocess.run(["readelf", "-d", so], capture_output=True, text=True)
    print("NEEDED:", ", ".join(line.split("[")[-1].rstrip("]") for line in r.stdout.splitlines()
                               if "(NEEDED)" in line))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", nargs="+", default=["cpu", "cuda"])
    args = p.parse_args()
    results = [run_bad_call(d) for d in args.device]
    report_libraries()
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
