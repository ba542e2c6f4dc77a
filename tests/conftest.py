"""Fixtures shared by every test folder."""

from __future__ import annotations

import pytest


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test. Tiny models and element-wise math on small
    tensors gain nothing from a second thread, and on a busy 2-core machine every op then
    waits for the other core (seen: a 3-step tiny-UNet sample took 6 s instead of 0.03 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
