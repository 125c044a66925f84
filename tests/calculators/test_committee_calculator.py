"""The committee as an ASE calculator."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule

from advloop.calculators.committee_calculator import CommitteeCalculator
from advloop.potentials.checkpoint import save_member
from advloop.potentials.committee import Committee
from tests.conftest import make_member


@pytest.fixture
def calculator():
    return CommitteeCalculator(Committee([make_member(s) for s in range(3)]))


def test_forces_match_finite_differences_of_energy(calculator):
    atoms = molecule("NH3")
    atoms.positions += np.random.default_rng(3).normal(0, 0.05, atoms.positions.shape)
    atoms.calc = calculator
    forces = atoms.get_forces()
    h = 1e-4
    for a in range(len(atoms)):
        for c in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[a, c] += h
            minus.positions[a, c] -= h
            plus.calc = minus.calc = calculator
            fd = -(plus.get_potential_energy() - minus.get_potential_energy()) / (2 * h)
            assert forces[a, c] == pytest.approx(fd, abs=1e-6)


def test_spread_is_reported_per_atom(calculator):
    atoms = molecule("H2O")
    atoms.calc = calculator
    atoms.get_potential_energy()
    res = calculator.results
    assert res["energy_std"] > 0
    assert res["forces_std"].shape == (3,)
    members = [m for m in calculator.committee.members]
    single = [CommitteeCalculator(Committee([m, m])) for m in members[:1]][0]
    atoms.calc = single
    atoms.get_potential_energy()
    # identical members: no spread at all
    assert single.results["energy_std"] == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(single.results["forces_std"], 0.0)


def test_from_run_loads_latest_generation(tmp_path):
    for gen in (0, 1):
        for k in range(2):
            save_member(
                make_member(10 * gen + k),
                tmp_path / "committee" / f"gen_{gen:03d}" / f"member_{k}.pt",
            )
    atoms = molecule("NH3")
    latest = CommitteeCalculator.from_run(tmp_path)
    first = CommitteeCalculator.from_run(tmp_path, generation=0)
    expected = Committee([make_member(10), make_member(11)])
    e_latest = latest.get_potential_energy(atoms)
    assert e_latest == pytest.approx(
        CommitteeCalculator(expected).get_potential_energy(atoms), abs=1e-8
    )
    assert first.get_potential_energy(atoms) != pytest.approx(e_latest)
    with pytest.raises(FileNotFoundError):
        CommitteeCalculator.from_run(tmp_path, generation=5)


def test_molecular_dynamics_conserves_energy(calculator):
    from ase import units
    from ase.md.velocitydistribution import thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    atoms = molecule("NH3")
    atoms.calc = calculator
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    e0 = atoms.get_total_energy()
    VelocityVerlet(atoms, timestep=0.25 * units.fs).run(40)
    assert np.isfinite(atoms.get_total_energy())
    assert abs(atoms.get_total_energy() - e0) < 1e-3 * max(1.0, atoms.get_kinetic_energy())
    assert not np.allclose(atoms.positions, molecule("NH3").positions)  # it moved


def test_geometry_optimisation_of_a_periodic_cell(calculator):
    from ase.build import bulk
    from ase.optimize import BFGS

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.positions += np.random.default_rng(1).normal(0, 0.05, atoms.positions.shape)
    atoms.calc = calculator
    e0 = atoms.get_potential_energy()
    f0 = np.abs(atoms.get_forces()).max()
    assert calculator.results["forces_std"].shape == (4,)
    assert f0 > 1e-4
    BFGS(atoms, logfile=None).run(fmax=f0 / 10, steps=10)
    assert atoms.get_potential_energy() < e0
