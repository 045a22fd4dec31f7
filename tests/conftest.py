"""Shared test settings: one CPU thread per test process unless BCD_TEST_THREADS says otherwise
(tiny tensors gain nothing from threads, and threads contend on a few shared cores)."""
import os

import pytest
import torch

# Tests use tiny tensors: extra threads only add contention on a shared machine.
torch.set_num_threads(int(os.environ.get("BCD_TEST_THREADS", "1")))


@pytest.fixture
def cfg():
    """A fresh default config."""
    from bcd.config import get_cfg

    return get_cfg()
