import os
import zlib

import pytest
import torch
from gru_testing import SEED  # FUSEDGRU_TEST_SEED, or a fresh one per run
from hypothesis import settings

# Property tests (tests/test_properties.py): a bounded run by default ("ci": the file takes well
# under a minute on two cores), a long one with FUSEDGRU_HYPOTHESIS_PROFILE=deep. Each property
# test is seeded with SEED, and there is no example database, so which examples run depends on
# FUSEDGRU_TEST_SEED alone: a failure replays from the seed in the report header. No deadline:
# the timing of a shared machine says nothing about correctness.
settings.register_profile("ci", max_examples=100, deadline=None, database=None, print_blob=True)
settings.register_profile("deep", settings.get_profile("ci"), max_examples=2000)
settings.load_profile(os.environ.get("FUSEDGRU_HYPOTHESIS_PROFILE", "ci"))


def pytest_report_header(config):
    return f"fusedgru: FUSEDGRU_TEST_SEED={SEED}, torch {torch.__version__}, " \
           f"cuda available: {torch.cuda.is_available()}, hypothesis profile " \
           f"{settings.get_current_profile_name()!r} (FUSEDGRU_HYPOTHESIS_PROFILE)"


@pytest.fixture(autouse=True)
def _seed(request):
    torch.manual_seed(SEED + zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def _strict_fp32_on_cuda(monkeypatch):
    """On a GPU every test starts in strict fp32: PyTorch's defaults let cuDNN's RNN and
    convolutions use TF32 (about 1e-4 relative error), so float32 parity with nn.GRU and F.conv1d
    would compare two TF32 roundings. A test of TF32 asks for it itself (test_cuda.py's fp32-tf32
    cases: within twice cuDNN's TF32 error). Set through the precision API, which the legacy
    allow_tf32 setters of a test may still override."""
    if torch.cuda.is_available():
        for flags in (torch.backends.cudnn.rnn, getattr(torch.backends.cudnn, "conv", None),
                      torch.backends.cuda.matmul):
            if flags is not None:  # cudnn.conv: not in every release with the precision API
                monkeypatch.setattr(flags, "fp32_precision", "ieee")


@pytest.fixture
def nan_filled_memory():
    """A switch: while on, every torch.empty comes back filled with NaN (PyTorch's
    fill_uninitialized_memory): the CPU's counterpart of the emulator's poisoned allocations, so
    a product or kernel that reads memory nobody wrote turns it into NaN. Deterministic mode
    (which the fill needs) is on for the whole test, warn-only, so the runs compared differ only
    in the fill."""
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)

    def switch(on):
        torch.utils.deterministic.fill_uninitialized_memory = on
    try:
        yield switch
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.utils.deterministic.fill_uninitialized_memory = before[2]


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    """Skips summarized by reason, one line each with its count (instead of a line per test:
    62 "needs a CUDA device" lines on a CPU machine); `-rs` still lists them one by one."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    counts = {}
    for report in skipped:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 \
            else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        counts[reason] = counts.get(reason, 0) + 1
    terminalreporter.section("skipped, by reason", sep="-")
    for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        terminalreporter.line(f"{n:5d}  {reason}")
