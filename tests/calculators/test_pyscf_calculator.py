"""Tests of the PySCF calculator, its errors, and the structure hash.

References: a literature value (Szabo & Ostlund), PySCF's own API called directly,
and central finite differences of the energy for the forces.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.calculator import CalculationFailed, SCFError
from ase.units import Bohr, Hartree
from pyscf import dft, gto

from calculators import (
    InvalidStructureError,
    LabelError,
    PySCFCalculator,
    PySCFSettings,
    SCFConvergenceError,
    structure_hash,
)

FD_STEP = 1e-3  # Å
FD_TOL = 1e-3  # eV/Å
# Finite-difference tests use the coarse grid level 1 to stay fast: with the grid
# response included, forces are the exact derivative of the energy at any grid level
# (measured ~3e-5 eV/Å from finite differences at levels 1 and 3).
FD_GRID_LEVEL = 1


def h2(distance: float) -> Atoms:
    """H2 along z, ``distance`` in Å."""
    return Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, distance]])


def finite_difference_forces(atoms: Atoms, calc: PySCFCalculator, step: float = FD_STEP) -> np.ndarray:
    """Central differences of the energy, eV/Å, ``[n_atoms, 3]``."""
    forces = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for k in range(3):
            energies = []
            for sign in (1.0, -1.0):
                displaced = atoms.copy()
                displaced.positions[i, k] += sign * step
                displaced.calc = calc
                energies.append(displaced.get_potential_energy())
            forces[i, k] = -(energies[0] - energies[1]) / (2.0 * step)
    return forces


# --- energies against independent references -------------------------------------


def test_h2_rhf_sto3g_matches_szabo_ostlund() -> None:
    # Szabo & Ostlund, Modern Quantum Chemistry, ch. 3: H2 at R = 1.4 bohr, minimal
    # STO-3G basis, total energy E = -1.1167 Ha (electronic -1.8310 + nuclear 1/1.4).
    atoms = h2(1.4 * Bohr)
    atoms.calc = PySCFCalculator(method="RHF", basis="STO-3G")
    energy_ha = atoms.get_potential_energy() / Hartree
    assert energy_ha == pytest.approx(-1.1167, abs=2e-4)


@pytest.mark.parametrize("density_fit", [False, True])
def test_h2o_b3lyp_matches_pyscf_called_directly(density_fit: bool) -> None:
    # Level: RKS/B3LYP/3-21G, grid level 3, conv_tol 1e-10 Ha, with and without DF.
    atoms = molecule("H2O")
    calc = PySCFCalculator(method="RKS", xc="B3LYP", basis="3-21G", conv_tol=1e-10, density_fit=density_fit)
    atoms.calc = calc
    forces = atoms.get_forces()
    energy = atoms.get_potential_energy()

    mol = gto.M(
        atom=[(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
        unit="Angstrom",
        basis="3-21G",
        charge=0,
        spin=0,
        verbose=0,
    )
    mf = dft.RKS(mol)
    mf.xc = "B3LYP"
    mf.grids.level = 3
    mf.conv_tol = 1e-10
    if density_fit:
        mf = mf.density_fit()
    reference_ha = mf.kernel()
    assert mf.converged
    gradient = mf.nuc_grad_method()
    gradient.grid_response = True  # the calculator includes the grid response
    reference_gradient = gradient.kernel()  # Ha/bohr

    assert energy / Hartree == pytest.approx(reference_ha, abs=1e-7)
    np.testing.assert_allclose(forces, -reference_gradient * Hartree / Bohr, atol=1e-5)
    assert calc.level_of_theory == ("RKS/B3LYP/3-21G/DF" if density_fit else "RKS/B3LYP/3-21G")


# --- forces against finite differences of the energy -------------------------------


def test_rks_forces_match_finite_differences_nh3() -> None:
    atoms = molecule("NH3")
    atoms.rattle(0.05, seed=1)
    calc = PySCFCalculator(method="RKS", xc="PBE", basis="STO-3G", grid_level=FD_GRID_LEVEL)
    atoms.calc = calc
    analytic = atoms.get_forces()
    assert np.abs(analytic).max() > 0.1  # rattled: forces are far from zero
    np.testing.assert_allclose(analytic.sum(axis=0), 0.0, atol=1e-8)  # grid response: no net force
    np.testing.assert_allclose(analytic, finite_difference_forces(atoms, calc), atol=FD_TOL)


def test_uks_forces_match_finite_differences_nh2_radical() -> None:
    # NH2 (bent, non-degenerate doublet ground state). Not OH: a linear radical has a
    # degenerate pi hole whose UKS orientation does not follow a rotation of the
    # molecule, so its energy is not a smooth function of the perpendicular coordinates.
    atoms = molecule("NH2")
    atoms.rattle(0.05, seed=2)
    calc = PySCFCalculator(method="UKS", xc="PBE", basis="STO-3G", spin=1, grid_level=FD_GRID_LEVEL)
    atoms.calc = calc
    analytic = atoms.get_forces()
    assert np.abs(analytic).max() > 0.1
    np.testing.assert_allclose(analytic.sum(axis=0), 0.0, atol=1e-8)  # grid response: no net force
    np.testing.assert_allclose(analytic, finite_difference_forces(atoms, calc), atol=FD_TOL)


def test_forces_then_energy_reuse_one_scf(monkeypatch: pytest.MonkeyPatch) -> None:
    import calculators.pyscf_calculator as module

    calls = []
    make_scf = module._make_scf
    monkeypatch.setattr(module, "_make_scf", lambda *args: calls.append(1) or make_scf(*args))
    atoms = h2(0.74)
    atoms.calc = PySCFCalculator(method="RHF", basis="STO-3G")
    forces = atoms.get_forces()
    atoms.get_potential_energy()
    assert len(calls) == 1
    assert forces.shape == (2, 3)
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-6)  # no net force


# --- structures rejected before compute ---------------------------------------------


@pytest.fixture
def no_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a PySCF molecule is built (so no SCF can run)."""

    def fail(*args: object, **kwargs: object) -> None:
        pytest.fail("a PySCF Mole was built for a structure that should be rejected first")

    monkeypatch.setattr(gto.Mole, "build", fail)


