"""torch's thread count is set for a block and put back, even when the block raises."""

from __future__ import annotations

import pytest
import torch

from advloop.potentials.threads import torch_threads


def test_the_thread_count_is_restored_however_the_block_ends() -> None:
    before = torch.get_num_threads()
    inside = 2 if before != 2 else 1
    with torch_threads(inside):
        assert torch.get_num_threads() == inside
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"), torch_threads(inside):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="at least 1"), torch_threads(0):
        pass
