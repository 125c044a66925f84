"""Batch-diverse selection: greedy max-determinant conditioned on the training set
(Kulesza & Taskar 2012; Holzmüller et al., JMLR 24, 164, 2023). Pure numpy: features
here are points in a plane, so that what "diverse" means can be seen."""

import numpy as np
import pytest

from advloop.adversarial.batch import greedy_diverse_batch
from advloop.adversarial.selection import SelectionSettings, select_candidates


def _clusters(rng, n_per=6):
    a = rng.normal([5.0, 0.0], 0.05, (n_per, 2))
    b = rng.normal([0.0, 5.0], 0.05, (n_per, 2))
    return np.concatenate([a, b])


def test_diverse_batch_spreads_over_regions_that_uncertainty_alone_would_not():
    rng = np.random.default_rng(0)
    features = _clusters(rng)
    quality = np.concatenate([np.full(6, 1.2), np.full(6, 1.0)])  # cluster a a bit more uncertain
    train = rng.normal([0.0, 0.0], 0.3, (10, 2))
    batch = greedy_diverse_batch(quality, features, train, k=2)
    assert {i // 6 for i in batch.chosen} == {0, 1}
    # the most uncertain-first rule would label two near-copies from cluster a
    assert set(np.argsort(-quality, kind="stable")[:2] // 6) == {0}


def test_a_candidate_like_the_training_set_is_worth_little():
    rng = np.random.default_rng(1)
    train = rng.normal(0.0, 1.0, (30, 2))
    known = train[3] + 1e-4  # almost a training structure
    novel = np.array([6.0, 6.0])
    batch = greedy_diverse_batch(np.array([2.0, 1.0]), np.stack([known, novel]), train, k=1)
    assert batch.chosen == [1]
    assert batch.novelty[0] < 1e-2 and batch.novelty[1] > 0.3


def test_gains_are_the_determinant_increments():
    rng = np.random.default_rng(2)
    features = rng.normal(0.0, 1.0, (9, 3))
    train = rng.normal(0.0, 1.0, (5, 3))
    quality = rng.uniform(0.5, 2.0, 9)
    batch = greedy_diverse_batch(quality, features, train, k=4, min_novelty=0.0)
    assert len(batch.chosen) == 4
    # reproduce the conditioned kernel the function uses, and check greedy optimality of
    # each pick: log det of L_B grows by the largest available increment each time
    both = np.concatenate([train, features])
    mean, std = both.mean(0), both.std(0)
    t, x = (train - mean) / std, (features - mean) / std

    def sq(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    scale = np.median(sq(x, t))
    kt = np.exp(-sq(t, t) / scale) + 1e-6 * np.eye(len(t))
    kc = np.exp(-sq(x, x) / scale)
    kct = np.exp(-sq(x, t) / scale)
    c = kc - kct @ np.linalg.solve(kt, kct.T)
    lq = quality[:, None] * c * quality[None, :]

    def logdet(idx):
        return np.linalg.slogdet(lq[np.ix_(idx, idx)])[1] if idx else 0.0

    for m in range(4):
        picked = batch.chosen[:m]
        best = max((logdet(picked + [i]) - logdet(picked), i) for i in range(9) if i not in picked)
        assert batch.chosen[m] == best[1]


def test_vetoed_and_bad_inputs():
    features = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    batch = greedy_diverse_batch(
        np.ones(3), features, np.zeros((0, 2)), k=3, allowed=lambda i, chosen: i != 1
    )
    assert 1 not in batch.chosen and len(batch.chosen) == 2
    with pytest.raises(ValueError, match="features"):
        greedy_diverse_batch(np.ones(2), features, np.zeros((1, 2)), k=1)
    with pytest.raises(ValueError, match="train_features"):
        greedy_diverse_batch(np.ones(3), features, np.zeros((1, 3)), k=1)
    with pytest.raises(ValueError, match="finite"):
        greedy_diverse_batch(np.array([1.0, np.nan, 1.0]), features, np.zeros((1, 2)), k=1)


def test_select_candidates_diverse_rejects_with_reasons():
    """Eight NH3-like candidates in two geometric clusters, described by features that
    separate the clusters: the diverse batch of two takes one of each; a near-duplicate
    (RMSD) of a chosen one is 'duplicate'; the rest 'over_cap'."""
    rng = np.random.default_rng(3)
    base = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    numbers = np.array([7, 1, 1, 1])
    a = base + np.array([[0, 0, 0], [0.3, 0, 0], [0, 0, 0], [0, 0, 0]])
    b = base + np.array([[0, 0, 0], [0, 0, 0], [0, 0.3, 0.1], [0, 0, 0]])
    cands = np.stack(
        [a + rng.normal(0, 0.001, a.shape) for _ in range(4)]
        + [b + rng.normal(0, 0.001, b.shape) for _ in range(4)]
    )
    features = np.concatenate([np.tile([5.0, 0.0], (4, 1)), np.tile([0.0, 5.0], (4, 1))])
    features = features + rng.normal(0, 0.01, features.shape)
    unc = np.array([1.3, 1.29, 1.28, 1.27, 1.0, 0.99, 0.98, 0.97])
    train = np.stack([base + rng.normal(0, 0.02, base.shape) for _ in range(5)])
    settings = SelectionSettings(
        percentile=0, rmsd_threshold=0.01, max_selected=2, method="diverse", min_novelty=0.0
    )
    result = select_candidates(
        numbers,
        cands,
        unc,
        train,
        np.full(5, 0.5),
        settings,
        features=features,
        train_features=np.zeros((5, 2)),
    )
    assert sorted(int(i) // 4 for i in result.selected) == [0, 1]
    reasons = {r.reason for r in result.rejected.values()}
    assert reasons <= {"duplicate", "over_cap", "redundant"}
    assert len(result.rejected) == 6
    with pytest.raises(ValueError, match="needs features"):
        select_candidates(numbers, cands, unc, train, np.full(5, 0.5), settings)


def test_ineligible_candidates_are_below_threshold():
    numbers = np.array([1, 1])
    cands = np.array([[[0, 0, 0], [0.74, 0, 0]], [[0, 0, 0], [0.9, 0, 0]]], dtype=float)
    train = np.array([[[0, 0, 0], [0.6, 0, 0]]], dtype=float)
    result = select_candidates(
        numbers,
        cands,
        np.array([1.0, 1.0]),
        train,
        np.array([0.1]),
        SelectionSettings(percentile=0, rmsd_threshold=0.0),
        eligible=np.array([True, False]),
        ineligible="bound below tolerance",
    )
    assert list(result.selected) == [0]
    assert result.rejected[1].reason == "below_threshold"
    assert result.rejected[1].detail == "bound below tolerance"