def test_atoms_too_close_rejected_before_any_scf(no_compute: None, tmp_path) -> None:
    atoms = h2(0.1)
    atoms.calc = PySCFCalculator(method="RHF", basis="STO-3G", directory=tmp_path)
    with pytest.raises(InvalidStructureError, match=r"0\.100 Å apart") as info:
        atoms.get_potential_energy()
    assert info.value.structure_hash == structure_hash(atoms)
    assert info.value.directory == str(tmp_path)
    assert structure_hash(atoms) in str(info.value)
    assert isinstance(info.value, CalculationFailed)


@pytest.mark.parametrize(
    ("settings", "electrons"),
    [
        (dict(method="UKS", spin=1), 10),  # H2O: 10 electrons cannot have 2S = 1
        (dict(method="RKS", charge=1), 9),  # H2O+: 9 electrons cannot be a singlet
        (dict(method="UHF", spin=12), 10),  # more unpaired electrons than electrons
    ],
)
def test_spin_incompatible_with_electron_count_rejected(no_compute: None, settings: dict, electrons: int) -> None:
    atoms = molecule("H2O")
    calc = PySCFCalculator(basis="STO-3G", **settings)
    atoms.calc = calc
    with pytest.raises(InvalidStructureError) as info:
        atoms.get_potential_energy()
    message = str(info.value)
    assert f"charge={calc.settings.charge}" in message
    assert f"spin={calc.settings.spin}" in message
    assert f"{electrons} electrons" in message


def test_periodic_structure_rejected(no_compute: None) -> None:
    atoms = h2(0.74)
    atoms.cell = [5.0, 5.0, 5.0]
    atoms.pbc = True
    atoms.calc = PySCFCalculator(method="RHF", basis="STO-3G")
    with pytest.raises(InvalidStructureError, match="periodic DFT is not supported by this calculator yet"):
        atoms.get_potential_energy()


@pytest.mark.filterwarnings("ignore:Basis may be available in basis-set-exchange")
def test_element_missing_from_basis_rejected() -> None:
    atoms = Atoms("AuH", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 1.52]])
    atoms.calc = PySCFCalculator(method="RKS", basis="6-31G*")
    with pytest.raises(InvalidStructureError, match=r"'6-31G\*' not found for element\(s\) Au\b") as info:
        atoms.get_potential_energy()
    assert info.value.structure_hash == structure_hash(atoms)


