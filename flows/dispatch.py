"""Results of Prefect's dual sync/async functions, called from advloop's sync code.

Prefect 3 wraps some functions (``create_table_artifact``, ``Flow.to_deployment``, ...) in
``async_dispatch``: called from a thread that runs an event loop they return a coroutine,
otherwise their result, and are typed as returning either. advloop's flows, tasks and
command line are sync; :func:`synchronous` takes the result and raises if a coroutine
came back instead (it would never run: the artifact or deployment would silently not
exist).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")


def synchronous(result: _T | Coroutine[Any, Any, _T]) -> _T:
    """``result`` of a Prefect ``async_dispatch`` function called from sync code.

    Raises RuntimeError (closing the coroutine) if it was called from async code."""
    if isinstance(result, Coroutine):
        result.close()
        raise RuntimeError(
            f"{getattr(result, '__qualname__', result)} was called from async code, where Prefect returns a "
            "coroutine; advloop calls it from sync code"
        )
    return result
