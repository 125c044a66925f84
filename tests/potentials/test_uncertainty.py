from __future__ import annotations

import numpy as np
import pytest

from advloop.potentials.uncertainty import force_calibration, spearman


def test_spearman_on_monotone_and_reversed_data():
    x = np.array([0.1, 0.5, 0.2, 0.9, 0.3])
    assert spearman(x, x**3 + 1) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    # a known value: ranks (0,1,2,3,4) vs (1,0,3,2,4): 1 - 6*4/(5*24) = 0.8
    assert spearman(np.arange(5.0), np.array([1.0, 0.0, 3.0, 2.0, 4.0])) == pytest.approx(0.8)
    assert np.isnan(spearman(np.ones(4), x[:4]))


def test_force_calibration_of_a_perfectly_ranked_committee():
    rng = np.random.default_rng(0)
    idx_m = np.repeat(np.arange(6), 4)
    true = rng.normal(size=(24, 3))
    scale = np.repeat(np.linspace(0.1, 1.0, 6), 4)  # structure k has error scale[k]
    direction = rng.normal(size=(24, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    predicted = true + scale[:, None] * direction
    cal = force_calibration(2 * scale, predicted, true, idx_m)
    assert cal.n == 6
    assert cal.spearman == pytest.approx(1.0)
    assert cal.ratio == pytest.approx(2.0)  # predicted spread twice the observed error
    assert cal.observed_mean == pytest.approx(scale.mean())


def test_conformal_scale_covers_fresh_errors_at_the_nominal_rate() -> None:
    """Errors that are σ times an exchangeable noise: the scale fitted on one half bounds
    the other half's errors at (at least) the requested coverage."""
    from advloop.potentials.uncertainty import conformal_scale

    rng = np.random.default_rng(0)
    hits = []
    for _ in range(200):
        sigma = rng.uniform(0.05, 0.5, 60)
        error = sigma * np.abs(rng.standard_t(3, 60)) * 2.0
        c = conformal_scale(error[:30], sigma[:30], 0.8)
        hits.append(np.mean(error[30:] <= c * sigma[30:]))
    assert 0.78 <= np.mean(hits) <= 0.9
    assert conformal_scale(np.ones(3), np.ones(3), 0.9) == np.inf  # too few for 90 %
    assert conformal_scale(np.arange(1.0, 21.0), np.ones(20), 0.9) == 19.0  # ⌈21·0.9⌉-th
    with pytest.raises(ValueError, match="coverage"):
        conformal_scale(np.ones(3), np.ones(3), 1.0)


def test_element_weighting_keeps_hydrogen_from_dominating() -> None:
    from advloop.potentials.uncertainty import element_scales, element_weighted_std

    # training: H spreads 0.2, N 0.02 (typical of light atoms); candidate 0 triples the
    # spread on N, candidate 1 raises one H's by half
    numbers = np.array([7, 1, 1, 1])
    train_std = np.tile([0.02, 0.2, 0.2, 0.2], 5)
    scales = element_scales(train_std, np.tile(numbers, 5))
    assert scales == {1: pytest.approx(0.2), 7: pytest.approx(0.02)}
    cand = np.array([0.06, 0.2, 0.2, 0.2, 0.02, 0.2, 0.2, 0.3])
    idx_m = np.repeat([0, 1], 4)
    raw = np.bincount(idx_m, weights=cand) / 4
    weighted = element_weighted_std(cand, np.tile(numbers, 2), idx_m, 2, scales)
    assert raw[1] > raw[0]  # raw σ ranks the hydrogen one first
    np.testing.assert_allclose(weighted, [1.5, 1.125])  # relative spreads per atom, averaged
    with pytest.raises(ValueError, match="scale"):
        element_weighted_std(cand, np.tile(numbers, 2), idx_m, 2, {})