def test_unconverged_scf_raises_scf_error() -> None:
    atoms = molecule("H2O")
    atoms.calc = PySCFCalculator(method="RKS", xc="PBE", basis="STO-3G", max_cycle=1)
    with pytest.raises(SCFConvergenceError, match="max_cycle=1") as info:
        atoms.get_potential_energy()
    err = info.value
    assert isinstance(err, SCFError)
    assert isinstance(err, CalculationFailed)
    assert isinstance(err, LabelError)
    assert err.structure_hash == structure_hash(atoms)
    assert "energy" not in atoms.calc.results


def test_errors_survive_pickling() -> None:
    err = SCFConvergenceError("did not converge", structure_hash="abc123", directory="/tmp/run")
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is SCFConvergenceError
    assert (clone.structure_hash, clone.directory) == ("abc123", "/tmp/run")
    assert str(clone) == str(err) == "did not converge [structure_hash=abc123, directory=/tmp/run]"
    assert str(InvalidStructureError("bad")) == "bad"


# --- settings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(method="CCSD"), "unknown method"),
        (dict(spin=-1), "must be >= 0"),
        (dict(method="RKS", spin=2), "use method='UKS'"),
        (dict(method="RHF", spin=1), "use method='UHF'"),
        (dict(xc="NOT_A_FUNCTIONAL"), "unknown exchange-correlation functional"),
        (dict(grid_level=12), "grid_level"),
        (dict(conv_tol=0.0), "conv_tol"),
        (dict(max_cycle=0), "max_cycle"),
        (dict(charge=0.5), "charge must be an integer"),
        (dict(basis=""), "basis"),
    ],
)
def test_invalid_settings_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PySCFSettings(**kwargs)
    with pytest.raises(ValueError, match=match):
        PySCFCalculator(**kwargs)


def test_hf_ignores_xc_and_unknown_keywords_fail() -> None:
    assert PySCFSettings(method="UHF", xc="ignored for HF", spin=1).level_of_theory == "UHF/6-31G*"
    with pytest.raises(TypeError):
        PySCFCalculator(basis_set="6-31G*")
    with pytest.raises(TypeError, match="not both"):
        PySCFCalculator(PySCFSettings(), basis="STO-3G")


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (PySCFSettings(), "RKS/PBE/6-31G*"),
        (PySCFSettings(method="RHF", basis="STO-3G"), "RHF/STO-3G"),
        (PySCFSettings(method="UKS", xc="b3lyp", basis="def2-svp", spin=1), "UKS/B3LYP/DEF2-SVP"),
        (PySCFSettings(density_fit=True), "RKS/PBE/6-31G*/DF"),
    ],
)
def test_level_of_theory(settings: PySCFSettings, expected: str) -> None:
    assert settings.level_of_theory == expected
    assert PySCFCalculator(settings).level_of_theory == expected


def test_set_replaces_settings_and_clears_results() -> None:
    atoms = h2(0.74)
    calc = PySCFCalculator(method="RHF", basis="STO-3G")
    atoms.calc = calc
    e_sto3g = atoms.get_potential_energy()
    assert calc.set(basis="3-21G") == {"basis": "3-21G"}
    assert calc.results == {}
    assert calc.level_of_theory == "RHF/3-21G"
    assert calc.parameters["basis"] == "3-21G"
    assert atoms.get_potential_energy() < e_sto3g  # bigger basis, lower variational energy
    with pytest.raises(ValueError):
        calc.set(spin=-2)
    assert calc.settings.spin == 0


# --- structure hash -----------------------------------------------------------------


def test_structure_hash() -> None:
    atoms = molecule("NH3")
    atoms.positions += 0.123  # keep coordinates away from rounding boundaries
    reference = structure_hash(atoms)
    assert len(reference) == 64
    assert structure_hash(atoms.copy()) == reference

    noisy = atoms.copy()
    noisy.positions += np.random.default_rng(0).uniform(-1e-9, 1e-9, size=noisy.positions.shape)
    assert structure_hash(noisy) == reference

    moved = atoms.copy()
    moved.positions[1, 2] += 1e-3
    assert structure_hash(moved) != reference

    periodic = atoms.copy()
    periodic.cell = [10.0, 10.0, 10.0]
    periodic.pbc = True
    assert structure_hash(periodic) != reference

    with pytest.raises(ValueError):
        structure_hash(atoms, decimals=-1)
