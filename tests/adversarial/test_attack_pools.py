"""Attack paths as candidate pools, and the calibrated-target objective (Cezar et al.,
npj Comput. Mater. 2025). The committee is schnetpack PaiNN trained on EMT-labelled NH3
(EMT: a stand-in oracle; these tests are about the attack, not about the labels)."""

import numpy as np
import pytest
import torch

from advloop.adversarial.attack import AttackSettings, attack, iattack
from advloop.adversarial.objective import adversarial_objective, kT_from_temperature, log_partition
from advloop.adversarial.structures import Seeds
from advloop.potentials.committee import Committee
from advloop.potentials.model import build_graph


def _seeds(data, n):
    return Seeds.from_arrays(data, np.arange(n))


def test_pool_keeps_every_kth_geometry_of_the_attack_path(trained_members, nh3_emt_data):
    committee = Committee(trained_members)
    seeds = _seeds(nh3_emt_data, 4)
    settings = AttackSettings(n_steps=12, pool_every=4, initial_noise=0.01)
    candidates, result = attack(
        committee,
        seeds,
        nh3_emt_data.energy,
        nh3_emt_data.n_atoms,
        settings,
        torch.Generator().manual_seed(3),
    )
    # the same attack, step by step
    kT = kT_from_temperature(settings.temperature)
    steps = list(
        iattack(
            committee,
            seeds.numbers,
            seeds.positions,
            seeds.n_atoms,
            kT,
            log_partition(nh3_emt_data.energy, kT),
            settings,
            torch.Generator().manual_seed(3),
        )
    )
    n = len(seeds)
    active_at = {t: [s for s in range(n) if s not in steps[t].stopped] for t in (4, 8)}
    assert len(candidates) == n + sum(len(v) for v in active_at.values())
    # endpoints first, in seed order, then the pooled frames by step and seed
    np.testing.assert_array_equal(candidates.parent[:n], np.arange(n))
    starts = candidates.starts
    k = n
    for t in (4, 8):
        for s in active_at[t]:
            assert candidates.parent[k] == s
            frame = candidates.positions[starts[k] : starts[k + 1]]
            np.testing.assert_allclose(frame, steps[t].positions[4 * s : 4 * s + 4])
            assert candidates.score[k] == pytest.approx(steps[t].objective[s])
            k += 1
    # σ of every candidate is the committee's on that geometry
    pred = committee.predict_arrays(candidates.numbers, candidates.positions, candidates.n_atoms)
    np.testing.assert_allclose(candidates.sigma_f_mean, pred.forces_std_mean, rtol=1e-6)
    # the path ends where the plain attack ends
    np.testing.assert_allclose(candidates.positions[: starts[n]], result.positions)


def test_pool_off_gives_the_endpoints_only(trained_members, nh3_emt_data):
    seeds = _seeds(nh3_emt_data, 3)
    candidates, _ = attack(
        Committee(trained_members),
        seeds,
        nh3_emt_data.energy,
        nh3_emt_data.n_atoms,
        AttackSettings(n_steps=6),
        torch.Generator().manual_seed(0),
    )
    assert len(candidates) == 3


def test_target_objective_saturates_at_the_target():
    forces = torch.zeros(2, 2, 3, dtype=torch.float64)
    forces[1] = 1.0  # variance per component 0.5
    energies = torch.zeros(2, 2, dtype=torch.float64)
    idx_m = torch.tensor([0, 1])
    plain, var = adversarial_objective(energies, forces, idx_m, 0.1, 0.0)
    for target in (0.01, 100.0):
        aimed, _ = adversarial_objective(energies, forces, idx_m, 0.1, 0.0, sigma_target=target)
        expected = var * target**2 / (var + target**2)
        np.testing.assert_allclose(aimed.numpy(), expected.numpy(), rtol=1e-12)
    # far below the target it is the paper's objective, far above it levels off at σ_t²
    far_above, _ = adversarial_objective(energies, forces, idx_m, 0.1, 0.0, sigma_target=1e-3)
    np.testing.assert_allclose(far_above.numpy(), 1e-6, rtol=1e-5)
    far_below, _ = adversarial_objective(energies, forces, idx_m, 0.1, 0.0, sigma_target=1e3)
    np.testing.assert_allclose(far_below.numpy(), plain.numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="sigma_target"):
        adversarial_objective(energies, forces, idx_m, 0.1, 0.0, sigma_target=0.0)


def test_target_objective_gradient_matches_finite_differences(trained_members, nh3_emt_data):
    committee = Committee(trained_members)
    data = nh3_emt_data.subset([0])
    graph = build_graph(data.numbers, data.positions, data.n_atoms, committee.spec.cutoff)
    idx_m = graph.idx_m
    kT, log_q = kT_from_temperature(1000.0), log_partition(nh3_emt_data.energy, 0.0862)

    def objective(x):
        energies, forces = committee.energies_forces(graph, x, create_graph=True)
        return adversarial_objective(energies, forces, idx_m, kT, log_q, sigma_target=0.02)[0]

    x = torch.tensor(data.positions, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(objective(x).sum(), x)
    h = 1e-4
    for atom, axis in ((0, 0), (1, 2), (3, 1)):
        xp, xm = data.positions.copy(), data.positions.copy()
        xp[atom, axis] += h
        xm[atom, axis] -= h
        fd = (
            objective(torch.tensor(xp, requires_grad=True)).sum()
            - objective(torch.tensor(xm, requires_grad=True)).sum()
        ) / (2 * h)
        assert float(grad[atom, axis]) == pytest.approx(float(fd.detach()), rel=2e-3, abs=1e-9)


def test_target_attack_stops_short_of_the_maximal_sigma(trained_members, nh3_emt_data):
    committee = Committee(trained_members)
    seeds = _seeds(nh3_emt_data, 6)
    sigma = {}
    for objective, target in (("max", None), ("target", 0.05)):
        settings = AttackSettings(n_steps=40, objective=objective, target_error=target)
        candidates, _ = attack(
            committee,
            seeds,
            nh3_emt_data.energy,
            nh3_emt_data.n_atoms,
            settings,
            torch.Generator().manual_seed(0),
            calibration_scale=2.0,  # σ_t = 0.05 / 2
        )
        sigma[objective] = candidates.sigma_f_mean
    assert np.mean(sigma["target"]) < np.mean(sigma["max"])
    with pytest.raises(ValueError, match="target_error"):
        AttackSettings(objective="target")
    with pytest.raises(ValueError, match="pool_every"):
        AttackSettings(pool_every=-1)
