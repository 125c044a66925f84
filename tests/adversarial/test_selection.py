"""Tests for advloop.adversarial.selection: filters, thresholds, de-duplication and cap."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule

from advloop.adversarial.geometry import kabsch_rmsd
from advloop.adversarial.selection import SelectionResult, SelectionSettings, select_candidates

NH3 = molecule("NH3")
NUMBERS = NH3.numbers
EQ = NH3.positions  # [4, 3] Å


def displaced(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """n copies of NH3 with Gaussian displacements of std ``scale`` Å, [n, 4, 3]."""
    return EQ[None] + rng.normal(scale=scale, size=(n, *EQ.shape))


def training_set(rng: np.random.Generator, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Training positions [n, 4, 3] Å and uncertainties [n] eV/Å in [0.01, 0.1]."""
    return displaced(rng, n, 0.03), np.linspace(0.01, 0.1, n)


def assert_partition(result: SelectionResult, n_candidates: int) -> None:
    """Every candidate index is either selected or rejected, exactly once."""
    selected = [int(i) for i in result.selected]
    assert len(selected) == len(set(selected))
    assert not set(selected) & set(result.rejected)
    assert sorted(selected + list(result.rejected)) == list(range(n_candidates))


def test_settings_validation() -> None:
    SelectionSettings()  # defaults are valid
    with pytest.raises(ValueError, match="percentile"):
        SelectionSettings(percentile=101.0)
    with pytest.raises(ValueError, match="percentile"):
        SelectionSettings(percentile=-1.0)
    with pytest.raises(ValueError, match="rmsd_threshold"):
        SelectionSettings(rmsd_threshold=-0.01)
    with pytest.raises(ValueError, match="min_distance_factor"):
        SelectionSettings(min_distance_factor=-0.5)
    with pytest.raises(ValueError, match="max_bond_factor"):
        SelectionSettings(min_distance_factor=1.0, max_bond_factor=0.9)
    with pytest.raises(ValueError, match="max_selected"):
        SelectionSettings(max_selected=0)
    with pytest.raises(ValueError, match="max_selected"):
        SelectionSettings(max_selected=2.5)  # type: ignore[arg-type]


def test_threshold_is_percentile_of_training_uncertainties() -> None:
    rng = np.random.default_rng(10)
    train, _ = training_set(rng)
    train_unc = rng.uniform(0.0, 1.0, size=train.shape[0])
    for percentile in (0.0, 37.5, 90.0, 100.0):
        result = select_candidates(
            NUMBERS,
            displaced(rng, 3, 0.1),
            np.ones(3),
            train,
            train_unc,
            SelectionSettings(method="threshold", percentile=percentile),
        )
        assert result.threshold == pytest.approx(np.percentile(train_unc, percentile))


def test_below_threshold_rejected() -> None:
    rng = np.random.default_rng(11)
    train, train_unc = training_set(rng)
    cands = displaced(rng, 4, 0.1)
    settings = SelectionSettings(method="threshold", percentile=50.0)
    threshold = np.percentile(train_unc, 50.0)
    unc = np.array([threshold - 1e-3, threshold + 1e-3, 0.0, 1.0])
    result = select_candidates(NUMBERS, cands, unc, train, train_unc, settings)
    assert result.selected.tolist() == [3, 1]  # decreasing uncertainty
    assert result.rejected[0].detail.startswith("below threshold")
    assert result.rejected[0].reason == "below_threshold"
    assert result.rejected[2].detail.startswith("below threshold")
    assert_partition(result, 4)


def test_near_duplicate_candidates_keep_most_uncertain() -> None:
    rng = np.random.default_rng(12)
    train, train_unc = training_set(rng)
    cands = displaced(rng, 3, 0.15)
    cands[1] = cands[0] + np.array([0.001, 0.0, 0.0])  # 0.001 Å away from candidate 0
    unc = np.array([0.5, 0.6, 0.4])
    result = select_candidates(
        NUMBERS, cands, unc, train, train_unc, SelectionSettings(method="threshold")
    )
    assert 1 in result.selected and 0 not in result.selected
    assert result.rejected[0].detail.startswith("near-duplicate of candidate 1")
    assert result.rejected[0].reason == "duplicate"
    assert result.selected.tolist() == [1, 2]
    assert_partition(result, 3)


def test_candidate_equal_to_training_structure_rejected() -> None:
    rng = np.random.default_rng(13)
    train, train_unc = training_set(rng)
    cands = displaced(rng, 2, 0.15)
    # a rigidly rotated and shifted copy of training structure 3 is still a duplicate
    angle = 0.7
    rot = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    cands[0] = train[3] @ rot.T + 2.0
    result = select_candidates(
        NUMBERS,
        cands,
        np.array([1.0, 1.0]),
        train,
        train_unc,
        SelectionSettings(method="threshold"),
    )
    assert result.selected.tolist() == [1]
    assert result.rejected[0].detail.startswith(
        "near-duplicate of training structure 3 (RMSD 0.000 Å)"
    )
    assert result.rejected[0].reason == "known"
    assert_partition(result, 2)


