import os
import random
import zlib

import pytest
import torch

# Every run draws fresh random inputs; the seed is printed so a failure can be replayed with
# FUSEDGRU_TEST_SEED=<seed>.
SEED = int(os.environ.get("FUSEDGRU_TEST_SEED", random.randrange(2**31)))


def pytest_report_header(config):
    return f"fusedgru: FUSEDGRU_TEST_SEED={SEED}, torch {torch.__version__}, " \
           f"cuda available: {torch.cuda.is_available()}"


@pytest.fixture(autouse=True)
def _seed(request):
    torch.manual_seed(SEED + zlib.crc32(request.node.nodeid.encode()))


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)
