"""Smoke runs of the examples (a few batches each): they train, evaluate and write their JSON and
PNG. They need the datasets shipped in vega_datasets / sktime (the `examples` extra)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = {"forecast": "vega_datasets", "classify": "sktime"}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_smoke(name, tmp_path):
    if importlib.util.find_spec(EXAMPLES[name]) is None:
        pytest.skip(f"{EXAMPLES[name]} is not installed (pip install -e '.[examples]')")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", f"{name}.py"), "--smoke", "--device",
         "cpu", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    record = json.loads((tmp_path / f"{name}.json").read_text())
    assert record["smoke"] and record["results"]
    for metrics in record["results"].values():
        assert all(v == v for v in metrics.values()), "NaN metric"
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / f"{name}.png").stat().st_size > 0
