"""Tests of the SCF failure ladder (``advloop.calculators.scf_ladder``) through ``PySCFCalculator``.

Non-convergence is forced deterministically with H2O whose O-H bonds are stretched 3×
(2.86 Å) at RHF/STO-3G: DIIS does not converge from PySCF's default guess in 20 or 50
cycles (measured, PySCF 2.14). The reference is PySCF's second-order solver called
directly, checked to be an internally stable minimum.
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.calculator import SCFError
from ase.units import Hartree
from pyscf import gto, scf

from advloop.calculators import PySCFCalculator, PySCFSettings, SCFConvergenceError, structure_hash
from advloop.calculators.scf_ladder import DEFAULT_SCF_LADDER, SCF_RUNGS, run_scf_ladder


def stretched_water() -> Atoms:
    """H2O with both O-H bonds 3× their equilibrium length (ASE's H2O, scaled about O)."""
    atoms = molecule("H2O")
    oxygen = atoms.positions[0].copy()
    atoms.positions = oxygen + 3.0 * (atoms.positions - oxygen)
    return atoms


def pyscf_mole(atoms: Atoms, basis: str = "sto-3g") -> gto.Mole:
    return gto.M(
        atom=[(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
        unit="Angstrom",
        basis=basis,
        verbose=0,
    )


@pytest.fixture
def reference_ha() -> float:
    """RHF/STO-3G energy of the stretched water from PySCF's Newton solver, Ha."""
    mf = scf.RHF(pyscf_mole(stretched_water())).newton()
    mf.conv_tol = 1e-10
    energy = mf.kernel()
    assert mf.converged
    assert mf.stability(return_status=True)[2]  # an internally stable minimum
    return float(energy)


def test_default_rung_alone_fails_and_names_the_rung(tmp_path) -> None:
    atoms = stretched_water()
    calc = PySCFCalculator(
        method="RHF", basis="STO-3G", max_cycle=20, scf_ladder=("default",), directory=tmp_path
    )
    atoms.calc = calc
    with pytest.raises(SCFConvergenceError) as info:
        atoms.get_potential_energy()
    message = str(info.value)
    assert isinstance(info.value, SCFError)
    assert "1 rung(s)" in message
    assert "default (max_cycle=20): not converged after 20 cycles, last ΔE=" in message
    assert structure_hash(atoms) in message and str(tmp_path) in message
    assert calc.scf_rung is None and calc.scf_cycles == 20
    assert [attempt.rung for attempt in calc.scf_attempts] == ["default"]
    assert "energy" not in calc.results


@pytest.mark.parametrize(
    ("ladder", "max_cycle"),
    [
        (("default", "more_cycles"), 30),
        (("default", "level_shift"), 20),
        (("default", "newton"), 20),
        (DEFAULT_SCF_LADDER, 20),
    ],
)
def test_ladder_converges_where_diis_fails(
    ladder: tuple[str, ...], max_cycle: int, reference_ha: float, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="advloop.calculators.scf_ladder")
    atoms = stretched_water()
    calc = PySCFCalculator(method="RHF", basis="STO-3G", max_cycle=max_cycle, scf_ladder=ladder)
    atoms.calc = calc
    forces = atoms.get_forces()
    assert atoms.get_potential_energy() / Hartree == pytest.approx(reference_ha, abs=1e-6)
    assert calc.scf_rung not in (None, "default")
    first = calc.scf_attempts[0]
    assert (first.rung, first.converged, first.cycles) == ("default", False, max_cycle)
    assert calc.scf_attempts[-1].rung == calc.scf_rung and calc.scf_attempts[-1].converged
    assert calc.scf_cycles == sum(attempt.cycles for attempt in calc.scf_attempts) > max_cycle
    np.testing.assert_allclose(forces.sum(axis=0), 0.0, atol=1e-6)
    # the escalation is logged (a run forwards this logger to Prefect's run log)
    assert "SCF rung 'default' did not converge" in caplog.text
    assert f"SCF converged on rung {calc.scf_rung!r}" in caplog.text


def test_saddle_point_from_level_shift_is_followed_to_the_minimum(reference_ha: float) -> None:
    # Level shifting alone converges this molecule to a saddle point about 4 eV above the
    # minimum (measured -74.11923 Ha); the ladder accepts a later rung's solution only
    # once it is internally stable.
    mf = scf.RHF(pyscf_mole(stretched_water()))
    mf.level_shift, mf.damp, mf.diis_start_cycle, mf.max_cycle = 0.3, 0.5, 4, 40
    shifted = mf.kernel()
    assert mf.converged and shifted > reference_ha + 0.1
    assert not mf.stability(return_status=True)[2]

    atoms = stretched_water()
    calc = PySCFCalculator(
        method="RHF", basis="STO-3G", max_cycle=20, scf_ladder=("default", "level_shift")
    )
    atoms.calc = calc
    assert atoms.get_potential_energy() / Hartree == pytest.approx(reference_ha, abs=1e-6)
    assert calc.scf_rung == "level_shift"


@pytest.mark.parametrize("rung", SCF_RUNGS)
def test_every_rung_alone_gives_the_same_label(rung: str) -> None:
    # RKS with the grid response: the Newton solver's object must give the same
    # analytic gradient as the DIIS one.
    atoms = molecule("NH3")
    atoms.rattle(0.05, seed=3)
    settings = dict(method="RKS", xc="PBE", basis="STO-3G", grid_level=1, conv_tol=1e-10)
    atoms.calc = PySCFCalculator(**settings)
    reference_forces, reference_energy = atoms.get_forces(), atoms.get_potential_energy()
    atoms.calc = calc = PySCFCalculator(**settings, scf_ladder=(rung,))
    forces = atoms.get_forces()
    assert calc.scf_rung == rung
    assert atoms.get_potential_energy() == pytest.approx(reference_energy, abs=1e-8 * Hartree)
    np.testing.assert_allclose(forces, reference_forces, atol=1e-4)


def test_a_rung_that_raises_is_recorded_and_the_next_runs() -> None:
    mol = pyscf_mole(Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]))
    calls = []

    def make_scf() -> scf.hf.SCF:
        mf = scf.RHF(mol)
        mf.conv_tol = 1e-10
        if not calls:

            def fail(**kwargs: object) -> float:
                raise np.linalg.LinAlgError("Eigenvalues did not converge")

            mf.kernel = fail
        calls.append(mf)
        return mf

    result = run_scf_ladder(make_scf, ("default", "more_cycles"), max_cycle=50)
    assert result.rung == "more_cycles" and result.mf is not None and result.mf.converged
    assert result.attempts[0].error == "raised LinAlgError: Eigenvalues did not converge"
    assert "raised LinAlgError" in result.attempts[0].describe()


@pytest.mark.parametrize(
    ("ladder", "match"),
    [
        (("default", "diis_harder"), "unknown SCF ladder rung 'diis_harder'"),
        ((), "at least one rung"),
        (("newton", "default", "newton"), "'newton' appear more than once"),
        ("newton", "not the string 'newton'"),
    ],
)
def test_invalid_ladder_rejected(ladder: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PySCFSettings(scf_ladder=ladder)
    with pytest.raises(ValueError, match=match):
        PySCFCalculator(scf_ladder=ladder)


def test_ladder_setting_defaults_and_normalisation() -> None:
    assert (
        PySCFSettings().scf_ladder
        == DEFAULT_SCF_LADDER
        == ("default", "more_cycles", "level_shift", "newton")
    )
    settings = PySCFSettings(scf_ladder=["default", "newton"])
    assert settings.scf_ladder == ("default", "newton")
    hash(settings)  # still a hashable frozen dataclass
    calc = PySCFCalculator(settings)
    assert calc.set(scf_ladder=["default", "newton"]) == {}
    assert calc.set(scf_ladder=["newton"]) == {"scf_ladder": ("newton",)}
    assert calc.level_of_theory == "RKS/PBE/6-31G*"  # the ladder is not part of the level of theory
