"""Build of the compiled core fusedgru._C.

The C++ CPU kernels are always built. The CUDA kernels (csrc/cuda/*.cu) are added when torch is a
CUDA build and a CUDA toolkit is found; FUSEDGRU_CPU_ONLY=1 forces a CPU-only build.
"""

import glob
import os
import sys

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def build_cuda() -> bool:
    if os.environ.get("FUSEDGRU_CPU_ONLY", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def extension():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
    link = []
    if sys.platform.startswith("linux"):
        # at::parallel_for is inline: without OpenMP here it runs serially. The OpenMP runtime
        # resolves to the libgomp.so.1 that torch has already loaded.
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    kwargs = dict(
        name="fusedgru._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        py_limited_api=True,
        define_macros=[("Py_LIMITED_API", "0x030A0000")],
        extra_link_args=link,
    )
    if build_cuda():
        kwargs["sources"] += sorted(glob.glob("csrc/cuda/*.cu"))
        kwargs["define_macros"].append(("FUSEDGRU_WITH_CUDA", None))
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        return CUDAExtension(**kwargs, extra_compile_args={"cxx": cxx, "nvcc": nvcc})
    return CppExtension(**kwargs, extra_compile_args={"cxx": cxx})


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
