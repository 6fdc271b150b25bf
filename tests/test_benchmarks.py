"""The benchmark scripts' interface (not their numbers): options and their old aliases, argument
errors, where a run writes (never over another run), the sentences and the JSON fields; and that
the op micro-benchmarks run."""

import datetime
import importlib
import json
import os
import re
import subprocess
import sys
import types

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
bench_common = importlib.import_module("_common")
bench_gru = importlib.import_module("bench_gru")
bench_conv = importlib.import_module("bench_conv")

TINY_GRU = ["--seq-len", "3", "--batch", "2", "--hidden", "4", "--reps", "1", "--warmup", "0",
            "--threads", "1"]
TINY_CONV = ["--batch", "1", "--channels", "4", "--length", "8", "--reps", "1", "--warmup", "0",
             "--threads", "1", "--layouts", "ncl"]


@pytest.fixture(autouse=True)
def _keep_threads():
    # main() sets torch's thread count for the run; give the other tests theirs back.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _no_settling(monkeypatch):
    # The pause between timed blocks matters for the numbers, not for the interface tested here.
    monkeypatch.setattr(bench_common, "CPU_SETTLE_S", 0.0)


def test_each_cpu_block_starts_after_the_settling_pause(monkeypatch):
    """median_times pauses before every block on the CPU (a thread pool that spins after its
    work, ONNX Runtime's, must not slow whoever is timed next), never on CUDA."""
    pauses = []
    monkeypatch.setattr(bench_common, "CPU_SETTLE_S", 0.125)
    monkeypatch.setattr(bench_common.time, "sleep", pauses.append)
    fns = {"a": lambda: None, "b": lambda: None}
    bench_common.median_times(fns, 0, 6, bench_common.Timer("cpu"), rounds=3)
    assert pauses == [0.125] * 6
    pauses.clear()
    timer = bench_common.Timer("cpu")
    timer.cuda = True
    monkeypatch.setattr(bench_common.Timer, "__call__", lambda self, fn: 1.0)
    bench_common.median_times(fns, 0, 6, timer, rounds=3)
    assert pauses == []


@pytest.mark.skipif(any(bench_gru.peers.missing(p) for p in bench_gru.peers.PEERS),
                    reason="onnx, onnxruntime, openvino not installed: make examples-deps")
def test_peers_run_on_the_same_weights_and_are_reported(tmp_path):
    """--peers: each peer is checked against nn.GRU before it is timed (a wrong gate order or
    bias layout raises), timed in the forward rows only, and named with its version."""
    out = bench_gru.main([*TINY_GRU, "--num-layers", "2", "--bidirectional", "--peers",
                          "onnxruntime", "openvino", "--out", str(tmp_path / "r.json")])
    record = json.load(open(out))
    assert set(record["machine"]["peers"]) == {"onnxruntime", "openvino"}
    fwd, fwdbwd = (next(r for r in record["results"] if r["mode"] == m)
                   for m in ("fwd", "fwdbwd"))
    assert set(fwd["peers_ms"]) == {"onnxruntime", "openvino"}
    assert all(ms > 0 for ms in fwd["peers_ms"].values())
    assert fwd["vs_fastest_peer"] == pytest.approx(min(fwd["peers_ms"].values()) /
                                                   fwd["fusedgru_ms"])
    assert fwdbwd["peers_ms"] == {} and fwdbwd["vs_fastest_peer"] is None
    assert any(line.startswith("fusedgru is") and "onnxruntime" in line
               for line in record["summary"])


@pytest.mark.skipif(bench_gru.peers.missing("onnxruntime") != [],
                    reason="onnx, onnxruntime not installed: make examples-deps")
def test_a_wrong_peer_conversion_is_caught_before_timing(monkeypatch):
    """Planted bug: the ONNX graph built with PyTorch's gate order (r, z, n) unchanged."""
    monkeypatch.setattr(bench_gru.peers, "_onnx_gates", lambda w, H: w)
    with pytest.raises(RuntimeError, match="onnxruntime disagrees with nn.GRU"):
        bench_gru.main([*TINY_GRU, "--modes", "fwd", "--peers", "onnxruntime", "--out",
                        os.devnull])


@pytest.mark.skipif(any(bench_gru.peers.missing(p) for p in bench_gru.peers.PEERS),
                    reason="onnx, onnxruntime, openvino not installed: make examples-deps")
