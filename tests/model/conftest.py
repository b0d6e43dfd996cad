"""Model tests run on one intra-op thread: these tensors are tiny, and on a loaded shared CPU two
spinning threads per process cost far more than they give (measured: 20x slower steps)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
