"""Builds the host CUDA emulator's extensions (tests/cuda_emu) for the tests.

Static `__shared__` arrays must be per block (cuda_emu.h), and no macro can turn
`__shared__ T name[dims];` into a reference to the block's own copy (the name follows the type).
So the kernels compile from a mirror of csrc/'s headers in the build directory, in which each such
declaration reads `FUSEDGRU_EMU_SHARED(name, dims, T);` on the same line, under a `#line`
directive naming the original file: diagnostics, sanitizer reports and the emulator's call sites
(file:line:column) all point at csrc/. The tests' own kernels (planted.cpp) go through the same
rewrite. Any other use of `__shared__` in compiled code fails to compile (cuda_emu.h).

The sanitizer comes from the environment: FUSEDGRU_EMU_ASAN=1 builds with AddressSanitizer,
FUSEDGRU_EMU_TSAN=1 with ThreadSanitizer; either needs its runtime preloaded into the process
(Makefile targets test-emu-asan and test-emu-tsan, or preload_env for a child process).
"""

import contextlib
import functools
import os
import re
import subprocess

from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")
EMU_DIR = os.path.join(ROOT, "tests", "cuda_emu")

# name: (environment variable, compile and link flags, runtime library, environment of a run).
# TSan: one OpenMP thread, as ATen's OpenMP workers synchronize in ways TSan cannot see (their
# memcpy and free calls would read as races with the test's own threads).
SANITIZERS = {
    "asan": ("FUSEDGRU_EMU_ASAN", ["-fsanitize=address", "-fno-omit-frame-pointer"], "libasan.so",
             {"ASAN_OPTIONS": "detect_leaks=0"}),
    "tsan": ("FUSEDGRU_EMU_TSAN", ["-fsanitize=thread", "-g1"], "libtsan.so",
             {"OMP_NUM_THREADS": "1"}),
}

SHARED_DECL = re.compile(
    r"\b__shared__\s+(?P<type>[^;\[\]]+?)\s+(?P<name>[A-Za-z_]\w*)\s*(?P<dims>(?:\[[^\]]+\])+)\s*;")
HEADER_SUFFIXES = (".h", ".cuh")


def sanitizer():
    """The sanitizer the environment asks for: "asan", "tsan" or None."""
    chosen = [name for name, (var, *_) in SANITIZERS.items() if os.environ.get(var) == "1"]
    if len(chosen) > 1:
        raise RuntimeError(f"at most one of {[SANITIZERS[n][0] for n in chosen]} may be set")
    return chosen[0] if chosen else None


def preload_env(name, env=None):
    """A copy of env (default: os.environ) for a child process that runs a `name` build, with
    the sanitizer's runtime preloaded as the Makefile's targets do."""
    var, _, runtime, run_env = SANITIZERS[name]
    libs = [subprocess.check_output(["gcc", f"-print-file-name={lib}"], text=True).strip()
            for lib in (runtime, "libstdc++.so")]
    out = dict(os.environ if env is None else env)
    out.update({var: "1", "LD_PRELOAD": " ".join(libs), **run_env})
    return out


def runtime_available(name):
    """Whether gcc has the sanitizer's runtime (it prints the bare name when it has not)."""
    runtime = SANITIZERS[name][2]
    return os.path.isabs(subprocess.check_output(["gcc", f"-print-file-name={runtime}"],
                                                 text=True).strip())


def emulated_source(text, path):
    """text with each static `__shared__` declaration rewritten, line numbers kept."""
    body = SHARED_DECL.sub(
        lambda m: f"FUSEDGRU_EMU_SHARED({m['name']}, {m['dims']}, {m['type']});", text)
    return f'#line 1 "{path}"\n{body}'


def _write_if_changed(path, text):
    """Keeps the mtime of an unchanged file, so that ninja rebuilds nothing."""
    if os.path.exists(path):
        with open(path) as f:
            if f.read() == text:
                return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _mirror_csrc(dst):
    """Every header of csrc/, rewritten, under dst (stale ones removed)."""
    wanted = set()
    for dirpath, _, files in os.walk(CSRC):
        for name in files:
            if name.endswith(HEADER_SUFFIXES):
                src = os.path.join(dirpath, name)
                rel = os.path.relpath(src, CSRC)
                wanted.add(rel)
                with open(src) as f:
                    _write_if_changed(os.path.join(dst, rel), emulated_source(f.read(), src))
    for dirpath, _, files in os.walk(dst):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.relpath(path, dst) not in wanted:
                os.remove(path)


@contextlib.contextmanager
def _without_preload():
    """The compilers run without the sanitizer runtime this process may have preloaded."""
    saved = os.environ.pop("LD_PRELOAD", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["LD_PRELOAD"] = saved


def load(name, sources, kernel_sources=()):
    """Builds and imports extension `name` (suffixed with the sanitizer's name) from sources
    (compiled as they are) and kernel_sources (rewritten first), against the mirrored csrc/.
    Loaded once per process (the load_* functions cache it)."""
    san = sanitizer()
    full_name = f"{name}_{san}" if san else name
    build = os.path.join(ROOT, "build", full_name.removeprefix("fusedgru_"))
    mirror = os.path.join(build, "csrc")
    _mirror_csrc(mirror)
    rewritten = []
    for src in kernel_sources:
        dst = os.path.join(build, "src", os.path.basename(src))
        with open(src) as f:
            _write_if_changed(dst, emulated_source(f.read(), src))
        rewritten.append(dst)
    flags = SANITIZERS[san][1] if san else []
    with _without_preload():
        return cpp_extension.load(
            full_name, list(sources) + rewritten, extra_include_paths=[mirror, EMU_DIR],
            extra_cflags=["-O1", *flags], extra_ldflags=flags, build_directory=build)


@functools.cache
def load_emulator():
    """The CUDA kernels and their launch code under the emulator (emu_ops.cpp)."""
    return load("fusedgru_cuda_emu", [os.path.join(EMU_DIR, "emu_ops.cpp")] +
                [os.path.join(CSRC, f) for f in ("conv_common.cpp", "gru_common.cpp",
                                                 "ln_gru_common.cpp")])


@functools.cache
def load_planted():
    """The planted-bug kernels of tests/test_cuda_emu_checks.py (planted.cpp)."""
    return load("fusedgru_cuda_emu_planted", [], [os.path.join(EMU_DIR, "planted.cpp")])
