"""Statistics of a sample-efficiency comparison between exploration strategies.

A strategy's run is a learning curve: one row per generation, the labels explored so far
(the labels exploration added; the initial labels, which every strategy of a seed shares,
are left out, so that they do not pull every ratio towards 1) and a metric of that
generation's committee (an error, lower is better, or a stable fraction, higher is
better). Over the seeds of each strategy this module gives

- :func:`labels_to_target`: the labels a run needed to reach a target value;
- :func:`bootstrap_ratio_ci`: the ratio of a strategy's mean labels-to-target to the
  baseline's (committee MD), with a percentile-bootstrap interval over seeds, runs that
  never reached the target counted as censored at the label budget;
- :func:`value_at_labels`: the metric of a run at a given label count, and
  :func:`difference_at_labels` (over :func:`bootstrap_difference_ci`) for the mean
  difference between two strategies there;
- :func:`bootstrap_mean_ci`: a mean over seeds with its interval.

The intervals are percentile bootstraps (Efron & Tibshirani, *An Introduction to the
Bootstrap*, 1993, ch. 13): ``n_boot`` resamples of the seeds with replacement, the
statistic on each, and its empirical ``(1 - level) / 2`` and ``(1 + level) / 2``
quantiles (the inverse of the empirical distribution function, no interpolation, so a
statistic that takes few values gives one of them). With a handful of seeds the
interval is itself rough: it says how much the seeds disagree, not more. Everything is
numpy; the caller passes the ``np.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "Bound",
    "Interval",
    "RatioInterval",
    "bootstrap_difference_ci",
    "bootstrap_mean_ci",
    "bootstrap_ratio_ci",
    "difference_at_labels",
    "labels_to_target",
    "value_at_labels",
]

# What a ratio with censored runs is: a plain estimate (no run censored), a lower bound
# (only the strategy's runs censored), an upper bound (only the baseline's), or neither.
Bound = Literal["estimate", "lower_bound", "upper_bound", "undetermined"]


@dataclass(frozen=True)
class Interval:
    """A statistic over seeds (``estimate``, on the seeds as given) and its percentile
    bootstrap interval ``[low, high]`` at confidence ``level``; units of the statistic."""

    estimate: float
    low: float
    high: float
    level: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class RatioInterval(Interval):
    """:class:`Interval` of a ratio of mean labels-to-target (dimensionless), with the
    runs of each side that never reached the target (counted at the budget) and what
    that makes of the ratio (:data:`Bound`)."""

    n_censored: int
    n_censored_baseline: int
    budget: int
    bound: Bound


def _curve(labels: Sequence[int], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(labels, dtype=float)
    y = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.shape != y.shape or len(x) == 0:
        raise ValueError(
            f"a learning curve needs as many labels as values, at least one row, got "
            f"{x.shape} labels and {y.shape} values"
        )
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("a learning curve must hold finite labels and values (no NaN or inf)")
    if np.any(np.diff(x) < 0):
        raise ValueError(f"labels must not decrease along a learning curve, got {x.tolist()}")
    return x, y


def labels_to_target(
    labels: Sequence[int], values: Sequence[float], target: float, higher_is_better: bool
) -> int | None:
    """The labels of the first row of a learning curve whose value reaches ``target``:
    ``value <= target`` for an error (``higher_is_better=False``), ``value >= target`` for
    a stable fraction (``higher_is_better=True``); None if no row does.

    Args:
        labels: [n_generations] labels explored so far at each generation, non-decreasing.
        values: [n_generations] the metric of each generation's committee.
        target: the value to reach, in the metric's units.

    Raises ValueError on curves of different lengths, empty, decreasing or non-finite.
    """
    x, y = _curve(labels, values)
    reached = y >= target if higher_is_better else y <= target
    hits = np.flatnonzero(reached)
    return int(x[hits[0]]) if len(hits) else None


def value_at_labels(labels: Sequence[int], values: Sequence[float], at: float) -> float:
    """The metric of the last row of a learning curve with at most ``at`` labels: the
    committee that a run had when it had explored ``at`` labels. A step function, not an
    interpolation: a metric is measured on committees that exist, and between two
    generations it need not move linearly (a committee MD stable fraction jumps).

    Args:
        labels, values: the learning curve, as in :func:`labels_to_target`.
        at: a label count, at least the curve's first.

    Raises ValueError for ``at`` below the first row's labels (no committee had so few)
    and on bad curves.
    """
    x, y = _curve(labels, values)
    if at < x[0]:
        raise ValueError(
            f"no generation had at most {at} labels: the curve starts at {int(x[0])} labels"
        )
    return float(y[np.flatnonzero(x <= at)[-1]])


def _check_bootstrap(n_boot: int, level: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ValueError(f"n_boot must be a whole number >= 1, got {n_boot!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}")


def _seeds(values: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or len(arr) == 0:
        raise ValueError(f"{name} needs one value per seed, at least one, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite, got {arr.tolist()}")
    return arr


def _resampled_means(a: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means [n_boot] of ``n_boot`` resamples with replacement of ``a`` [n_seeds]."""
    return a[rng.integers(0, len(a), size=(n_boot, len(a)))].mean(axis=1)


