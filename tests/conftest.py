"""Shared test settings: small CPU thread pools (the suite runs on a few shared cores)."""
import os

import pytest
import torch

# Tests use tiny tensors: extra threads only add contention on a shared machine.
torch.set_num_threads(1)


@pytest.fixture
def cfg():
    """A fresh default config."""
    from bcd.config import get_cfg

    return get_cfg()
