"""Where a generation's wall time goes: training, exploration, selection, labelling, and
the orchestration around them.

Each step a task runs reports the wall-clock interval its body ran in (:func:`timed`);
:func:`split_generation` turns the intervals of one generation into seconds per phase
(the union of that phase's intervals, so members trained in parallel count once) and the
orchestration time: the part of the generation's wall time in which no step body was
running (task submission, state updates with the Prefect server, result passing, the
flow's own bookkeeping). Intervals are ``time.time()`` seconds so that steps run in other
processes on the same machine report on the same clock.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, Literal, ParamSpec, TypeVar

Phase = Literal["training", "exploration", "selection", "labelling"]
PHASES: tuple[Phase, ...] = ("training", "exploration", "selection", "labelling")

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class Timed(Generic[T]):
    """A step's return value with the wall-clock interval (s, ``time.time()``) of its body."""

    value: T
    phase: Phase
    start: float
    end: float


def timed(phase: Phase, step: Callable[P, T]) -> Callable[P, Timed[T]]:
    """Wrap ``step`` so that it returns :class:`Timed`; the signature is kept (Prefect reads
    parameter names from it for run names)."""

    @functools.wraps(step)
    def run(*args: P.args, **kwargs: P.kwargs) -> Timed[T]:
        start = time.time()
        value = step(*args, **kwargs)
        return Timed(value, phase, start, time.time())

    return run


def _union_length(intervals: Iterable[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def split_generation(steps: Iterable[Timed], start: float, end: float) -> dict[str, float]:
    """Seconds per phase and of orchestration for a generation that ran from ``start`` to
    ``end`` (``time.time()`` s); keys ``seconds_<phase>`` and ``seconds_orchestration``.

    Raises ValueError if ``end < start``.
    """
    if end < start:
        raise ValueError(f"generation ends ({end}) before it starts ({start})")
    clipped = [(s.phase, max(s.start, start), min(s.end, end)) for s in steps]
    clipped = [(p, a, b) for p, a, b in clipped if b > a]
    out = {
        f"seconds_{phase}": _union_length((a, b) for p, a, b in clipped if p == phase)
        for phase in PHASES
    }
    out["seconds_orchestration"] = (end - start) - _union_length((a, b) for _, a, b in clipped)
    return out