def _resampled_pair(
    a: np.ndarray, b: np.ndarray, n_boot: int, rng: np.random.Generator, paired: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Means [n_boot] of resamples of ``a`` and of ``b``: the same seeds for both if
    ``paired``, else each side drawn on its own (``a`` first)."""
    if not paired:
        return _resampled_means(a, n_boot, rng), _resampled_means(b, n_boot, rng)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    return a[idx].mean(axis=1), b[idx].mean(axis=1)


def _interval(
    estimate: float, resampled: np.ndarray, level: float
) -> tuple[float, float, float, float]:
    low, high = np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return float(estimate), float(low), float(high), float(level)


def _check_paired(a: np.ndarray, b: np.ndarray, paired: bool) -> None:
    if paired and len(a) != len(b):
        raise ValueError(
            f"paired resampling needs one value per seed on both sides, in the same seed "
            f"order; got {len(a)} and {len(b)}"
        )


def bootstrap_mean_ci(
    values: ArrayLike,
    *,
    rng: np.random.Generator,
    n_boot: int = 10_000,
    level: float = 0.95,
) -> Interval:
    """Mean over seeds of ``values`` [n_seeds] and its percentile bootstrap interval.
    Raises ValueError on no values, non-finite ones, ``n_boot < 1`` or a level outside
    (0, 1)."""
    _check_bootstrap(n_boot, level)
    a = _seeds(values, "values")
    means = _resampled_means(a, n_boot, rng)
    return Interval(*_interval(a.mean(), means, level))


def bootstrap_difference_ci(
    strategy: ArrayLike,
    baseline: ArrayLike,
    *,
    rng: np.random.Generator,
    n_boot: int = 10_000,
    level: float = 0.95,
    paired: bool = False,
) -> Interval:
    """Mean of ``strategy`` minus mean of ``baseline`` (one value per seed each, e.g.
    :func:`value_at_labels` of every seed's curve at the same label count) and its
    percentile bootstrap interval. ``paired``: entry i of both comes from the same seed
    (they share generation 0), so seeds are resampled together; otherwise each side is
    resampled on its own. Raises ValueError as :func:`bootstrap_mean_ci`, and for paired
    sides of different lengths."""
    _check_bootstrap(n_boot, level)
    a, b = _seeds(strategy, "strategy"), _seeds(baseline, "baseline")
    _check_paired(a, b, paired)
    mean_a, mean_b = _resampled_pair(a, b, n_boot, rng, paired)
    return Interval(*_interval(a.mean() - b.mean(), mean_a - mean_b, level))


Curve = tuple[Sequence[int], Sequence[float]]  # (labels, values) of one seed's run


def difference_at_labels(
    strategy: Sequence[Curve],
    baseline: Sequence[Curve],
    at: float | Sequence[float],
    *,
    rng: np.random.Generator,
    n_boot: int = 10_000,
    level: float = 0.95,
    paired: bool = False,
) -> Interval:
    """Mean over seeds of the strategy's metric at ``at`` labels minus the baseline's
    (:func:`value_at_labels` of each seed's learning curve, one ``(labels, values)`` per
    seed), with its percentile bootstrap interval (:func:`bootstrap_difference_ci`).
    ``at`` is one label count for every seed, or one per seed (each seed compared at its
    own count, as at the baseline's own final labels). Raises ValueError as those two do,
    or for a count per seed that does not match the seeds."""
    counts = [float(at)] * len(strategy) if np.ndim(at) == 0 else [float(a) for a in at]
    if len(counts) != len(strategy) or len(strategy) != len(baseline):
        raise ValueError(
            f"{len(counts)} label counts for {len(strategy)} and {len(baseline)} seeds"
        )
    return bootstrap_difference_ci(
        [value_at_labels(x, y, a) for (x, y), a in zip(strategy, counts)],
        [value_at_labels(x, y, a) for (x, y), a in zip(baseline, counts)],
        rng=rng,
        n_boot=n_boot,
        level=level,
        paired=paired,
    )


def _censored(labels: Sequence[int | None], budget: int, name: str) -> tuple[np.ndarray, int]:
    if len(labels) == 0:
        raise ValueError(f"{name} needs one labels-to-target per seed, got none")
    reached = [v for v in labels if v is not None]
    bad = [v for v in reached if not 0 <= v <= budget]
    if bad:
        raise ValueError(
            f"{name}: labels-to-target must lie in [0, budget={budget}] (explored labels, "
            f"the initial ones left out), got {bad}"
        )
    n_censored = len(labels) - len(reached)
    return np.array([budget if v is None else v for v in labels], dtype=float), n_censored


def bootstrap_ratio_ci(
    strategy: Sequence[int | None],
    baseline: Sequence[int | None],
    budget: int,
    *,
    rng: np.random.Generator,
    n_boot: int = 10_000,
    level: float = 0.95,
    paired: bool = False,
) -> RatioInterval:
    """Ratio of the strategy's mean labels-to-target to the baseline's, over seeds, with
    its percentile bootstrap interval (below 1: the strategy needs fewer labels).

    A run that never reached the target (None) is not dropped: it is censored at
    ``budget``, the most labels its run could explore (``budget.max_labels``), since it
    would have needed at least that many. A side with censored runs has its mean
    underestimated, so the ratio is a lower bound when only the strategy has them
    (``bound="lower_bound"``: the strategy is at least this costly), an upper bound when
    only the baseline has them, and ``"undetermined"`` when both do (report it, do not
    read it as a ratio). The interval is computed the same way, on censored values.

    Args:
        strategy, baseline: [n_seeds] explored labels each seed's run needed
            (:func:`labels_to_target`), or None.
        budget: the label budget of every run (explored labels), >= every value given.
        paired: entry i of both comes from the same seed (shared generation 0): resample
            seeds together; else each side on its own.

    Raises ValueError on empty sides, values outside [0, budget], paired sides of
    different lengths, a baseline whose mean is 0 (the ratio is undefined: every
    baseline run was at the target before exploring; choose a stricter target), and as
    :func:`bootstrap_mean_ci`. A resample whose baseline mean is 0 gives an infinite
    ratio, which the quantiles keep.
    """
    _check_bootstrap(n_boot, level)
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget < 1:
        raise ValueError(f"budget must be a whole number of labels >= 1, got {budget!r}")
    a, censored_a = _censored(strategy, budget, "strategy")
    b, censored_b = _censored(baseline, budget, "baseline")
    _check_paired(a, b, paired)
    if b.mean() == 0:
        raise ValueError(
            "every baseline run was at the target with no explored labels, so the ratio is "
            "undefined; choose a stricter target"
        )
    mean_a, mean_b = _resampled_pair(a, b, n_boot, rng, paired)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(mean_b > 0, mean_a / np.where(mean_b > 0, mean_b, 1.0), np.inf)
    bounds: dict[tuple[bool, bool], Bound] = {
        (False, False): "estimate",
        (True, False): "lower_bound",
        (False, True): "upper_bound",
        (True, True): "undetermined",
    }
    return RatioInterval(
        *_interval(a.mean() / b.mean(), ratios, level),
        n_censored=censored_a,
        n_censored_baseline=censored_b,
        budget=int(budget),
        bound=bounds[(censored_a > 0, censored_b > 0)],
    )
