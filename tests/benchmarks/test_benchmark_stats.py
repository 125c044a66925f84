"""The statistics of a sample-efficiency comparison, on cases worked out by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from benchmarks.stats import (
    bootstrap_difference_ci,
    bootstrap_mean_ci,
    bootstrap_ratio_ci,
    difference_at_labels,
    labels_to_target,
    value_at_labels,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- labels to target ---------------------------------------------------------------------


def test_labels_to_target_is_the_first_row_that_reaches_it():
    labels, errors = [0, 8, 16, 24], [1.0, 0.6, 0.3, 0.4]
    assert labels_to_target(labels, errors, 0.6, higher_is_better=False) == 8  # <= reaches
    assert labels_to_target(labels, errors, 0.35, higher_is_better=False) == 16
    assert labels_to_target(labels, errors, 1.0, higher_is_better=False) == 0  # generation 0
    assert labels_to_target(labels, errors, 0.1, higher_is_better=False) is None
    stable = [0.0, 0.5, 0.45, 1.0]
    assert labels_to_target(labels, stable, 0.5, higher_is_better=True) == 8  # >= reaches
    assert labels_to_target(labels, stable, 0.9, higher_is_better=True) == 24
    assert labels_to_target(labels, stable, 1.01, higher_is_better=True) is None


@pytest.mark.parametrize(
    "labels, values",
    [([0, 8], [1.0]), ([], []), ([8, 0], [1.0, 0.5]), ([0, 8], [1.0, np.nan])],
)
def test_bad_learning_curves_are_refused(labels, values):
    with pytest.raises(ValueError):
        labels_to_target(labels, values, 0.5, higher_is_better=False)
    with pytest.raises(ValueError):
        value_at_labels(labels, values, 8)


# -- value at labels ----------------------------------------------------------------------


def test_value_at_labels_is_the_last_generation_with_at_most_that_many():
    labels, errors = [0, 8, 16], [1.0, 0.6, 0.3]
    assert value_at_labels(labels, errors, 0) == 1.0
    assert value_at_labels(labels, errors, 12) == 0.6  # a step, not 0.45
    assert value_at_labels(labels, errors, 16) == 0.3
    assert value_at_labels(labels, errors, 100) == 0.3
    with pytest.raises(ValueError, match="starts at 0 labels"):
        value_at_labels(labels, errors, -1)


# -- mean --------------------------------------------------------------------------------


def test_mean_interval_of_two_seeds_matches_the_exact_bootstrap_distribution():
    # resampled means of [0, 1]: 0 (p 1/4), 0.5 (1/2), 1 (1/4)
    wide = bootstrap_mean_ci([0.0, 1.0], rng=rng())
    assert (wide.estimate, wide.low, wide.high, wide.level) == (0.5, 0.0, 1.0, 0.95)
    narrow = bootstrap_mean_ci([0.0, 1.0], rng=rng(), level=0.4)  # quantiles 0.3, 0.7
    assert (narrow.low, narrow.high) == (0.5, 0.5)


def test_mean_interval_of_three_seeds_matches_the_enumerated_bootstrap():
    values = np.array([1.0, 2.0, 6.0])
    exact = np.sort([values[list(i)].mean() for i in itertools.product(range(3), repeat=3)])
    # 27 equally likely resamples; the 2.5 % and 97.5 % points are the 1st and 27th
    out = bootstrap_mean_ci(values, rng=rng(), n_boot=20_000)
    assert out.estimate == pytest.approx(3.0)
    assert (out.low, out.high) == pytest.approx((exact[0], exact[-1]))  # 1 and 6
    # the 20 % and 80 % points: sums 5 and 13 of the 27 (their cumulative shares 7/27 and
    # 23/27 are the first to pass 0.2 and 0.8)
    inner = bootstrap_mean_ci(values, rng=rng(), n_boot=20_000, level=0.6)
    assert inner.low == pytest.approx(5 / 3) and inner.high == pytest.approx(13 / 3)


def test_one_seed_gives_a_degenerate_interval_and_bad_settings_are_refused():
    out = bootstrap_mean_ci([0.3], rng=rng())
    assert out.low == out.high == out.estimate == 0.3
    for kwargs in ({"n_boot": 0}, {"level": 1.0}, {"level": 0.0}):
        with pytest.raises(ValueError):
            bootstrap_mean_ci([0.3], rng=rng(), **kwargs)
    with pytest.raises(ValueError):
        bootstrap_mean_ci([], rng=rng())


# -- ratio of labels to target ------------------------------------------------------------


@pytest.mark.parametrize("paired", [False, True])
def test_a_strategy_identical_to_the_baseline_has_ratio_one(paired):
    labels = [16, 24, 40, 32, 8]
    out = bootstrap_ratio_ci(labels, labels, budget=40, rng=rng(), paired=paired)
    assert out.estimate == 1.0 and out.contains(1.0) and out.bound == "estimate"
    assert out.n_censored == out.n_censored_baseline == 0
    if paired:  # every resample takes the same seeds from both
        assert out.low == out.high == 1.0
    else:
        assert out.low < 1.0 < out.high


def test_a_strategy_that_needs_half_the_labels_on_every_seed_has_ratio_one_half():
    baseline = [16, 24, 40, 32]
    half = [8, 12, 20, 16]
    paired = bootstrap_ratio_ci(half, baseline, budget=40, rng=rng(), paired=True)
    assert paired.estimate == paired.low == paired.high == 0.5
    # unpaired, the seeds of each side are drawn on their own: the interval widens ...
    unpaired = bootstrap_ratio_ci(half, baseline, budget=40, rng=rng())
    assert unpaired.estimate == 0.5 and unpaired.low < 0.5 < unpaired.high
    # ... unless every seed of each side needed the same labels
    same = bootstrap_ratio_ci([12, 12, 12], [24, 24, 24], budget=40, rng=rng())
    assert same.estimate == same.low == same.high == 0.5


def test_ratio_of_two_seeds_matches_the_exact_bootstrap_distribution():
    # paired seeds (strategy, baseline) = (10, 20) and (30, 20); resamples: seed 0 twice
    # (p 1/4) 10/20, seed 1 twice (p 1/4) 30/20, one of each (p 1/2) 40/40
    wide = bootstrap_ratio_ci([10, 30], [20, 20], budget=40, rng=rng(), paired=True)
    assert wide.estimate == pytest.approx(1.0)
    assert (wide.low, wide.high) == pytest.approx((0.5, 1.5))
    narrow = bootstrap_ratio_ci([10, 30], [20, 20], budget=40, rng=rng(), paired=True, level=0.4)
    assert (narrow.low, narrow.high) == pytest.approx((1.0, 1.0))  # quantiles 0.3 and 0.7


def test_runs_that_never_reach_the_target_are_censored_at_the_budget():
    # the strategy misses on one seed: counted as 40 labels, and the ratio is a lower bound
    out = bootstrap_ratio_ci([8, None, 16], [24, 24, 24], budget=40, rng=rng(), paired=True)
    assert out.estimate == pytest.approx((8 + 40 + 16) / 3 / 24)
    assert out.n_censored == 1 and out.n_censored_baseline == 0 and out.budget == 40
    assert out.bound == "lower_bound"
    # the baseline misses: an upper bound on the ratio
    up = bootstrap_ratio_ci([8, 8], [None, 20], budget=40, rng=rng())
    assert up.estimate == pytest.approx(8 / 30) and up.bound == "upper_bound"
    # both miss somewhere: not a bound either way
    both = bootstrap_ratio_ci([None, 8], [None, 20], budget=40, rng=rng())
    assert both.bound == "undetermined" and both.n_censored == both.n_censored_baseline == 1
    # none of the baseline's runs reached it: still a number, an upper bound
    never = bootstrap_ratio_ci([8, 16], [None, None], budget=40, rng=rng())
    assert never.estimate == pytest.approx(12 / 40) and never.bound == "upper_bound"


def test_ratio_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="budget"):
        bootstrap_ratio_ci([8, 50], [24, 24], budget=40, rng=rng())  # beyond the budget
    with pytest.raises(ValueError, match="paired"):
        bootstrap_ratio_ci([8, 16], [24], budget=40, rng=rng(), paired=True)
    with pytest.raises(ValueError, match="stricter target"):
        bootstrap_ratio_ci([8, 16], [0, 0], budget=40, rng=rng())
    with pytest.raises(ValueError):
        bootstrap_ratio_ci([], [24], budget=40, rng=rng())
    with pytest.raises(ValueError, match="budget"):
        bootstrap_ratio_ci([8], [24], budget=0, rng=rng())


def test_a_resample_with_a_zero_baseline_mean_gives_an_infinite_ratio():
    out = bootstrap_ratio_ci([8, 8], [0, 8], budget=40, rng=rng(), paired=True)
    assert out.estimate == 2.0 and out.low == 1.0 and out.high == np.inf


# -- difference at equal labels -----------------------------------------------------------


def test_difference_at_equal_labels():
    curves_a = [([0, 8, 16], [1.0, 0.5, 0.2]), ([0, 8, 16], [1.0, 0.3, 0.2])]
    curves_b = [([0, 8, 16], [1.0, 0.8, 0.6]), ([0, 8, 16], [1.0, 0.6, 0.4])]
    a = [value_at_labels(x, y, 8) for x, y in curves_a]  # 0.5, 0.3
    b = [value_at_labels(x, y, 8) for x, y in curves_b]  # 0.8, 0.6
    paired = bootstrap_difference_ci(a, b, rng=rng(), paired=True)
    # every paired resample: the mean of two differences of -0.3
    assert paired.estimate == pytest.approx(-0.3)
    assert (paired.low, paired.high) == pytest.approx((-0.3, -0.3))
    unpaired = bootstrap_difference_ci(a, b, rng=rng())
    # unpaired extremes: 0.3 - 0.8 = -0.5 and 0.5 - 0.6 = -0.1, each with p 1/16
    assert (unpaired.low, unpaired.high) == pytest.approx((-0.5, -0.1))
    assert unpaired.contains(-0.3)
    # the same from the curves
    assert difference_at_labels(curves_a, curves_b, 8, rng=rng(), paired=True) == paired
    assert difference_at_labels(curves_a, curves_b, 8, rng=rng()) == unpaired
    with pytest.raises(ValueError, match="paired"):
        bootstrap_difference_ci(a, b[:1], rng=rng(), paired=True)


# -- reproducibility ----------------------------------------------------------------------


def test_the_same_generator_seed_gives_the_same_intervals():
    strategy, baseline = [8, 16, None, 24, 8], [24, 32, 16, None, 40]
    first = bootstrap_ratio_ci(strategy, baseline, budget=40, rng=rng(7), n_boot=500)
    again = bootstrap_ratio_ci(strategy, baseline, budget=40, rng=rng(7), n_boot=500)
    other = bootstrap_ratio_ci(strategy, baseline, budget=40, rng=rng(8), n_boot=500)
    assert first == again
    assert first.estimate == other.estimate
    assert (first.low, first.high) != (other.low, other.high)
    values = [0.1, 0.4, 0.2, 0.9]
    assert bootstrap_mean_ci(values, rng=rng(3)) == bootstrap_mean_ci(values, rng=rng(3))
