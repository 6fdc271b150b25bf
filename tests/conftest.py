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


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)
