"""Processes that tests of concurrent writers start together.

They fork from Python's forkserver, a fresh process that imports advloop's modules once:
nearly as quick to start as a fork of the test process (a spawned process spends seconds
importing torch), without what the test process has gathered from earlier tests (Prefect's
threads and clients, open files), which made forked writers fail after the flow tests.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from multiprocessing.context import BaseContext


def clean_context() -> BaseContext:
    """The forkserver context, with advloop's dataset and steps imported in its server."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["advloop.potentials.dataset", "advloop.flows.steps"])
    return ctx


def run_processes(
    ctx: BaseContext, targets: Sequence[tuple[Callable, tuple]], timeout: float = 300
) -> None:
    """Start a process per ``(function, args)``, wait for all, and fail unless every one
    exited with status 0 (its traceback is on stderr)."""
    procs = [ctx.Process(target=fn, args=args) for fn, args in targets]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    codes = [p.exitcode for p in procs]
    assert codes == [0] * len(procs), f"a process failed (exit codes {codes}; see its stderr)"
