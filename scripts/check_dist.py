"""What the sdist and the wheel must hold (run by scripts/check_packaging.sh).

    python scripts/check_dist.py dist/fusedgru-0.1.0.tar.gz dist/fusedgru-0.1.0-cp310-abi3-*.whl

sdist: every source file of the checkout under csrc/, tests/ and fusedgru/ (tracked by git, or
not ignored by it), plus setup.py, pyproject.toml, MANIFEST.in, README.md and LICENSE; no
build products (fusedgru/_build_info.py, *.so). wheel: the compiled fusedgru/_C, the build record
fusedgru/_build_info.py naming the torch that is running, every fusedgru/*.py, the license, and
metadata that pins torch to the release it was built against. Exits 1 listing each problem.
"""

import email.parser
import os
import subprocess
import sys
import tarfile
import zipfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED_DIRS = ("csrc/", "tests/", "fusedgru/")
REQUIRED_FILES = ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE")
SOURCE_SUFFIXES = (".h", ".cuh", ".cpp", ".cu", ".py", ".txt")  # .txt: the ptxas table


def source_files(root=ROOT):
    """The checkout's files the sdist must carry: git's view (tracked, plus untracked files that
    .gitignore does not exclude), or a walk of the tree outside a git checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=root, capture_output=True, text=True, check=True).stdout
        files = [f for f in out.splitlines() if os.path.exists(os.path.join(root, f))]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for d in REQUIRED_DIRS:
            for dirpath, _, names in os.walk(os.path.join(root, d)):
                files += [os.path.relpath(os.path.join(dirpath, n), root) for n in names]
    wanted = [f for f in files if f.startswith(REQUIRED_DIRS) and f.endswith(SOURCE_SUFFIXES)
              and f != "fusedgru/_build_info.py" and "__pycache__" not in f]
    return sorted(set(wanted) | set(REQUIRED_FILES))


def check_sdist(path, root=ROOT):
    problems = []
    with tarfile.open(path) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    have = set(names)
    missing = [f for f in source_files(root) if f not in have]
    if missing:
        problems.append(f"sdist {os.path.basename(path)} lacks {len(missing)} source file(s) "
                        f"(add them to MANIFEST.in): {', '.join(missing)}")
    extra = [n for n in names if n.endswith((".so", ".o")) or n == "fusedgru/_build_info.py"]
    if extra:
        problems.append(f"sdist holds build products: {', '.join(extra)}")
    return problems


def check_wheel(path, root=ROOT):
    problems = []
    with zipfile.ZipFile(path) as whl:
        names = set(whl.namelist())
        meta_name = next((n for n in names if n.endswith(".dist-info/METADATA")), None)
        metadata = email.parser.Parser().parsestr(whl.read(meta_name).decode()) \
            if meta_name else None
        record = whl.read("fusedgru/_build_info.py").decode() \
            if "fusedgru/_build_info.py" in names else None
    if not any(n.startswith("fusedgru/_C") and n.endswith((".so", ".pyd")) for n in names):
        problems.append("wheel lacks the compiled fusedgru/_C")
    py = {f for f in os.listdir(os.path.join(root, "fusedgru"))
          if f.endswith(".py") and f != "_build_info.py"}
    missing = sorted(f"fusedgru/{f}" for f in py if f"fusedgru/{f}" not in names)
    if missing:
        problems.append(f"wheel lacks {', '.join(missing)}")
    if any(n.startswith(("csrc/", "tests/")) for n in names):
        problems.append("wheel holds csrc/ or tests/ (sources belong in the sdist only)")
    if record is None:
        problems.append("wheel lacks fusedgru/_build_info.py (the torch it was built against)")
    else:
        info = {}
        exec(record, info)
        if info.get("torch_version") != str(torch.__version__):
            problems.append(f"wheel's build record says torch {info.get('torch_version')!r}, "
                            f"but it was built with torch {torch.__version__}")
    if metadata is None:
        problems.append("wheel lacks its METADATA")
        return problems
    pin = "torch==" + str(torch.__version__).split("+")[0]
    requires = [r.replace(" ", "") for r in metadata.get_all("Requires-Dist") or []]
    if pin not in requires:
        problems.append(f"wheel's requirements {requires} do not pin {pin}")
    if metadata.get("License-Expression") != "BSD-3-Clause":
        problems.append(f"wheel's License-Expression is {metadata.get('License-Expression')!r}")
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
        problems.append("wheel lacks the LICENSE file")
    return problems


def main(paths):
    problems = []
    for path in paths:
        if path.endswith(".tar.gz"):
            problems += check_sdist(path)
        elif path.endswith(".whl"):
            problems += check_wheel(path)
        else:
            problems.append(f"{path}: neither an sdist (.tar.gz) nor a wheel (.whl)")
    for p in problems:
        print(f"[check-dist] FAIL: {p}")
    if not problems:
        print(f"[check-dist] ok: {', '.join(os.path.basename(p) for p in paths)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
