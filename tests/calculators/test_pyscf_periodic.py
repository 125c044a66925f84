"""Tests of the Γ-point periodic PySCF calculator.

The test cell is H2 in a 4 Å cubic box, RKS-PBE/gth-szv/gth-pbe with a 100 Ha
plane-wave cutoff (a 37³ mesh): about 1 s per energy + forces call on one thread.
References: PySCF's own API called directly (in bohr, so the Å conversion is tested
too), and central finite differences of the energy for the forces.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import CalculationFailed, SCFError
from ase.units import Bohr, Hartree
from pyscf.pbc import dft as pbc_dft
from pyscf.pbc import gto as pbc_gto

from advloop.calculators.errors import InvalidStructureError, LabelError, SCFConvergenceError
from advloop.calculators.pyscf_periodic import PeriodicPySCFCalculator, PeriodicPySCFSettings
from advloop.potentials.hashing import structure_hash

BOX = 4.0  # Å, cubic cell edge
KE_CUTOFF = 100.0  # Hartree; 37^3 mesh for BOX
FD_STEP = 1e-3  # Å
# Measured: analytic forces agree with central differences to 4e-5 eV/Å at 100 Ha
# (the multigrid gradient is not exactly the derivative of the multigrid energy on a
# coarse mesh; 2e-7 eV/Å at PySCF's default 83^3 mesh). SCF noise with conv_tol
# 1e-10 Ha adds at most 2 * 1e-10 Ha / (2 * FD_STEP) = 3e-6 eV/Å, the O(h^2)
# truncation less. A wrong unit (bohr for Å) or sign is off by ~1 eV/Å here.
FD_TOL = 3e-4  # eV/Å
# Rigid translation: the FFT mesh is fixed to the cell, so the energy moves with the
# atoms' offset from the mesh points ("egg-box"); measured 1.7e-5 eV for the shift below.
EGG_BOX_TOL = 3e-4  # eV
SHIFT = np.array([0.37, -0.21, 0.11])  # Å, not commensurate with the 0.108 Å mesh spacing
ROOT = Path(__file__).resolve().parents[2]


def h2_in_box(positions: list[list[float]] | None = None) -> Atoms:
    """H2 (0.75 Å, slightly tilted) in a periodic 4 Å cubic box."""
    if positions is None:
        positions = [[0.1, 0.2, 0.3], [0.85, 0.25, 0.2]]
    return Atoms("H2", positions=positions, cell=np.eye(3) * BOX, pbc=True)


def fd_force(atoms: Atoms, calc: PeriodicPySCFCalculator, atom: int, axis: int) -> float:
    """Minus the central difference of the energy along one coordinate, eV/Å."""
    energies = []
    for sign in (1.0, -1.0):
        displaced = atoms.copy()
        displaced.positions[atom, axis] += sign * FD_STEP
        displaced.calc = calc
        energies.append(displaced.get_potential_energy())
    return -(energies[0] - energies[1]) / (2.0 * FD_STEP)


# --- energies and forces ----------------------------------------------------------


def test_matches_pyscf_called_directly_in_bohr() -> None:
    atoms = h2_in_box()
    calc = PeriodicPySCFCalculator(ke_cutoff=KE_CUTOFF, conv_tol=1e-10)
    atoms.calc = calc
    forces = atoms.get_forces()
    energy = atoms.get_potential_energy()
    assert atoms.get_potential_energy(force_consistent=True) == energy  # free_energy == energy

    cell = pbc_gto.Cell()
    cell.atom = [("H", tuple(p / Bohr)) for p in atoms.positions]
    cell.a = np.eye(3) * BOX / Bohr
    cell.unit = "Bohr"
    cell.basis, cell.pseudo, cell.ke_cutoff, cell.verbose = "gth-szv", "gth-pbe", KE_CUTOFF, 0
    cell.build()
    mf = pbc_dft.RKS(cell, xc="PBE").multigrid_numint()
    mf.conv_tol = 1e-10
    reference_ha = mf.kernel()
    gradient = mf.nuc_grad_method().kernel()  # Hartree/bohr

    assert energy == pytest.approx(reference_ha * Hartree, abs=1e-6)
    np.testing.assert_allclose(forces, -gradient * Hartree / Bohr, atol=1e-5)
    assert -35.0 < energy < -28.0  # about -31.3 eV: eV, not Hartree


def test_rks_forces_match_finite_differences() -> None:
    atoms = h2_in_box()
    calc = PeriodicPySCFCalculator(ke_cutoff=KE_CUTOFF, conv_tol=1e-10)
    atoms.calc = calc
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1.0  # a stretched-ish bond: a real test, not 0 = 0
    for atom, axis in [(0, 0), (1, 1), (1, 2)]:
        assert forces[atom, axis] == pytest.approx(fd_force(atoms, calc, atom, axis), abs=FD_TOL)


def stretched_h2_in_box() -> Atoms:
    """H2 stretched to 1.5 Å: with σ = 0.05 Ha its occupations are ~1.86/0.14."""
    return h2_in_box([[0.1, 0.2, 0.3], [1.6, 0.25, 0.2]])


def test_smeared_forces_are_the_free_energy_derivative() -> None:
    # With fractional occupations E and the Mermin free energy E - σS differ. Measured:
    # the analytic forces match differences of E - σS to 1e-8 Ha/bohr and differ from
    # differences of E by a factor ~2, so a calculator reporting E would fail here.
    atoms = stretched_h2_in_box()
    calc = PeriodicPySCFCalculator(ke_cutoff=KE_CUTOFF, smearing=0.05, conv_tol=1e-10)
    atoms.calc = calc
    forces = atoms.get_forces()
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()
    for atom, axis in [(0, 0), (1, 1)]:
        assert forces[atom, axis] == pytest.approx(fd_force(atoms, calc, atom, axis), abs=FD_TOL)


def test_smeared_uks_singlet_equals_rks() -> None:
    # UKS gradients and UKS smearing (spin fixed at 2S = 0) against the RKS path.
    labels = {}
    for method in ("RKS", "UKS"):
        atoms = stretched_h2_in_box()
        atoms.calc = PeriodicPySCFCalculator(
            method=method, ke_cutoff=KE_CUTOFF, smearing=0.05, conv_tol=1e-10
        )
        labels[method] = (atoms.get_forces(), atoms.get_potential_energy())
    assert labels["UKS"][1] == pytest.approx(labels["RKS"][1], abs=1e-6)
    np.testing.assert_allclose(labels["UKS"][0], labels["RKS"][0], atol=1e-5)


def test_translation_keeps_energy_and_forces() -> None:
    atoms = h2_in_box()
    calc = PeriodicPySCFCalculator(ke_cutoff=KE_CUTOFF, conv_tol=1e-10)
    atoms.calc = calc
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()

    by_lattice_vector = atoms.copy()  # an exact symmetry, mesh included
    by_lattice_vector.positions += atoms.cell[0] - atoms.cell[2]
    by_lattice_vector.calc = calc
    assert by_lattice_vector.get_potential_energy() == pytest.approx(energy, abs=1e-6)

    shifted = atoms.copy()  # one atom leaves the cell at y < 0: no wrapping needed
    shifted.positions += SHIFT
    shifted.calc = calc
    assert shifted.get_potential_energy() == pytest.approx(energy, abs=EGG_BOX_TOL)
    np.testing.assert_allclose(shifted.get_forces(), forces, atol=1e-3)


def test_forces_then_energy_run_one_scf(monkeypatch: pytest.MonkeyPatch) -> None:
    import advloop.calculators.pyscf_periodic as module

    calls = []
    make_scf = module._make_scf
    monkeypatch.setattr(module, "_make_scf", lambda *args: calls.append(1) or make_scf(*args))
    atoms = h2_in_box()
    atoms.calc = PeriodicPySCFCalculator(ke_cutoff=KE_CUTOFF)
    assert atoms.get_forces().shape == (2, 3)
    atoms.get_potential_energy()
    assert len(calls) == 1


# --- failures -----------------------------------------------------------------------


@pytest.fixture
def no_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a PySCF cell is built (so no SCF can run)."""

    def fail(*args: object, **kwargs: object) -> None:
        pytest.fail("a PySCF Cell was built for a structure that should be rejected first")

    monkeypatch.setattr(pbc_gto.Cell, "build", fail)


