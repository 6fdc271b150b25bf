"""Smoke runs of the examples (a few batches each): they train, evaluate and write their JSON and
PNG. They need the datasets shipped in vega_datasets / sktime (the `examples` extra), which
`make examples-deps` installs (CI does, before `make test`); without them these tests skip,
saying so."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = {"forecast": "vega_datasets", "classify": "sktime"}


def missing_extra_reason(package):
    """The skip reason when an example's dataset package is not installed."""
    return (f"{package} is not installed: the examples' extras come with `make examples-deps` "
            f"(or pip install vega_datasets sktime tqdm matplotlib)")


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_smoke(name, tmp_path):
    if importlib.util.find_spec(EXAMPLES[name]) is None:
        pytest.skip(missing_extra_reason(EXAMPLES[name]))
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", f"{name}.py"), "--smoke", "--device",
         "cpu", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    record = json.loads((tmp_path / f"{name}.json").read_text())
    assert record["smoke"] and record["results"]
    assert record["epochs"] == 1, "the JSON must record the epochs that ran"
    for metrics in record["results"].values():
        assert all(v == v for v in metrics.values()), "NaN metric"
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / f"{name}.png").stat().st_size > 0


def test_missing_extras_skip_names_the_command(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == "vega_datasets" else real(n, *a))
    with pytest.raises(pytest.skip.Exception, match="make examples-deps"):
        test_example_smoke("forecast", tmp_path)
