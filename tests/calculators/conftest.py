"""Fixtures shared by the calculator tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pyscf import lib


@pytest.fixture(autouse=True)
def _one_openmp_thread() -> Iterator[None]:
    """Run PySCF on one OpenMP thread in these tests, restoring the count afterwards.

    Measured on the shared 2-core test machine: these molecules are too small to gain
    from threads, and under CPU contention 2 OpenMP threads made this suite 20x slower
    (3 min against 8 s). The library itself never sets the thread count.
    """
    with lib.with_omp_threads(1):
        yield