@pytest.mark.parametrize(
    ("pbc", "kind"),
    [(False, "non-periodic"), ([True, True, False], "partly periodic")],
)
def test_non_periodic_structure_rejected_before_any_scf(
    no_compute: None, tmp_path, pbc, kind: str
) -> None:
    atoms = h2_in_box()
    atoms.pbc = pbc
    atoms.calc = PeriodicPySCFCalculator(directory=tmp_path)
    with pytest.raises(InvalidStructureError, match=kind) as info:
        atoms.get_potential_energy()
    assert "PySCFCalculator is the one for isolated molecules" in str(info.value)
    assert info.value.structure_hash == structure_hash(atoms)
    assert info.value.directory == str(tmp_path)
    assert isinstance(info.value, CalculationFailed)


def test_missing_cell_rejected(no_compute: None) -> None:
    atoms = Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.75, 0.0, 0.0]], pbc=True)  # no cell
    atoms.calc = PeriodicPySCFCalculator()
    with pytest.raises(InvalidStructureError, match="three linearly independent cell vectors"):
        atoms.get_potential_energy()


def test_atoms_too_close_through_the_boundary_rejected(no_compute: None) -> None:
    atoms = h2_in_box([[0.05, 1.0, 1.0], [BOX - 0.1, 1.0, 1.0]])  # 0.15 Å apart across x = 0
    atoms.calc = PeriodicPySCFCalculator()
    with pytest.raises(
        InvalidStructureError, match=r"periodic images included, are 0\.150 Å apart"
    ):
        atoms.get_potential_energy()


