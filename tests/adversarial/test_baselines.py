"""Random displacement and committee MD, the baselines of the adversarial attack
(Schwalbe-Koda et al., Nat. Commun. 12, 5104, 2021; DP-GEN trust levels: Zhang et al.,
Comput. Phys. Commun. 253, 107206, 2020)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk, molecule

from advloop.adversarial.baselines import (
    CommitteeMDSettings,
    RandomDisplacementSettings,
    committee_md,
    icommittee_md,
    random_displacement,
)
from advloop.adversarial.geometry import check_geometry
from advloop.adversarial.structures import Seeds
from advloop.potentials.committee import Committee
from advloop.potentials.model import ModelSpec
from tests.conftest import make_member

# Untrained members for tests about bookkeeping rather than physics: cheaper than TINY_SPEC.
SMALL_SPEC = ModelSpec(n_atom_basis=8, n_interactions=1, n_rbf=6, cutoff=4.0)
WIDE = dict(trust_lower=0.0, trust_upper=1e3)  # a window that accepts every frame


def seeds_from(structures: list[Atoms]) -> Seeds:
    return Seeds(
        numbers=np.concatenate([a.numbers for a in structures]).astype(np.int64),
        positions=np.concatenate([a.positions for a in structures]),
        n_atoms=np.array([len(a) for a in structures]),
        cells=np.array([a.cell.array for a in structures]),
        pbc=np.array([a.pbc for a in structures]),
        index=np.arange(len(structures)),
    )


def small_committee(n: int = 2) -> Committee:
    return Committee([make_member(100 + k, SMALL_SPEC) for k in range(n)])


def assert_scores_match_committee(committee: Committee, cands) -> None:
    pred = committee.predict_arrays(
        cands.numbers, cands.positions, cands.n_atoms, cands.cells, cands.pbc
    )
    np.testing.assert_allclose(cands.sigma_f_mean, pred.forces_std_mean, rtol=1e-6)
    np.testing.assert_allclose(cands.sigma_f_max, pred.forces_std_max, rtol=1e-6)


def test_settings_reject_bad_values():
    RandomDisplacementSettings()
    CommitteeMDSettings()
    for kwargs, match in [
        ({"std": 0}, r"random\.std = 0: must be > 0 Å"),
        ({"n_per_seed": 0}, "random.n_per_seed"),
        ({"min_distance_factor": 3.0}, "random.max_bond_factor"),
    ]:
        with pytest.raises(ValueError, match=match):
            RandomDisplacementSettings(**kwargs)
    for kwargs, match in [
        ({"temperature": 0}, "md.temperature"),
        ({"timestep": -1}, "md.timestep"),
        ({"friction": -0.1}, "md.friction"),
        ({"sample_interval": 0}, "md.sample_interval"),
        ({"trust_lower": 0.5, "trust_upper": 0.5}, "md.trust_upper"),
        ({"max_frames_per_seed": 0}, "md.max_frames_per_seed"),
    ]:
        with pytest.raises(ValueError, match=match):
            CommitteeMDSettings(**kwargs)


def test_random_displacement_keeps_the_bonds_of_periodic_seeds():
    """A zeolite with a guest (examples/structures/sod_nh3.cif) displaced by 0.45 Å per
    component: the copies kept are exactly those without a clash and without a broken
    bond of their seed (:func:`advloop.adversarial.geometry.bonded_pairs`), fewer than a clash
    test alone would keep."""
    from pathlib import Path

    from ase.io import read

    from advloop.adversarial.geometry import bonded_pairs

    atoms = read(Path(__file__).resolve().parents[2] / "examples" / "structures" / "sod_nh3.cif")
    settings = RandomDisplacementSettings(std=0.45, n_per_seed=40)
    cands = random_displacement(
        small_committee(), seeds_from([atoms]), settings, np.random.default_rng(0)
    )
    copies = np.tile(atoms.positions, (40, 1)) + np.random.default_rng(0).normal(
        0, 0.45, (40 * 40, 3)
    )
    copies = copies.reshape(40, 40, 3)
    bonds = bonded_pairs(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    reasons = [
        check_geometry(atoms.numbers, x, 0.5, 2.0, atoms.cell.array, atoms.pbc, bonds)
        for x in copies
    ]
    clash_only = [
        check_geometry(atoms.numbers, x, 0.5, 2.0, atoms.cell.array, atoms.pbc) for x in copies
    ]
    assert any(r is not None and r.startswith("bond broken") for r in reasons)
    kept = [k for k, r in enumerate(reasons) if r is None]
    assert 0 < len(kept) < sum(r is None for r in clash_only)
    np.testing.assert_allclose(cands.positions.reshape(-1, 40, 3), copies[kept])


def test_random_displacement_has_requested_std_and_parents(nh3_emt_data):
    committee = small_committee()
    seeds = Seeds.from_arrays(nh3_emt_data, np.arange(5))
    settings = RandomDisplacementSettings(std=0.05, n_per_seed=40)
    cands = random_displacement(committee, seeds, settings, np.random.default_rng(0))
    assert len(cands) == 200 and not cands.stopped
    np.testing.assert_array_equal(cands.parent, np.repeat(np.arange(5), 40))
    np.testing.assert_array_equal(cands.n_atoms, 4)
    starts = seeds.starts
    origin = np.concatenate([seeds.positions[starts[p] : starts[p + 1]] for p in cands.parent])
    np.testing.assert_array_equal(cands.numbers, np.tile(seeds.numbers[:4], 200))
    delta = cands.positions - origin  # 2400 Gaussian samples
    assert abs(delta.mean()) < 4 * 0.05 / np.sqrt(delta.size)
    assert delta.std() == pytest.approx(0.05, rel=0.06)
    np.testing.assert_array_equal(cands.score, cands.sigma_f_mean)
    assert_scores_match_committee(committee, cands)


def test_random_displacement_drops_clashes_with_a_reason():
    clash = molecule("NH3")
    clash.positions[1] = clash.positions[0] + [0.05, 0.0, 0.0]  # an H inside the N
    seeds = seeds_from([molecule("NH3"), clash, molecule("H2O")])
    cands = random_displacement(
        small_committee(),
        seeds,
        RandomDisplacementSettings(std=1e-3, n_per_seed=2),
        np.random.default_rng(1),
    )
    np.testing.assert_array_equal(cands.parent, [0, 0, 2, 2])
    assert list(cands.stopped) == [1]
    assert cands.stopped[1].startswith("2 of 2 displacements rejected: atoms 0 and 1")


def test_periodic_clash_uses_images_and_skips_connectivity():
    cell = np.eye(3) * 8.0
    # Two Cu atoms 6.6 Å apart: "fragmented" as a molecule, a sane (dilute) crystal.
    dilute = Atoms("Cu2", [[0.2, 0.2, 0.2], [4.0, 4.0, 4.0]], cell=cell, pbc=True)
    # 7.9 Å apart in the listed coordinates, 0.1 Å through the cell boundary.
    across = Atoms("Cu2", [[0.05, 1.0, 1.0], [7.95, 1.0, 1.0]], cell=cell, pbc=True)
    assert check_geometry(dilute.numbers, dilute.positions).startswith("fragmented")
    seeds = seeds_from([dilute, across])
    cands = random_displacement(
        small_committee(), seeds, RandomDisplacementSettings(std=1e-3), np.random.default_rng(2)
    )
    np.testing.assert_array_equal(cands.parent, [0])
    np.testing.assert_array_equal(cands.cells[0], cell)
    assert "atoms 0 and 1 at 0.10 Å" in cands.stopped[1] and "periodic" in cands.stopped[1]


def test_nve_conserves_committee_mean_energy_plus_kinetic(trained_members, nh3_emt_data):
    # Velocity Verlet (friction 0) with a tiny step: H = <E>_committee + K is conserved to
    # O(dt²) while K itself fluctuates; wrong units, masses or force signs break this.
    committee = Committee(trained_members[:2])
    seeds = Seeds.from_arrays(nh3_emt_data, np.arange(4))
    settings = CommitteeMDSettings(
        temperature=300.0, timestep=0.1, n_steps=40, friction=0.0, **WIDE
    )
    steps = list(icommittee_md(committee, seeds, settings, np.random.default_rng(3)))
    assert len(steps) == 41 and steps[-1].active.all()
    total = np.array([s.energy + s.kinetic for s in steps])  # [steps, seeds] eV
    kinetic = np.array([s.kinetic for s in steps])
    assert np.all(kinetic.std(axis=0) > 2e-3)
    assert np.all(np.abs(total - total[0]).max(axis=0) < 0.02 * kinetic.std(axis=0))
    # Maxwell-Boltzmann start with no centre-of-mass momentum: mean K = (3N - 3) kT / 2.
    assert kinetic[0].mean() == pytest.approx(4.5 * units.kB * 300.0, rel=0.6)


def test_langevin_thermostat_reaches_target_temperature(trained_members, nh3_emt_data):
    # Started at the potential minimum's neighbourhood, NVE would settle near T/2 by
    # equipartition with the potential energy; strong friction holds 3N·kT/2 of kinetic energy.
    committee = Committee(trained_members[:2])
    seeds = Seeds.from_arrays(nh3_emt_data)  # 20 seeds, 240 degrees of freedom per step
    settings = CommitteeMDSettings(
        temperature=500.0, timestep=0.5, n_steps=50, friction=0.5, **WIDE
    )
    steps = list(icommittee_md(committee, seeds, settings, np.random.default_rng(4)))
    assert steps[-1].active.all()
    kinetic = np.array([s.kinetic for s in steps[15:]])  # [steps, seeds] eV
    temperature = 2.0 * kinetic.sum(axis=1).mean() / (3 * seeds.n_atoms.sum() * units.kB)
    assert temperature == pytest.approx(500.0, rel=0.15)


def test_trust_window_selects_the_most_uncertain_frames(trained_members, nh3_emt_data):
    committee = Committee(trained_members[:2])
    seeds = Seeds.from_arrays(nh3_emt_data, np.arange(6))
    base = dict(temperature=800.0, n_steps=30, sample_interval=3)
    wide = list(
        icommittee_md(
            committee, seeds, CommitteeMDSettings(**base, **WIDE), np.random.default_rng(5)
        )
    )
    dev = np.array([s.sigma_f_max for s in wide])  # [steps, seeds] eV/Å
    lower, upper = np.quantile(dev[3::3], [0.3, 0.8])
    settings = CommitteeMDSettings(
        **base, trust_lower=lower, trust_upper=upper, max_frames_per_seed=2
    )
    cands = committee_md(committee, seeds, settings, np.random.default_rng(5))

    # Same random stream, so each trajectory follows the wide run until it reaches upper.
    expected_parent, expected_score = [], []
    for s in range(len(seeds)):
        over = np.flatnonzero(dev[:, s] >= upper)
        end = over[0] if len(over) else len(dev)
        assert (s in cands.stopped) == bool(len(over))
        if len(over):
            assert cands.stopped[s].startswith(f"step {end}:") and "trust_upper" in cands.stopped[s]
        window = [dev[t, s] for t in range(3, end, 3) if lower <= dev[t, s] < upper]
        top = sorted(window, reverse=True)[:2]
        expected_parent += [s] * len(top)
        expected_score += top
    assert len(cands) > 0 and cands.stopped
    np.testing.assert_array_equal(cands.parent, expected_parent)
    np.testing.assert_allclose(cands.score, expected_score, rtol=1e-9)
    assert np.all((cands.sigma_f_max >= lower) & (cands.sigma_f_max < upper))
    np.testing.assert_array_equal(cands.score, cands.sigma_f_max)
    assert_scores_match_committee(committee, cands)


def test_tiny_trust_upper_stops_every_seed(nh3_emt_data):
    seeds = Seeds.from_arrays(nh3_emt_data, np.arange(3))
    settings = CommitteeMDSettings(trust_lower=0.0, trust_upper=1e-9)
    cands = committee_md(small_committee(), seeds, settings, np.random.default_rng(6))
    assert len(cands) == 0
    assert sorted(cands.stopped) == [0, 1, 2]
    assert all(r.startswith("step 0:") and "trust_upper" in r for r in cands.stopped.values())


def test_unphysical_or_non_finite_seeds_are_frozen_and_reported():
    committee = small_committee()
    broken = make_member(7, SMALL_SPEC)
    with torch.no_grad():  # finite weights that overflow to NaN for any structure with oxygen
        broken.network.representation.embedding.weight[8] = 1e300
    committee = Committee([committee.members[0], broken])
    seeds = seeds_from([molecule("NH3"), molecule("H2O"), molecule("CH4")])
    # Hot, with a tight bond criterion, so the molecules come apart within a few steps.
    settings = CommitteeMDSettings(
        temperature=5000.0, timestep=1.0, n_steps=15, friction=0.0, max_bond_factor=1.1, **WIDE
    )
    steps = list(icommittee_md(committee, seeds, settings, np.random.default_rng(7)))
    for s in steps:
        for value in (s.positions, s.sigma_f_max, s.sigma_f_mean, s.energy, s.kinetic):
            assert np.all(np.isfinite(value))
    stopped = steps[-1].stopped
    assert stopped[1].startswith("step 0: committee energy or forces not finite")
    assert "fragmented" in stopped[0] or "fragmented" in stopped[2]
    starts = seeds.starts
    for s, why in stopped.items():
        at = int(why.split(":")[0].removeprefix("step "))
        rows = slice(starts[s], starts[s + 1])
        frozen = [step.positions[rows] for step in steps[at:]]
        assert all(np.array_equal(frozen[0], p) for p in frozen)  # did not move again
        assert check_geometry(seeds.numbers[rows], frozen[0], 0.5, 1.1) is None  # last sane one
        assert not steps[-1].active[s] and steps[-1].kinetic[s] == 0.0
    cands = random_displacement(
        committee, seeds, RandomDisplacementSettings(std=1e-3), np.random.default_rng(8)
    )
    assert 1 not in cands.parent and "not finite" in cands.stopped[1]


def test_periodic_seed_runs_and_keeps_its_cell():
    copper = bulk("Cu", "fcc", a=3.6, cubic=True)  # 4 atoms; cell shorter than the cutoff
    shaken = copper.copy()
    shaken.positions += np.random.default_rng(9).normal(0.0, 0.05, shaken.positions.shape)
    seeds = seeds_from([copper, shaken])
    settings = CommitteeMDSettings(temperature=300.0, n_steps=12, sample_interval=3, **WIDE)
    steps = list(icommittee_md(small_committee(), seeds, settings, np.random.default_rng(10)))
    assert steps[-1].active.all()
    assert np.all(np.isfinite(steps[-1].positions))
    cands = committee_md(small_committee(), seeds, settings, np.random.default_rng(10))
    assert len(cands) == 8 and not cands.stopped
    np.testing.assert_array_equal(cands.cells, np.broadcast_to(copper.cell.array, (8, 3, 3)))
    assert cands.pbc.all()
    assert_scores_match_committee(small_committee(), cands)
