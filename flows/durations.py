"""Spans of time in words, for the lines people read (``advloop status``, progress, ETAs).

Imports nothing of advloop, so that the command line can use it before it loads anything
heavy."""

from __future__ import annotations

import math

__all__ = ["ago", "duration", "eta"]


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``, ``2.0 d``: two significant figures at most."""
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def ago(seconds: float) -> str:
    """``12 min ago``."""
    return f"{duration(seconds)} ago"


def eta(done: int, total: int, elapsed: float) -> str | None:
    """``about 3 min left`` for ``total - done`` more of what took ``elapsed`` seconds for
    ``done`` (the mean rate so far); None before anything is done, or once all is."""
    if done <= 0 or done >= total or not math.isfinite(elapsed):
        return None
    return f"about {duration(elapsed / done * (total - done))} left"
