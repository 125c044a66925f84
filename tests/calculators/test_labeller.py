"""Tests of label_structures with PySCF and with ASE's EMT as a stand-in oracle."""

from __future__ import annotations


import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import Calculator, SCFError, all_changes
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

from calculators import LabelOutcome, PySCFCalculator, label_structures


class _FailingCalculator(Calculator):
    """Raises ``error`` for structures with more than ``max_atoms`` atoms; else zeros."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, error: Exception, max_atoms: int) -> None:
        super().__init__()
        self.error = error
        self.max_atoms = max_atoms

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if len(self.atoms) > self.max_atoms:
            raise self.error
        self.results = {"energy": 0.0, "forces": np.zeros((len(self.atoms), 3))}


def test_pyscf_failure_is_recorded_and_labelling_continues() -> None:
    good = Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.74]])
    too_close = Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.1]])
    structures = [good, too_close, molecule("H2O")]
    calc = PySCFCalculator(method="RHF", basis="STO-3G")

    outcomes = label_structures(structures, calc)

    assert [o.index for o in outcomes] == [0, 1, 2]
    assert [o.ok for o in outcomes] == [True, False, True]
    assert outcomes[1].error.startswith("InvalidStructureError: ")
    assert outcomes[1].energy is None and outcomes[1].forces is None
    for outcome, atoms in zip(outcomes[::2], structures[::2]):
        assert outcome.error is None
        assert outcome.forces.shape == (len(atoms), 3)
        assert outcome.seconds > 0.0
        reference = atoms.copy()
        reference.calc = PySCFCalculator(method="RHF", basis="STO-3G")
        assert outcome.energy == pytest.approx(reference.get_potential_energy(), abs=1e-6)
    assert all(atoms.calc is None for atoms in structures)  # inputs untouched


def test_emt_stand_in_oracle_matches_direct_calls() -> None:
    # EMT is a stand-in oracle: a cheap ASE calculator that exercises the same path as DFT.
    rng = np.random.default_rng(7)
    structures = []
    for _ in range(3):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        structures.append(atoms)
    originals = [atoms.positions.copy() for atoms in structures]

    outcomes = label_structures(structures, EMT())

    assert all(o.ok for o in outcomes)
    for outcome, atoms, positions in zip(outcomes, structures, originals):
        reference = atoms.copy()
        reference.calc = EMT()
        assert outcome.energy == pytest.approx(reference.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(outcome.forces, reference.get_forces(), atol=1e-10)
        np.testing.assert_array_equal(atoms.positions, positions)
        assert not outcome.forces.flags.writeable


def test_constraints_are_not_applied_to_labels() -> None:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=3)
    reference = atoms.copy()
    reference.calc = EMT()
    atoms.set_constraint(FixAtoms(indices=[0]))

    (outcome,) = label_structures([atoms], EMT())

    np.testing.assert_allclose(outcome.forces, reference.get_forces(), atol=1e-12)
    assert np.abs(outcome.forces[0]).max() > 0.0


def test_any_calculation_failed_is_recorded() -> None:
    calc = _FailingCalculator(SCFError("no convergence"), max_atoms=2)
    outcomes = label_structures([molecule("H2"), molecule("H2O")], calc)
    assert [o.ok for o in outcomes] == [True, False]
    assert outcomes[1].error == "SCFError: no convergence"


def test_other_exceptions_propagate() -> None:
    calc = _FailingCalculator(ValueError("a bug"), max_atoms=2)
    with pytest.raises(ValueError, match="a bug"):
        label_structures([molecule("H2"), molecule("H2O")], calc)


def test_empty_input_gives_no_outcomes() -> None:
    assert label_structures([], EMT()) == []


def test_outcome_fields_must_be_consistent() -> None:
    with pytest.raises(ValueError):
        LabelOutcome(index=0, energy=None, forces=None, error=None, seconds=0.0)
    with pytest.raises(ValueError):
        LabelOutcome(index=0, energy=1.0, forces=np.zeros((2, 3)), error="X: y", seconds=0.0)
    with pytest.raises(ValueError):
        LabelOutcome(index=0, energy=1.0, forces=np.zeros(3), error=None, seconds=0.0)
    assert not LabelOutcome(index=0, energy=None, forces=None, error="X: y", seconds=0.0).ok
