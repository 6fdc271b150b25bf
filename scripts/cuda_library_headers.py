"""Headers of the CUDA libraries that torch's ATen/cuda headers include (cuBLAS, cuSPARSE,
cuSOLVER), for the nvcc compile check on machines with a CUDA toolkit but a CPU build of torch
(tests/test_cuda_build.py). A CUDA build of torch brings them with its nvidia-* wheels or the
toolkit; here they are taken from those same wheels, headers only (~1 MB), into one folder.

    python scripts/cuda_library_headers.py .venv/cuda-library-headers
"""

import os
import subprocess
import sys
import tempfile
import zipfile

# The CUDA 13.0 releases, to match the toolkit of the machines (nvcc 13.0) and of torch 2.11+cu130.
WHEELS = ["nvidia-cublas==13.0.0.19", "nvidia-cusparse==12.6.3.3", "nvidia-cusolver==12.0.4.66"]
NEEDED = ["cublas_v2.h", "cublasLt.h", "cusparse.h", "cusolverDn.h"]


def main(dest: str) -> None:
    if all(os.path.exists(os.path.join(dest, h)) for h in NEEDED):
        return
    os.makedirs(dest, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--retries", "0", "--timeout", "30", "-d", tmp, *WHEELS], check=True)
        for name in os.listdir(tmp):
            with zipfile.ZipFile(os.path.join(tmp, name)) as whl:
                for member in whl.namelist():
                    if "/include/" in member and member.endswith(".h"):
                        with open(os.path.join(dest, os.path.basename(member)), "wb") as f:
                            f.write(whl.read(member))
    missing = [h for h in NEEDED if not os.path.exists(os.path.join(dest, h))]
    if missing:
        sys.exit(f"cuda_library_headers: {missing} not in {WHEELS}")


if __name__ == "__main__":
    main(sys.argv[1])
