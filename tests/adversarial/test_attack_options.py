"""Objective options, periodic and strain attacks, the Boltzmann bound, and seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from advloop.adversarial.attack import AttackSettings, attack, iattack, run_attack
from advloop.adversarial.objective import adversarial_objective, kT_from_temperature, log_partition
from advloop.adversarial.seeding import choose_seeds
from advloop.adversarial.structures import Seeds
from advloop.potentials.committee import Committee
from advloop.potentials.dataset import Arrays
from advloop.potentials.model import ModelSpec, build_graph
from tests.conftest import make_member

PERIODIC_SPEC = ModelSpec(n_atom_basis=8, n_interactions=1, n_rbf=6, cutoff=3.0)


def test_energy_variance_and_per_atom_energy_options():
    # two members, two structures (2 and 1 atoms)
    energies = torch.tensor([[1.0, -2.0], [1.4, -1.0]], dtype=torch.float64)
    forces = torch.zeros(2, 3, 3, dtype=torch.float64)
    idx_m = torch.tensor([0, 0, 1])
    kT, log_q = 0.2, 0.1
    obj, var = adversarial_objective(energies, forces, idx_m, kT, log_q, uncertainty="energy")
    expected_var = np.array([np.var([1.0, 1.4], ddof=1), np.var([-2.0, -1.0], ddof=1)])
    np.testing.assert_allclose(var.numpy(), expected_var)
    np.testing.assert_allclose(
        obj.numpy(), expected_var * np.exp(-np.array([1.2, -1.5]) / kT - log_q)
    )
    obj, _ = adversarial_objective(
        energies, forces, idx_m, kT, log_q, uncertainty="energy", energy="per_atom"
    )
    np.testing.assert_allclose(
        obj.numpy(), expected_var * np.exp(-np.array([0.6, -1.5]) / kT - log_q)
    )
    # Q per atom: log mean exp(-(E/N)/kT)
    assert log_partition(np.array([2.0, 3.0]), 0.5, np.array([2, 3])) == pytest.approx(-1.0 / 0.5)


def _periodic_seeds(n: int, rng: np.random.Generator) -> Arrays:
    """Rattled 4-atom fcc Cu cells (no labels needed: energies/forces are zeros)."""
    base = bulk("Cu", "fcc", a=3.6, cubic=True)
    frames = []
    for _ in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        frames.append(atoms)
    return Arrays(
        numbers=np.concatenate([a.numbers for a in frames]),
        positions=np.concatenate([a.positions for a in frames]),
        forces=np.zeros((4 * n, 3)),
        energy=np.zeros(n),
        n_atoms=np.full(n, 4),
        cell=np.stack([a.cell.array for a in frames]),
        pbc=np.ones((n, 3), dtype=bool),
    )


def test_periodic_objective_gradient_matches_finite_differences():
    committee = Committee([make_member(s, PERIODIC_SPEC) for s in range(3)])
    data = _periodic_seeds(2, np.random.default_rng(0))
    graph = build_graph(
        data.numbers, data.positions, data.n_atoms, PERIODIC_SPEC.cutoff, data.cell, data.pbc
    )

    def objective(x):
        e, f = committee.energies_forces(graph, x, create_graph=True)
        return adversarial_objective(e, f, graph.idx_m, 0.1, 0.0)[0].sum()

    x = torch.tensor(data.positions, requires_grad=True)
    (grad,) = torch.autograd.grad(objective(x), x)
    assert grad.abs().max() > 0
    h = 1e-5
    for atom, comp in [(0, 0), (3, 2), (6, 1)]:
        xp, xm = x.detach().clone(), x.detach().clone()
        xp[atom, comp] += h
        xm[atom, comp] -= h
        fd = (objective(xp.requires_grad_()) - objective(xm.requires_grad_())).item() / (2 * h)
        assert grad[atom, comp].item() == pytest.approx(fd, rel=1e-4, abs=1e-10)


def test_strain_attack_changes_the_cell_within_its_bound():
    committee = Committee([make_member(s, PERIODIC_SPEC) for s in range(3)])
    data = _periodic_seeds(2, np.random.default_rng(1))
    seeds = Seeds.from_arrays(data)
    settings = AttackSettings(
        n_steps=8, learning_rate=0.01, strain=True, max_strain=0.02, temperature=5000.0
    )
    candidates, result = attack(
        committee, seeds, data.energy, data.n_atoms, settings, torch.Generator().manual_seed(0)
    )
    strain = np.linalg.solve(data.cell, result.cells) - np.eye(3)  # h' = h (1 + ε)
    assert np.abs(strain).max() > 1e-3, "the cell did not move"
    assert np.abs(strain).max() <= 0.02 + 1e-9
    np.testing.assert_allclose(strain, np.swapaxes(strain, 1, 2), atol=1e-12)  # symmetric
    np.testing.assert_allclose(candidates.cells, result.cells)
    assert result.objective[-1].sum() > result.objective[0].sum()
    # without strain the cell stays put
    _, fixed = attack(
        committee,
        seeds,
        data.energy,
        data.n_atoms,
        AttackSettings(n_steps=3),
        torch.Generator().manual_seed(0),
    )
    np.testing.assert_array_equal(fixed.cells, data.cell)


def test_strain_attack_needs_periodic_seeds(trained_members, nh3_emt_data):
    committee = Committee(trained_members)
    with pytest.raises(ValueError, match="periodic"):
        attack(
            committee,
            Seeds.from_arrays(nh3_emt_data, [0]),
            nh3_emt_data.energy,
            nh3_emt_data.n_atoms,
            AttackSettings(strain=True),
            torch.Generator(),
        )


@pytest.mark.parametrize("uncertainty", ["forces", "energy"])
def test_boltzmann_factor_bounds_the_energy_rise_and_the_bound_grows_with_kT(
    trained_members, nh3_emt_data, uncertainty
):
    """Since the attack raises L = σ² e^{-E/kT}/Q, each seed's energy rise is bounded by
    kT · log(σ²_end / σ²_start); a hotter attack climbs higher."""
    committee = Committee(trained_members)
    seeds = nh3_emt_data.subset(range(8))
    rise = {}
    for temperature in (300.0, 20000.0):
        kT = kT_from_temperature(temperature)
        settings = AttackSettings(
            n_steps=40,
            learning_rate=0.02,
            initial_noise=0.0,
            temperature=temperature,
            uncertainty=uncertainty,
        )
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
        e0 = committee.predict_arrays(seeds.numbers, seeds.positions, seeds.n_atoms).energy_mean
        e1 = committee.predict_arrays(seeds.numbers, result.positions, seeds.n_atoms).energy_mean
        grew = result.objective[-1] >= result.objective[0]
        assert grew.mean() > 0.5
        bound = kT * 2 * np.log(result.sigma[-1] / result.sigma[0])
        assert np.all((e1 - e0)[grew] <= bound[grew] + 1e-6)
        rise[temperature] = float(np.mean(e1 - e0))
    assert rise[300.0] < rise[20000.0]


def test_choose_seeds_policies():
    energy = np.array([0.5, -1.0, 0.2, -0.3, 0.9, 0.0])
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(choose_seeds(energy, 2, "lowest_energy", rng), [1, 3])
    random = choose_seeds(energy, 4, "random", rng)
    assert len(set(random)) == 4 and random.max() < 6
    assert len(choose_seeds(energy, 10, "random", rng)) == 6
    prev = choose_seeds(energy, 3, "previous", rng, np.array([4, 5]))
    assert {4, 5} <= set(prev) and len(prev) == 3
    assert set(choose_seeds(energy, 2, "previous", rng, np.array([0, 2, 4, 5]))) <= {0, 2, 4, 5}
    with pytest.raises(ValueError, match="policy"):
        choose_seeds(energy, 2, "nearest", rng)
    with pytest.raises(ValueError, match="empty"):
        choose_seeds(energy[:0], 2, "random", rng)


def test_iattack_yields_cells_and_sigma_per_step(trained_members, nh3_emt_data):
    committee = Committee(trained_members)
    seeds = nh3_emt_data.subset([0, 1])
    kT = kT_from_temperature(1000.0)
    steps = list(
        iattack(
            committee,
            seeds.numbers,
            seeds.positions,
            seeds.n_atoms,
            kT,
            log_partition(nh3_emt_data.energy, kT),
            AttackSettings(n_steps=3),
            torch.Generator().manual_seed(0),
        )
    )
    assert [s.step for s in steps] == [0, 1, 2, 3]
    assert all(s.cells.shape == (2, 3, 3) and s.sigma.shape == (2,) for s in steps)
    assert all(np.all(s.sigma > 0) for s in steps)


def test_mixed_seeds_are_the_lowest_half_and_a_random_rest():
    from advloop.adversarial.seeding import choose_seeds

    energy = np.array([5.0, 1.0, 4.0, 0.0, 3.0, 2.0, 6.0, 7.0])
    chosen = choose_seeds(energy, 4, "mixed", np.random.default_rng(0))
    assert len(chosen) == 4 and len(set(chosen.tolist())) == 4
    assert {3, 1} <= set(chosen.tolist())  # the two lowest
    others = set(chosen.tolist()) - {3, 1}
    draws = {
        frozenset(choose_seeds(energy, 4, "mixed", np.random.default_rng(k)).tolist()) - {3, 1}
        for k in range(20)
    }
    assert len(draws) > 1 and all(len(d) == 2 for d in draws) and others
    # md_frames starts from the lowest-energy structures (the MD is the caller's)
    assert choose_seeds(energy, 3, "md_frames", np.random.default_rng(0)).tolist() == [1, 3, 5]
