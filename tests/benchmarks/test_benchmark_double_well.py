"""The 2D double-well benchmark: exact forces, every field of a tiny run, and the
committee's and the attack's behaviour on fixed seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks.double_well import (
    STRATEGIES,
    BenchmarkSettings,
    CommitteeSettings,
    DoubleWell,
    MLPCommittee,
    initial_data,
    member_seeds,
    predict,
    run,
    train_committee,
)

ROW_KEYS = {
    "generation",
    "n_labels",
    "n_candidates",
    "labels_in_unseen_well",
    "fraction_in_unseen_well",
    "seconds",
    "boltzmann_force_rmse",
    "boltzmann_force_rmse_seen_well",
    "boltzmann_force_rmse_unseen_well",
    "boltzmann_sigma_f_seen_well",
    "boltzmann_sigma_f_unseen_well",
}
SUMMARY_KEYS = {
    f"final_{k}_{s}"
    for s in ("mean", "std")
    for k in (
        "boltzmann_force_rmse",
        "boltzmann_force_rmse_seen_well",
        "boltzmann_force_rmse_unseen_well",
        "labels_in_unseen_well",
        "n_labels",
    )
} | {
    "labels_to_match_adversarial_per_seed",
    "labels_to_match_adversarial_mean_curve",
    "mean_curve_boltzmann_force_rmse",
    "mean_curve_n_labels",
    "adversarial_rmse_at_these_labels",
    "adversarial_labels_at_these_labels",
}


def central_differences(energy, xy: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """−∇E [n, 2] by central differences of energy(xy [n, 2]) -> [n]."""
    grad = np.zeros_like(xy)
    for k in range(2):
        step = np.zeros(2)
        step[k] = h
        grad[:, k] = (energy(xy + step) - energy(xy - step)) / (2 * h)
    return -grad


def test_forces_are_minus_the_gradient_of_the_energy():
    rng = np.random.default_rng(0)
    xy = rng.uniform(-1.5, 1.5, (20, 2))
    potential = DoubleWell()
    np.testing.assert_allclose(
        potential.forces(xy), central_differences(potential.energy, xy), rtol=1e-7, atol=1e-7
    )
    left, saddle, right = potential.stationary_x()
    assert left < saddle < right
    np.testing.assert_allclose(
        potential.forces(np.array([[left, 0.0], [saddle, 0.0], [right, 0.0]])), 0.0, atol=1e-9
    )
    committee = MLPCommittee(16, [1, 2, 3], energy_shift=0.0)

    def member_energies(points: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(points, dtype=torch.float64).unsqueeze(0).repeat(3, 1, 1)
        return committee.energies(x).detach().numpy().T  # [n, members]

    _, forces = committee.energies_forces(torch.as_tensor(xy, dtype=torch.float64))
    expected = np.stack(
        [central_differences(lambda p, m=m: member_energies(p)[:, m], xy) for m in range(3)]
    )
    np.testing.assert_allclose(forces.detach().numpy(), expected, rtol=1e-6, atol=1e-8)


def test_a_tiny_run_reports_every_field_for_every_strategy():
    threads = torch.get_num_threads()
    record = run([3], generations=2, labels_per_generation=3, quick=True, epochs=40)
    assert torch.get_num_threads() == threads
    assert set(record["results"]) == set(STRATEGIES) == set(record["summary"])
    for strategy in STRATEGIES:
        rows = record["results"][strategy]["3"]
        assert [r["generation"] for r in rows] == [0, 1, 2]
        for row in rows:
            assert set(row) == ROW_KEYS
            assert all(math.isfinite(v) for v in row.values())
            assert 0 <= row["labels_in_unseen_well"] <= row["n_labels"] <= 3 * row["generation"]
        assert rows[0] == record["results"]["adversarial"]["3"][0]  # one shared start
        summary = record["summary"][strategy]
        assert set(summary) == SUMMARY_KEYS
        assert all(math.isfinite(summary[k]) for k in SUMMARY_KEYS if k.startswith("final_"))
    adversarial = record["summary"]["adversarial"]
    assert adversarial["labels_to_match_adversarial_per_seed"]["3"] is not None
    assert (
        adversarial["adversarial_rmse_at_these_labels"]
        == adversarial["final_boltzmann_force_rmse_mean"]
    )
    assert 0 < record["system"]["unseen_well_boltzmann_population"] < 0.5
    with pytest.raises(ValueError, match="adversarial"):
        run([0], 1, 1, quick=True, strategies=("random",))


def test_initial_data_lie_in_one_well_and_the_committee_is_unsure_of_the_other():
    settings = BenchmarkSettings(committee=CommitteeSettings(epochs=300))
    potential = settings.potential
    left, saddle, right = potential.stationary_x()
    xy = initial_data(settings, 0)
    assert len(xy) == settings.n_initial and np.all(xy[:, 0] < saddle)
    committee = train_committee(
        xy,
        potential.energy(xy),
        potential.forces(xy),
        settings.committee,
        member_seeds(0, 0, settings.committee.n_members),
    )
    sigma_train = predict(committee, xy)[2]
    sigma_unseen = predict(committee, np.array([[right, 0.0]]))[2]
    assert sigma_unseen[0] > 5 * sigma_train.mean()


def test_the_attack_finds_the_unseen_well():
    record = run(
        [0], generations=3, labels_per_generation=8, quick=True, strategies=("adversarial",)
    )
    rows = record["results"]["adversarial"]["0"]
    assert rows[-1]["labels_in_unseen_well"] >= 1
    # and what it learns there shows: the unseen well's force error drops
    assert (
        rows[-1]["boltzmann_force_rmse_unseen_well"]
        < 0.5 * rows[0]["boltzmann_force_rmse_unseen_well"]
    )
