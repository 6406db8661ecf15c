"""Fixtures shared by the whole suite."""
from __future__ import annotations

import pytest


@pytest.fixture
def one_torch_thread():
    """Run the test on one torch thread: training tests are small, and on a 2-core machine
    intra-op threads only contend with each other."""
    import torch  # lazily: most of the suite runs without torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
