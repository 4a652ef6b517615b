"""Fixtures of the training tests: single-threaded torch (the machine is shared), small specs."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Some code under test sets the thread count; keep every test on one thread."""
    torch.set_num_threads(1)
