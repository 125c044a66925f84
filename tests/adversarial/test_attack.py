"""The adversarial objective and attack (Schwalbe-Koda et al., Nat. Commun. 12, 5104, 2021)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from advloop.adversarial.attack import AttackSettings, iattack, run_attack
from advloop.adversarial.objective import adversarial_objective, kT_from_temperature, log_partition
from advloop.potentials.committee import Committee
from advloop.potentials.model import build_graph


def _objective(committee, graph, positions, idx_m, kT, log_q):
    energies, forces = committee.energies_forces(graph, positions, create_graph=True)
    return adversarial_objective(energies, forces, idx_m, kT, log_q)[0]


def test_log_partition_matches_direct_sum_and_is_shift_invariant():
    e = np.array([-0.1, 0.0, 0.25, 0.3])
    kT = 0.05
    assert log_partition(e, kT) == pytest.approx(np.log(np.mean(np.exp(-e / kT))), rel=1e-12)
    # A constant shift (e.g. total vs relative energies) moves log Q by exactly -shift/kT,
    # so the objective exp(-E/kT)/Q is unchanged.
    assert log_partition(e - 1500.0, kT) == pytest.approx(log_partition(e, kT) + 1500.0 / kT)


def test_objective_gradient_matches_finite_differences(trained_members, nh3_emt_data):
    committee = Committee(trained_members)
    seeds = nh3_emt_data.subset([0, 1])
    graph = build_graph(seeds.numbers, seeds.positions, seeds.n_atoms, committee.spec.cutoff)
    idx_m = graph.idx_m
    kT = kT_from_temperature(1000.0)
    log_q = log_partition(nh3_emt_data.energy, kT)
    x = torch.tensor(seeds.positions, dtype=torch.float64, requires_grad=True)
    objective = _objective(committee, graph, x, idx_m, kT, log_q)
    (grad,) = torch.autograd.grad(objective.sum(), x)
    assert grad.abs().max() > 0, "attack gradient vanished (forces built without create_graph?)"

    h = 1e-5
    for atom, comp in [(0, 0), (1, 2), (5, 1), (7, 0)]:
        xp = x.detach().clone()
        xm = x.detach().clone()
        xp[atom, comp] += h
        xm[atom, comp] -= h
        with torch.enable_grad():
            fd = (
                _objective(committee, graph, xp.requires_grad_(), idx_m, kT, log_q).sum()
                - _objective(committee, graph, xm.requires_grad_(), idx_m, kT, log_q).sum()
            ) / (2 * h)
        assert float(grad[atom, comp]) == pytest.approx(fd.item(), rel=1e-4, abs=1e-9)


def test_objective_is_boltzmann_weighted_force_variance():
    # Two members, one structure of two atoms: σ²_F is the mean over atoms and components.
    forces = torch.tensor(
        [[[1.0, 0, 0], [0, 0, 0]], [[-1.0, 0, 0], [0, 0, 2.0]]], dtype=torch.float64
    )
    energies = torch.tensor([[0.1], [0.3]], dtype=torch.float64)
    idx_m = torch.tensor([0, 0])
    kT, log_q = 0.1, np.log(0.5)
    objective, var_f = adversarial_objective(energies, forces, idx_m, kT, log_q)
    expected_var = (2.0 + 2.0) / 6  # var(ddof=1) of (1,-1) is 2, of (0,2) is 2; 6 entries
    assert float(var_f[0]) == pytest.approx(expected_var)
    assert float(objective[0]) == pytest.approx(expected_var * np.exp(-0.2 / kT) / 0.5)


def test_attack_raises_committee_force_variance(trained_members, nh3_emt_data):
    committee = Committee(trained_members)
    seeds = nh3_emt_data.subset(range(6))
    kT = kT_from_temperature(1000.0)
    settings = AttackSettings(n_steps=20, learning_rate=0.01, initial_noise=0.0)
    result = run_attack(
        committee,
        seeds.numbers,
        seeds.positions,
        seeds.n_atoms,
        kT,
        log_partition(nh3_emt_data.energy, kT),
        settings,
        torch.Generator().manual_seed(0),
    )
    assert result.objective.shape == (21, 6)
    before = committee.predict_arrays(seeds.numbers, seeds.positions, seeds.n_atoms)
    after = committee.predict_arrays(seeds.numbers, result.positions, seeds.n_atoms)
    assert np.all(np.isfinite(result.positions))
    assert np.mean(after.forces_std_mean) > 1.5 * np.mean(before.forces_std_mean)
    assert np.all(result.objective[-1] > result.objective[0])
    # |δ| per atom never exceeds the clamp
    disp = np.linalg.norm(result.positions - seeds.positions, axis=1)
    assert disp.max() <= settings.max_displacement + 1e-9


def test_attack_freezes_seeds_that_become_unphysical(trained_members, nh3_emt_data):
    committee = Committee(trained_members)
    seeds = nh3_emt_data.subset(range(3))
    kT = kT_from_temperature(1000.0)
    # A huge step and a tight bond criterion force fragmentation within a few steps.
    settings = AttackSettings(
        n_steps=10, learning_rate=0.5, max_displacement=3.0, max_bond_factor=1.3
    )
    steps = list(
        iattack(
            committee,
            seeds.numbers,
            seeds.positions,
            seeds.n_atoms,
            kT,
            log_partition(nh3_emt_data.energy, kT),
            settings,
            torch.Generator().manual_seed(1),
        )
    )
    last = steps[-1]
    assert last.stopped, "no seed was stopped"
    assert all("step" in why for why in last.stopped.values())
    assert np.all(np.isfinite(last.positions)) and np.all(np.isfinite(last.objective))


def test_attack_settings_reject_bad_values():
    with pytest.raises(ValueError, match="temperature"):
        AttackSettings(temperature=0)
    with pytest.raises(ValueError, match="n_steps"):
        AttackSettings(n_steps=0)