def test_streaming_peers_carry_their_state(tmp_path, monkeypatch):
    """--variant stream: T calls of one step each, the peers fed and giving back their state;
    a peer whose state is dropped between steps (planted) disagrees with nn.GRU and is not
    timed."""
    argv = [*TINY_GRU, "--variant", "stream", "--modes", "fwd", "--peers", "onnxruntime",
            "openvino", "--out", str(tmp_path / "s.json")]
    record = json.load(open(bench_gru.main(argv)))
    (row,) = record["results"]
    assert row["variant"] == "stream" and set(row["peers_ms"]) == {"onnxruntime", "openvino"}
    make_runner = bench_gru.peers.make_runner

    def stateless(peer, ref, threads, state=False):
        step = make_runner(peer, ref, threads, state)
        return lambda x, h: step(x, 0 * h)

    monkeypatch.setattr(bench_gru.peers, "make_runner", stateless)
    with pytest.raises(RuntimeError, match="onnxruntime disagrees with nn.GRU"):
        bench_gru.main(argv[:-1] + [os.devnull])


def test_cpu_gemm_paths_in_one_run(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSEDGRU_PACKED_GEMM", "1")
    out = bench_gru.main([*TINY_GRU, "--paths", "auto", "aten-gemm", "--out",
                          str(tmp_path / "p.json")])
    record = json.load(open(out))
    assert {r["path"] for r in record["results"]} == {"auto", "aten-gemm"}
    assert any("aten-gemm path" in line for line in record["summary"])
    assert os.environ["FUSEDGRU_PACKED_GEMM"] == "1"  # the caller's environment, given back


@pytest.mark.parametrize("argv", [
    ["--peers", "onnxruntime", "--variant", "cell"],
    ["--paths", "per-step"],  # CUDA only
    ["--paths", "persistent"],  # CUDA only
    ["--variant", "stream", "--modes", "fwdbwd"],
    ["--variant", "stream", "--num-layers", "2"],
])
def test_unsupported_combinations_are_argparse_errors(argv):
    with pytest.raises(SystemExit):
        bench_gru.parse_args(argv)


def test_lower_case_options_and_old_aliases_agree():
    new = bench_gru.parse_args(["--seq-len", "8", "--batch", "1", "2", "--hidden", "16",
                                "--input-size", "4", "--num-layers", "2"])
    old = bench_gru.parse_args(["--T", "8", "--N", "1", "2", "--H", "16", "--I", "4",
                                "--layers", "2"])
    assert vars(new) == vars(old)
    assert (new.T, new.N, new.H, new.I, new.layers) == ([8], [1, 2], [16], [4], [2])
    new = bench_conv.parse_args(["--batch", "2", "--channels", "8", "--length", "64", "--width",
                                 "3", "5"])
    old = bench_conv.parse_args(["--N", "2", "--C", "8", "--L", "64", "--W", "3", "5"])
    assert vars(new) == vars(old)


@pytest.mark.parametrize("script, argv, message", [
    (bench_gru, ["--T", "0"], "argument --seq-len/--T: must be >= 1, got 0"),
    (bench_gru, ["--batch", "x"], "argument --batch/--N: expected an integer, got 'x'"),
    (bench_gru, ["--reps", "0"], "argument --reps: must be >= 1, got 0"),
    (bench_gru, ["--warmup", "-1"], "argument --warmup: must be >= 0, got -1"),
    (bench_conv, ["--C", "-3"], "argument --channels/--C: must be >= 1, got -3"),
    (bench_conv, ["--width", "0"], "argument --width/--W: must be >= 1, got 0"),
])
def test_argument_errors_are_argparse_errors(script, argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        script.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.fixture
def one_day(monkeypatch):
    """The default file names carry today's date: hold it still, or a test running across
    midnight compares names made on two days."""
    class Day(datetime.date):
        @classmethod
        def today(cls):
            return cls(2026, 12, 31)

    monkeypatch.setattr(bench_common, "datetime",
                        types.SimpleNamespace(date=Day, datetime=datetime.datetime))


@pytest.mark.parametrize("script", [bench_gru, bench_conv])
def test_help_names_the_file_written(script, capsys, one_day):
    with pytest.raises(SystemExit):
        script.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    name = bench_common.default_name("" if script is bench_gru else "conv",
                                     bench_common.cpu_tag(2))
    assert f"benchmarks/runs/{name}" in text


def test_sentences():
    assert bench_common.speed_sentence("fusedgru", "nn.GRU", 10.0, 13.4, "forward (T=128)") == \
        "fusedgru is 1.34x faster than nn.GRU forward (T=128)"
    assert bench_common.compared(12.0, 10.0) == "1.20x slower than"
    assert bench_common.compared(10.0, 10.01) == "as fast as"
    row = dict(variant="gru", T=128, N=16, I=256, H=256, layers=1, bidirectional=False,
               dtype="fp32", tf32=None, path="auto", mode="fwd", ref_ms=15.07, fusedgru_ms=10.63)
    assert bench_gru.sentence(row, "cpu") == \
        "fusedgru is 1.42x faster than nn.GRU forward (T=128 N=16 H=256 fp32)"
    row.update(variant="packed", mode="fwdbwd", N=8, ref_ms=10.0, fusedgru_ms=12.5)
    assert bench_gru.sentence(row, "cpu") == ("fusedgru is 1.25x slower than nn.GRU on a "
                                              "PackedSequence forward + backward (T=128 N=8 "
                                              "H=256 fp32)")


def test_default_names_carry_the_variant_and_never_overwrite(tmp_path, monkeypatch, capsys,
                                                           one_day):
    monkeypatch.setattr(bench_common, "RUNS_DIR", str(tmp_path))
    first = bench_gru.main(TINY_GRU)
    second = bench_gru.main(TINY_GRU)
    packed = bench_gru.main(TINY_GRU + ["--variant", "packed"])
    conv = bench_conv.main(TINY_CONV)
    tag = bench_common.cpu_tag(1)
    stem = os.path.join(str(tmp_path), bench_common.default_name("", tag))[:-len(".json")]
    assert (first, second) == (stem + ".json", stem + "-2.json")
    assert packed == stem + "-packed.json"
    assert conv == stem + "-conv.json"
    out = capsys.readouterr().out
    assert "fusedgru [ms]" in out and "speedup [x]" in out and "fusedgru [tokens/s]" in out
    # The comparison's words depend on the timings: a tie within 0.5% reads "as fast as".
    compared = r"(\d+\.\d\dx (faster|slower) than|as fast as)"
    assert re.search(rf"fusedgru is {compared} nn\.GRU forward \(T=3 N=2 H=4 fp32\)", out)
    assert re.search(rf"fusedgru is {compared} nn\.GRU on a PackedSequence forward \+ backward",
                     out)
    assert re.search(rf"fusedgru\.causal_conv1d is {compared} ", out)
    record = json.loads(open(first).read())
    # The fields the committed results and their readers use.
    assert set(record) >= {"benchmark", "date", "command", "machine", "flags", "results"}
    assert set(record["results"][0]) >= {"variant", "T", "N", "I", "H", "layers", "dtype", "mode",
                                         "ref_ms", "fusedgru_ms", "speedup",
                                         "fusedgru_tokens_per_s", "fusedgru_us_per_step"}
    assert record["flags"]["T"] == [3] and len(record["summary"]) == len(record["results"])


def test_explicit_out_is_written_as_given(tmp_path):
    out = str(tmp_path / "sub" / "bench.json")
    assert bench_gru.main(TINY_GRU + ["--modes", "fwd", "--out", out]) == out
    assert bench_conv.main(TINY_CONV + ["--out", str(tmp_path / "c.json")]) == \
        str(tmp_path / "c.json")
    assert json.loads(open(out).read())["benchmark"] == "bench_gru"


def test_unique_path_also_avoids_a_leftover_plot(tmp_path):
    (tmp_path / "run.png").write_text("")
    assert bench_common.unique_path(str(tmp_path / "run.json")) == str(tmp_path / "run-2.json")


def test_op_micro_benchmarks_run():
    """benchmarks/test_op_micro.py (make bench-micro) stays runnable: every benchmark body once,
    untimed (--benchmark-disable), in a subprocess, since pytest tests does not collect it."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", os.path.join(ROOT, "benchmarks", "test_op_micro.py"),
         "-q", "-p", "no:cacheprovider", "--benchmark-disable"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
