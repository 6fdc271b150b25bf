"""Installing and importing fusedgru: the build record of the torch it was compiled against, the
import errors that say what to do, the import from the folder that holds a checkout, the skip
summary and the warning filters of the test configuration.

These run against whatever fusedgru the tests import (the dev checkout in `make test`, the
installed wheel in scripts/check_packaging.sh), in subprocesses where an import is the point.
"""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import textwrap
import types
import warnings

import pytest
import torch

import fusedgru
from fusedgru import _extension

PACKAGE_DIR = os.path.dirname(os.path.abspath(fusedgru.__file__))
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def run_python(code, cwd):
    """`python -c code` in cwd, with an environment that adds nothing to sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def copy_sources(dest, build_info=None, fake_extension=False):
    """A copy of the package's Python files in dest/fusedgru (no compiled _C, no build record
    unless given), beside a setup.py so that it looks like a checkout."""
    pkg = os.path.join(dest, "fusedgru")
    os.makedirs(pkg)
    for name in os.listdir(PACKAGE_DIR):
        if name.endswith(".py") and name != "_build_info.py":
            shutil.copy(os.path.join(PACKAGE_DIR, name), pkg)
    open(os.path.join(dest, "setup.py"), "w").close()
    if build_info is not None:
        with open(os.path.join(pkg, "_build_info.py"), "w") as f:
            f.write(build_info)
    if fake_extension:  # found by the import system, never loaded: the checks come first
        open(os.path.join(pkg, "_C.abi3.so"), "w").close()
    return dest


def test_build_record_names_the_running_torch():
    from fusedgru import _build_info

    assert _build_info.torch_version == str(torch.__version__)
    assert _build_info.cuda_kernels == fusedgru.has_cuda_kernels()
    assert _extension.mismatch(_build_info) is None


def test_installed_requirements_pin_the_build_torch():
    try:
        requires = importlib.metadata.requires("fusedgru") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fusedgru is not installed (only importable from the working directory)")
    pin = "torch==" + str(torch.__version__).split("+")[0]
    assert pin in [r.replace(" ", "") for r in requires], requires


@pytest.mark.skipif(not os.path.exists(os.path.join(os.path.dirname(PACKAGE_DIR), "setup.py")),
                    reason="needs the source checkout (setup.py)")
def test_build_without_torch_says_no_build_isolation(tmp_path):
    """What an isolated build (plain `pip install .`, no torch in its environment) ends with."""
    root = os.path.dirname(PACKAGE_DIR)
    code = ("import sys; sys.modules['torch'] = None; sys.argv = ['setup.py', '--version']; "
            "exec(compile(open('setup.py').read(), 'setup.py', 'exec'))")
    result = run_python(code, cwd=root)
    assert result.returncode == 1
    assert "Install torch first, then build without build isolation" in result.stderr
    assert "pip install --no-build-isolation ." in result.stderr


def test_unbuilt_checkout_says_how_to_build(tmp_path):
    root = copy_sources(str(tmp_path))
    result = run_python("import fusedgru", cwd=root)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: the fusedgru extension is not built"), result.stderr
    assert "pip install --no-build-isolation -e ." in last and "make setup" in last, last
    assert "partially initialized" not in result.stderr


def test_other_torch_says_to_rebuild(tmp_path):
    record = "torch_version = '2.11.0'\ntorch_cuda = None\ncuda_kernels = False\n"
    root = copy_sources(str(tmp_path), build_info=record, fake_extension=True)
    result = run_python("import fusedgru", cwd=root)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert f"fusedgru was built against torch 2.11.0 but torch {torch.__version__} is running: " \
           f"rebuild with `pip install --no-build-isolation -e .`" in last, result.stderr


def test_mismatch_rules():
    def record(version, cuda=None, kernels=False):
        return types.SimpleNamespace(torch_version=version, torch_cuda=cuda, cuda_kernels=kernels)

    assert _extension.mismatch(record("2.13.0+cpu"), "2.13.0+cu128", "12.8") is None
    assert _extension.mismatch(record("2.13.0+cu128", "12.8", True), "2.13.0", "12.8") is None
    assert "built against torch 2.13.0+cpu but torch 2.14.0 is running" in \
        _extension.mismatch(record("2.13.0+cpu"), "2.14.0", None)
    assert "has no CUDA support" in \
        _extension.mismatch(record("2.13.0+cu128", "12.8", True), "2.13.0+cpu", None)


def test_import_from_the_folder_holding_the_checkout(tmp_path):
    """A checkout folder named fusedgru in the working directory is a namespace package to
    Python; the installed fusedgru must still win (the editable install's compat mode puts the
    checkout on sys.path as a path entry, scripts/bootstrap.sh)."""
    try:
        importlib.metadata.distribution("fusedgru")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fusedgru is not installed (only importable from the working directory)")
    (tmp_path / "fusedgru" / "csrc").mkdir(parents=True)  # what the folder of a clone looks like
    result = run_python("import fusedgru; fusedgru.GRU; print(fusedgru.__file__)", cwd=tmp_path)
    assert result.returncode == 0, (
        "import fusedgru from the folder above a checkout named fusedgru fails; reinstall with "
        "`pip install --no-build-isolation -e . --config-settings editable_mode=compat` (make "
        "setup does):\n" + result.stderr[-2000:])
    assert os.path.samefile(result.stdout.strip(), fusedgru.__file__)


def test_skips_are_summarized_by_reason(tmp_path):
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import importlib.util, sys
        sys.path.insert(0, {TESTS_DIR!r})
        spec = importlib.util.spec_from_file_location("fusedgru_conftest",
                                                      {os.path.join(TESTS_DIR, 'conftest.py')!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        pytest_terminal_summary = module.pytest_terminal_summary
    """))
    (tmp_path / "test_skips.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.parametrize("i", range(3))
        def test_a(i):
            pytest.skip("needs a CUDA device")

        @pytest.mark.skip(reason="needs sktime")
        def test_b():
            pass

        def test_c():
            pass
    """))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "skipped, by reason" in out, out
    assert "    3  needs a CUDA device" in out and "    1  needs sktime" in out, out
    assert "SKIPPED [" not in out, out


def test_torch_warnings_filtered_ours_shown():
    """pyproject's filterwarnings: a DeprecationWarning raised inside torch is dropped, a
    warning of ours is not."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit("torch's own", DeprecationWarning, "torch/jit/_trace.py", 1,
                               module="torch.jit._trace", registry={})
        warnings.warn_explicit("torch's own", UserWarning, "torch/backends/__init__.py", 1,
                               module="torch.backends", registry={})
        warnings.warn_explicit("ours", UserWarning, "fusedgru/rnn.py", 1, module="fusedgru.rnn",
                               registry={})
        warnings.warn_explicit("ours", DeprecationWarning, "fusedgru/rnn.py", 1,
                               module="fusedgru.rnn", registry={})
    assert [str(w.message) for w in caught] == ["ours", "ours"]
