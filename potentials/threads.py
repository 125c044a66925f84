"""How many threads torch computes with, set for a block and then put back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (``torch.set_num_threads``), restoring the
    count it found afterwards, however the block ends.

    The count is the process's: steps that run in parallel threads of one process share
    it, so give them the same ``n`` (a run's ``compute.torch_threads``); separate worker
    processes each have their own."""
    if n < 1:
        raise ValueError(f"torch threads must be at least 1, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
