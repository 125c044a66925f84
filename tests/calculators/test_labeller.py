"""Tests of label_structures with PySCF and with ASE's EMT as a stand-in oracle."""

from __future__ import annotations

import re

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import Calculator, SCFError, all_changes
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

from advloop.calculators import LabelOutcome, PySCFCalculator, label_structures


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


class _CorruptEMT(EMT):
    """EMT (a stand-in oracle) whose results for 4-atom structures (NH3) are corrupted
    after the real calculation, as a broken calculator would return them; other
    structures keep their true labels. Counts its calculations."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        self.calls += 1
        super().calculate(atoms, properties, system_changes)
        if len(self.atoms) == 4:
            self.corrupt(self.results, len(self.atoms))

    def corrupt(self, results: dict, n_atoms: int) -> None:
        raise NotImplementedError


class _NaNForcesEMT(_CorruptEMT):
    def corrupt(self, results: dict, n_atoms: int) -> None:
        results["forces"][0, 0] = np.nan
        results["forces"][1, 2] = np.inf


class _FourColumnForcesEMT(_CorruptEMT):
    def corrupt(self, results: dict, n_atoms: int) -> None:
        results["forces"] = np.zeros((n_atoms, 4))


class _MissingAtomForcesEMT(_CorruptEMT):
    def corrupt(self, results: dict, n_atoms: int) -> None:
        results["forces"] = results["forces"][:-1]


class _HugeForcesEMT(_CorruptEMT):
    def corrupt(self, results: dict, n_atoms: int) -> None:
        results["forces"][2] = [1e9, 0.0, 0.0]


class _InfEnergyEMT(_CorruptEMT):
    def corrupt(self, results: dict, n_atoms: int) -> None:
        results["energy"] = np.inf


class _HugeEnergyEMT(_CorruptEMT):
    def corrupt(self, results: dict, n_atoms: int) -> None:
        results["energy"] = -1e300


class _VectorEnergyEMT(_CorruptEMT):
    def corrupt(self, results: dict, n_atoms: int) -> None:
        results["energy"] = np.array([results["energy"], 0.0])


class _OneElementEnergyEMT(_CorruptEMT):
    """A single energy in a one-element array (as some torch-based calculators return it):
    a valid label."""

    def corrupt(self, results: dict, n_atoms: int) -> None:
        results["energy"] = np.array([results["energy"]])


@pytest.mark.parametrize(
    "calc_class, reason",
    [
        (_NaNForcesEMT, r"2 force components are not finite \(nan or inf\)"),
        (_FourColumnForcesEMT, r"forces have shape \(4, 4\), expected \[4, 3\]"),
        (_MissingAtomForcesEMT, r"forces have shape \(3, 3\), expected \[4, 3\]"),
        (_HugeForcesEMT, r"max \|F\| 1e\+09 eV/Å \(atom 2\) is above the 1e\+04 eV/Å limit"),
        (_InfEnergyEMT, r"energy is inf"),
        (
            _HugeEnergyEMT,
            r"energy -1e\+300 eV \(-2.5e\+299 eV per atom\) is beyond the ±1e\+07 "
            r"eV per atom limit",
        ),
        (_VectorEnergyEMT, r"energy has shape \(2,\), expected a scalar"),
    ],
)
def test_an_invalid_label_is_a_stored_failure_with_its_reason(tmp_path, calc_class, reason) -> None:
    from advloop.calculators.label_store import LabelStore, label_key
    from advloop.potentials.hashing import structure_hash

    good, bad = molecule("H2O"), molecule("NH3")  # only NH3's label is corrupted
    store, theory = LabelStore(tmp_path), {"calculator": "corrupt"}
    calc = calc_class()

    outcomes = label_structures([good, bad], calc, store, theory)

    assert [o.ok for o in outcomes] == [True, False]
    assert outcomes[1].energy is None and outcomes[1].forces is None
    assert outcomes[1].error.startswith("InvalidLabelError: ")
    assert outcomes[1].error.endswith(f"[structure_hash={structure_hash(bad)}]")
    assert re.search(reason, outcomes[1].error), outcomes[1].error
    stored = store.get(label_key(bad, theory))
    assert stored.error == outcomes[1].error and stored.energy is None and stored.forces is None

    calls = calc.calls
    again = label_structures([good, bad], calc, store, theory)  # a re-run computes nothing
    assert calc.calls == calls and all(o.cached for o in again)
    assert [o.error for o in again] == [None, outcomes[1].error]


def test_an_invalid_label_without_a_store_is_a_failed_outcome() -> None:
    (outcome,) = label_structures([molecule("NH3")], _NaNForcesEMT())
    assert not outcome.ok and "force components are not finite" in outcome.error


def test_a_one_element_energy_array_is_a_valid_label() -> None:
    atoms = molecule("NH3")
    (outcome,) = label_structures([atoms], _OneElementEnergyEMT())
    reference = atoms.copy()
    reference.calc = EMT()
    assert outcome.ok and outcome.energy == pytest.approx(reference.get_potential_energy())


def test_a_successful_outcome_holds_only_finite_numbers() -> None:
    with pytest.raises(ValueError, match="finite"):
        LabelOutcome(index=0, energy=float("nan"), forces=np.zeros((2, 3)), error=None, seconds=0.0)
    forces = np.zeros((2, 3))
    forces[1, 1] = np.inf
    with pytest.raises(ValueError, match="finite"):
        LabelOutcome(index=0, energy=-1.0, forces=forces, error=None, seconds=0.0)
