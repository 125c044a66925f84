"""advloop.flows.dispatch: results of Prefect's sync-or-coroutine functions."""

from __future__ import annotations

import pytest

from advloop.flows.dispatch import synchronous


def test_a_result_passes_and_a_coroutine_is_refused():
    assert synchronous(42) == 42

    async def created() -> int:
        return 1

    coroutine = created()
    with pytest.raises(RuntimeError, match="called from async code"):
        synchronous(coroutine)
    assert coroutine.cr_frame is None  # closed: no "never awaited" warning
