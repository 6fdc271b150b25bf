"""scripts/seed_sweep.py, proven on a planted seed-dependent test: it must report exactly the
seeds on which the test fails, with the failing test's id."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_sweep_reports_the_failing_seeds(tmp_path):
    planted = tmp_path / "test_planted.py"
    planted.write_text(
        "import os\n\n\n"
        "def test_even_seeds_only():\n"
        "    assert int(os.environ['FUSEDGRU_TEST_SEED']) % 2 == 0\n\n\n"
        "def test_always():\n"
        "    pass\n")
    out = tmp_path / "sweep.json"
    run = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "seed_sweep.py"),
                          "--seeds", "1-3,8", "--json", str(out), "--", str(planted)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "2 of 4 seeds passed" in run.stdout
    report = json.loads(out.read_text())
    by_seed = {r["seed"]: r for r in report["runs"]}
    assert sorted(by_seed) == [1, 2, 3, 8]
    for seed, r in by_seed.items():
        failing = seed % 2 == 1
        assert (r["returncode"] != 0) == failing
        assert r["counts"].get("passed") == (1 if failing else 2)
        # ids as pytest prints them, relative to the rootdir
        assert [f.rsplit("/", 1)[-1] for f in r["failed"]] == \
            (["test_planted.py::test_even_seeds_only"] if failing else [])
