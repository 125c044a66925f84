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
