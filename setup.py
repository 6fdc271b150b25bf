"""Build of the compiled core fusedgru._C.

The C++ CPU kernels are always built. The CUDA kernels (csrc/cuda/*.cu) are added when torch is a
CUDA build and a CUDA toolkit is found; FUSEDGRU_CPU_ONLY=1 forces a CPU-only build. A CUDA build
targets TORCH_CUDA_ARCH_LIST, or the GPUs it sees, or DEFAULT_CUDA_ARCHS when it sees none.
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


# The architectures of a CUDA build when TORCH_CUDA_ARCH_LIST is unset and no GPU is visible
# (torch would otherwise fail to pick any): Ampere, Ada and Hopper.
DEFAULT_CUDA_ARCHS = "8.0;8.6;8.9;9.0"


def cuda_library_includes():
    """The folder with cublas_v2.h (and the other CUDA library headers that ATen's CUDA headers
    include) when the toolkit lacks them: NVIDIA's wheels, which a CUDA build of torch depends
    on, install them under <site-packages>/nvidia/<cuXX>/include, beside torch."""
    if os.path.exists(os.path.join(CUDA_HOME, "include", "cublas_v2.h")):
        return []
    site = os.path.dirname(os.path.dirname(torch.__file__))
    found = [p for p in sorted(glob.glob(os.path.join(site, "nvidia", "*", "include")))
             if os.path.exists(os.path.join(p, "cublas_v2.h"))]
    return found[:1]


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
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
        kwargs["include_dirs"] += cuda_library_includes()
        kwargs["sources"] += sorted(glob.glob("csrc/cuda/*.cu"))
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        return CUDAExtension(**kwargs, extra_compile_args={"cxx": cxx, "nvcc": nvcc})
    return CppExtension(**kwargs, extra_compile_args={"cxx": cxx})


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