def test_exploded_and_clashing_geometries_rejected() -> None:
    rng = np.random.default_rng(14)
    train, train_unc = training_set(rng)
    cands = displaced(rng, 3, 0.1)
    cands[0, 3] += np.array([6.0, 0.0, 0.0])  # H flies off
    cands[1, 2] = cands[1, 1] + np.array([0.0, 0.0, 0.2])  # H on top of H
    result = select_candidates(
        NUMBERS,
        cands,
        np.array([5.0, 5.0, 1.0]),
        train,
        train_unc,
        SelectionSettings(method="threshold"),
    )
    assert result.selected.tolist() == [2]
    assert result.rejected[0].detail.startswith("fragmented")
    assert result.rejected[0].reason == "unphysical"
    assert result.rejected[1].detail.startswith("atoms 1 and 2 at 0.20 Å")
    assert_partition(result, 3)


def test_non_finite_rejected() -> None:
    rng = np.random.default_rng(15)
    train, train_unc = training_set(rng)
    cands = displaced(rng, 3, 0.1)
    cands[0, 1, 2] = np.nan
    unc = np.array([1.0, np.nan, np.inf])
    result = select_candidates(
        NUMBERS, cands, unc, train, train_unc, SelectionSettings(method="threshold")
    )
    assert result.selected.size == 0
    assert all(result.rejected[i].detail.startswith("not finite") for i in range(3))
    assert result.rejected[0].detail == "not finite (positions)"
    assert result.rejected[1].detail == "not finite (uncertainty)"
    assert_partition(result, 3)


def test_cap_respected_most_uncertain_first() -> None:
    rng = np.random.default_rng(16)
    train, train_unc = training_set(rng)
    cands = displaced(rng, 12, 0.15)
    unc = rng.uniform(0.5, 1.0, size=12)
    result = select_candidates(
        NUMBERS, cands, unc, train, train_unc, SelectionSettings(method="threshold", max_selected=5)
    )
    assert result.selected.size == 5
    np.testing.assert_array_equal(result.selected, np.argsort(-unc)[:5])
    assert sum(r.reason == "over_cap" for r in result.rejected.values()) == 7
    assert_partition(result, 12)


def test_mixed_batch_each_candidate_has_exactly_one_fate() -> None:
    rng = np.random.default_rng(17)
    train, train_unc = training_set(rng)
    n = 30
    cands = displaced(rng, n, 0.12)
    unc = rng.uniform(0.0, 0.3, size=n)
    cands[0, 0] = np.inf
    unc[1] = np.nan
    cands[2, 1] += 8.0  # fragmented
    cands[3, 2] = cands[3, 0]  # clash
    cands[4] = train[0]  # training duplicate
    unc[4] = 1.0
    cands[5] = cands[6] + 1e-3  # near-duplicate pair
    unc[5], unc[6] = 0.9, 0.95
    settings = SelectionSettings(method="threshold", percentile=80.0, max_selected=4)
    result = select_candidates(NUMBERS, cands, unc, train, train_unc, settings)
    assert_partition(result, n)
    assert result.selected.size == 4
    assert result.selected[0] == 6
    assert result.rejected[5].detail.startswith("near-duplicate of candidate 6")
    assert result.rejected[4].detail.startswith("near-duplicate of training structure 0")
    # selected are in decreasing uncertainty, all above threshold, pairwise distinct
    sel_unc = unc[result.selected]
    assert np.all(np.diff(sel_unc) <= 0) and np.all(sel_unc >= result.threshold)
    for i in result.selected:
        for j in result.selected:
            if i != j:
                assert kabsch_rmsd(cands[i], cands[j]) >= settings.rmsd_threshold
        assert min(kabsch_rmsd(cands[i], t) for t in train) >= settings.rmsd_threshold


def test_empty_candidates() -> None:
    rng = np.random.default_rng(18)
    train, train_unc = training_set(rng)
    result = select_candidates(
        NUMBERS,
        np.zeros((0, 4, 3)),
        np.zeros(0),
        train,
        train_unc,
        SelectionSettings(method="threshold"),
    )
    assert result.selected.size == 0 and result.rejected == {}


def test_invalid_inputs_raise() -> None:
    rng = np.random.default_rng(19)
    train, train_unc = training_set(rng)
    cands = displaced(rng, 2, 0.1)
    settings = SelectionSettings(method="threshold")
    with pytest.raises(ValueError, match="uncertainty"):
        select_candidates(NUMBERS, cands, np.ones(3), train, train_unc, settings)
    with pytest.raises(ValueError, match="train_positions"):
        select_candidates(NUMBERS, cands, np.ones(2), train[:, :3], train_unc, settings)
    with pytest.raises(ValueError, match="train_uncertainty"):
        select_candidates(NUMBERS, cands, np.ones(2), train[:0], train_unc[:0], settings)
    with pytest.raises(ValueError, match="NaN"):
        select_candidates(
            NUMBERS, cands, np.ones(2), train, np.full_like(train_unc, np.nan), settings
        )