@pytest.mark.parametrize(
    ("settings", "electrons"),
    [(dict(method="UKS", spin=1), 2), (dict(charge=1), 1), (dict(method="UKS", spin=4), 2)],
)
def test_spin_incompatible_with_valence_electrons_rejected(
    no_compute: None, settings: dict, electrons: int
) -> None:
    atoms = h2_in_box()
    atoms.calc = PeriodicPySCFCalculator(**settings)
    with pytest.raises(InvalidStructureError, match=f"with {electrons} valence electrons"):
        atoms.get_potential_energy()


def test_element_missing_from_pseudopotential_rejected(no_compute: None) -> None:
    atoms = Atoms(
        "UH", positions=[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]], cell=np.eye(3) * 5.0, pbc=True
    )
    atoms.calc = PeriodicPySCFCalculator()
    with pytest.raises(
        InvalidStructureError, match="pseudopotential 'gth-pbe' not found for element U"
    ):
        atoms.get_potential_energy()


@pytest.mark.filterwarnings("ignore:Basis may be available in basis-set-exchange")
def test_element_missing_from_basis_rejected() -> None:
    atoms = Atoms(
        "FeH", positions=[[0.0, 0.0, 0.0], [1.6, 0.0, 0.0]], cell=np.eye(3) * 5.0, pbc=True
    )
    atoms.calc = PeriodicPySCFCalculator(method="UKS", spin=1)  # gth-pbe has Fe, gth-szv does not
    with pytest.raises(InvalidStructureError, match="basis set 'gth-szv'"):
        atoms.get_potential_energy()


def test_unconverged_scf_raises_scf_error(tmp_path) -> None:
    atoms = h2_in_box()
    atoms.calc = PeriodicPySCFCalculator(
        ke_cutoff=KE_CUTOFF, max_cycle=1, directory=tmp_path, scf_ladder=("default",)
    )
    with pytest.raises(SCFConvergenceError, match=r"default \(max_cycle=1\)") as info:
        atoms.get_potential_energy()
    assert isinstance(info.value, SCFError)
    assert info.value.structure_hash == structure_hash(atoms)
    assert info.value.directory == str(tmp_path)
    assert "energy" not in atoms.calc.results


def test_ladder_recovers_an_scf_that_runs_out_of_cycles() -> None:
    reference = h2_in_box()
    reference.calc = PeriodicPySCFCalculator(ke_cutoff=KE_CUTOFF)
    expected = reference.get_potential_energy()
    cycles = reference.calc.scf_attempts[0].cycles
    atoms = h2_in_box()
    atoms.calc = PeriodicPySCFCalculator(ke_cutoff=KE_CUTOFF, max_cycle=max(1, cycles - 2))
    assert atoms.get_potential_energy() == pytest.approx(expected, abs=1e-5)
    assert atoms.calc.scf_rung == "more_cycles"
    assert not atoms.calc.scf_attempts[0].converged
    with pytest.raises(ValueError, match="newton"):
        PeriodicPySCFSettings(scf_ladder=("default", "newton"))


def test_mesh_too_coarse_for_the_density_fails_the_label() -> None:
    atoms = h2_in_box()
    atoms.calc = PeriodicPySCFCalculator(ke_cutoff=4.0)  # 9^3 mesh: 1.98 electrons of 2
    with pytest.raises(
        LabelError, match=r"integrates to 1\.98\d+ electrons on the \[9, 9, 9\] FFT mesh"
    ):
        atoms.get_potential_energy()


