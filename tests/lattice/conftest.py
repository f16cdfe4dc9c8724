"""Lattice tests time nothing, but compare float64 sums: one torch thread keeps them deterministic and
leaves the other core to a parallel job."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