@pytest.mark.slow
def test_two_openmp_runtimes_caught_not_returned_as_labels() -> None:
    # The trap this guards against: pyscf.lib imported, then torch, then pyscf.pbc.
    # Measured: the multigrid density is then wrong on every thread count; the SCF
    # either fails to converge or "converges" to ~1.1 electrons for H2 (both seen,
    # run to run). The first part checks the guard deterministically on the density
    # of one diagonalisation (exactly 2 electrons analytically); the second, that the
    # public API then gives no label rather than a wrong one.
    script = textwrap.dedent(
        """
        import pyscf.lib
        import torch
        import numpy as np
        from ase import Atoms
        from advloop.calculators.errors import CalculationFailed, LabelError
        from advloop.calculators.pyscf_periodic import (
            PeriodicPySCFCalculator, PeriodicPySCFSettings, _build_cell, _check_density_on_mesh, _make_scf)
        atoms = Atoms("H2", positions=[[0.1, 0.2, 0.3], [0.85, 0.25, 0.2]], cell=np.eye(3) * 4.0, pbc=True)
        settings = PeriodicPySCFSettings(ke_cutoff=20.0, max_cycle=20)
        cell = _build_cell(atoms, settings, "hash", ".")
        mf = _make_scf(cell, settings)
        mf.max_cycle = 0  # one diagonalisation of the guess Fock matrix, no iterations
        mf.kernel()
        try:
            _check_density_on_mesh(mf, cell, "hash", ".")
            print("GUARD_OK")
        except LabelError:
            print("GUARD_FIRED")
        atoms.calc = PeriodicPySCFCalculator(settings)
        try:
            print("ENERGY", atoms.get_potential_energy())
        except CalculationFailed as err:
            print("FAILED", type(err).__name__, err)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    if "GUARD_OK" in done.stdout:  # these libraries do not show the trap: the label must be right
        energy = float(done.stdout.split("ENERGY")[1].split()[0])
        assert energy == pytest.approx(-31.5879, abs=1e-3)  # measured at 20 Ha in a sound process
    else:
        assert "GUARD_FIRED" in done.stdout, done.stdout
        assert "FAILED" in done.stdout, done.stdout


# --- settings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(method="RHF"), r"dft\.method"),
        (dict(xc="PBE0"), r"dft\.xc='PBE0' is a hybrid"),
        (dict(xc="SCAN"), r"dft\.xc='SCAN' is an MGGA"),
        (dict(xc="nonsense"), r"dft\.xc: unknown"),
        (dict(pseudo="cc-pvdz"), r"dft\.pseudo must name a GTH"),
        (dict(basis=""), r"dft\.basis"),
        (dict(spin=2), r"dft\.spin: method RKS is closed-shell"),
        (
            dict(method="UKS", spin=-1),
            r"dft\.spin = -1: must be ≥ 0 \(2S, the number of unpaired electrons",
        ),
        (dict(charge=0.5), r"dft\.charge"),
        (dict(ke_cutoff=0.0), r"dft\.ke_cutoff"),
        (dict(ke_cutoff="100"), r"dft\.ke_cutoff"),
        (dict(smearing=-0.01), r"dft\.smearing"),
        (dict(smearing=True), r"dft\.smearing"),
        (dict(conv_tol=0.0), r"dft\.conv_tol"),
        (dict(max_cycle=0), r"dft\.max_cycle"),
        (dict(max_memory_mb=-1), r"dft\.max_memory_mb"),
        (dict(verbose=10), r"dft\.verbose"),
    ],
)
def test_invalid_settings_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PeriodicPySCFSettings(**kwargs)


def test_unknown_or_doubled_keywords_rejected() -> None:
    with pytest.raises(TypeError):
        PeriodicPySCFCalculator(density_fit=True)  # GDF has no periodic gradients in PySCF 2.14
    with pytest.raises(TypeError, match="not both"):
        PeriodicPySCFCalculator(PeriodicPySCFSettings(), xc="PBE")
    assert PeriodicPySCFSettings.__pydantic_config__ == {"extra": "forbid", "allow_inf_nan": False}


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (PeriodicPySCFSettings(), "RKS-PBE/gth-szv/gth-pbe/Γ"),
        (
            PeriodicPySCFSettings(method="UKS", xc="blyp", basis="GTH-DZVP", pseudo="GTH-BLYP"),
            "UKS-BLYP/gth-dzvp/gth-blyp/Γ",
        ),
        (
            PeriodicPySCFSettings(ke_cutoff=100, smearing=0.01),
            "RKS-PBE/gth-szv/gth-pbe/Γ/ke=100Ha/fermi=0.01Ha",
        ),
    ],
)
def test_level_of_theory(settings: PeriodicPySCFSettings, expected: str) -> None:
    assert settings.level_of_theory == expected
    assert PeriodicPySCFCalculator(settings).level_of_theory == expected


def test_set_replaces_settings_and_clears_results() -> None:
    calc = PeriodicPySCFCalculator(ke_cutoff=KE_CUTOFF)
    calc.results = {"energy": 1.0}
    assert calc.set(smearing=0.01) == {"smearing": 0.01}
    assert calc.settings.smearing == 0.01
    assert calc.parameters["smearing"] == 0.01
    assert calc.results == {}
    with pytest.raises(ValueError, match=r"dft\.smearing"):
        calc.set(smearing=-1.0)
