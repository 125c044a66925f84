"""One contract, every calculator: what advloop's code relies on from an ASE calculator.

Run over PySCF (a molecule, RHF/STO-3G), periodic PySCF (Γ-point RKS-PBE, H2 in a box),
tblite (GFN2-xTB, a molecule), ASE's EMT (a periodic Cu3Al cell) and advloop's committee
of schnetpack models. For each:

- ``implemented_properties`` declares energy and forces;
- units: the energy (eV) equals an independent route to it (the library called
  directly in its own units, bohr and Hartree, or a physical reference); with forces
  equal to minus the energy's derivative in Å (below) this makes the forces eV/Å;
- shapes: the energy a Python float, the forces a finite float ``[n_atoms, 3]`` array;
- forces equal minus the central finite difference of the energy (step and tolerance
  per calculator, in :data:`CASES`);
- the energy is invariant under a rigid translation (and, for molecules, a rotation,
  under which the forces rotate with the atoms);
- results are cached: asking again on unchanged atoms does not call ``calculate``, a
  caller changing the returned array does not change the cache, and moving an atom makes
  the next request compute again.

Calculators are built directly (not through ``advloop.calculators.factory``, whose
configuration is not the subject here), each at a cheap level of theory; tblite and EMT
as the labeller builds them. The whole file takes about 5 s on one core. Each structure
is distorted from its minimum, so forces are far from zero and a wrong sign or unit (bohr
for Å: a factor 1.9; Hartree for eV: 27) fails by orders of magnitude more than the tolerances.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import Calculator
from ase.calculators.emt import EMT
from ase.units import Bohr, Hartree

from advloop.calculators.committee_calculator import CommitteeCalculator
from advloop.calculators.pyscf_calculator import PySCFCalculator
from advloop.calculators.pyscf_periodic import PeriodicPySCFCalculator
from advloop.potentials.committee import Committee
from advloop.potentials.model import build_graph, energy_and_forces
from tests.conftest import displaced, emt_arrays, make_member


def _distorted(atoms: Atoms, seed: int, std: float = 0.08) -> Atoms:
    """``atoms`` with every coordinate moved by N(0, std²) Å, fixed seed."""
    atoms = atoms.copy()
    atoms.positions += np.random.default_rng(seed).normal(0.0, std, atoms.positions.shape)
    return atoms


# --- PySCF, a molecule ------------------------------------------------------------------

_PYSCF = dict(method="RHF", basis="sto-3g", conv_tol=1e-11)


def _pyscf_reference(atoms: Atoms) -> float:
    """RHF/STO-3G energy from PySCF called directly, with the geometry in bohr, eV."""
    from pyscf import gto, scf

    mol = gto.M(
        atom=[(s, tuple(p / Bohr)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
        unit="Bohr",
        basis="sto-3g",
        verbose=0,
    )
    mf = scf.RHF(mol)
    mf.conv_tol = 1e-11
    return float(mf.kernel()) * Hartree


# --- periodic PySCF: the cell of tests/calculators/test_pyscf_periodic.py ---------------

_BOX = 4.0  # Å
_PERIODIC = dict(ke_cutoff=100.0, conv_tol=1e-10)  # Hartree; a 37³ mesh, about 1 s a call


def _h2_in_box() -> Atoms:
    return Atoms(
        "H2", positions=[[0.1, 0.2, 0.3], [0.85, 0.25, 0.2]], cell=np.eye(3) * _BOX, pbc=True
    )


def _periodic_reference(atoms: Atoms) -> float:
    """Γ-point RKS-PBE/gth-szv from PySCF's periodic code called directly in bohr, eV."""
    from pyscf.pbc import dft as pbc_dft
    from pyscf.pbc import gto as pbc_gto

    cell = pbc_gto.Cell()
    cell.atom = [
        (s, tuple(p / Bohr)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)
    ]
    cell.a = atoms.cell[:] / Bohr
    cell.unit = "Bohr"
    cell.basis, cell.pseudo, cell.ke_cutoff, cell.verbose = (
        "gth-szv",
        "gth-pbe",
        _PERIODIC["ke_cutoff"],
        0,
    )
    cell.build()
    mf = pbc_dft.RKS(cell, xc="PBE").multigrid_numint()
    mf.conv_tol = _PERIODIC["conv_tol"]
    return float(mf.kernel()) * Hartree


# --- tblite -----------------------------------------------------------------------------


def _tblite() -> Calculator:
    """tblite's ASE calculator as advloop's labeller builds it (default accuracy)."""
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


def _tblite_reference(atoms: Atoms) -> float:
    """GFN2-xTB energy from tblite's own interface (bohr in, Hartree out), eV."""
    from tblite.interface import Calculator as XTB

    xtb = XTB("GFN2-xTB", atoms.numbers, atoms.positions / Bohr)
    xtb.set("verbosity", 0)
    return float(xtb.singlepoint().get("energy")) * Hartree


# --- EMT --------------------------------------------------------------------------------

# Cu's cohesive energy, 3.49 eV (C. Kittel, Introduction to Solid State Physics, 8th ed.,
# table 3.1); ASE's EMT (K. W. Jacobsen, P. Stoltze, J. K. Nørskov, Surf. Sci. 366, 394
# (1996)) is fitted to it: an isolated atom minus fcc bulk at its lattice constant.
_CU_COHESIVE_EV = 3.49


def _cu3al() -> Atoms:
    """An L1₂ Cu3Al cell (4 atoms, periodic), a = 3.7 Å."""
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms.symbols[0] = "Al"
    return atoms


def _emt_cohesive_energy(atoms: Atoms) -> float:
    """Not a function of ``atoms``: EMT's Cu cohesive energy, eV (a check of its unit)."""
    atom = Atoms("Cu", positions=[[0.0, 0.0, 0.0]], calculator=EMT())
    cu = bulk("Cu", "fcc", a=3.61)
    cu.calc = EMT()
    return atom.get_potential_energy() - cu.get_potential_energy() / len(cu)


# --- the committee ----------------------------------------------------------------------


@functools.cache
def _committee() -> Committee:
    """Three tiny untrained PaiNN members (seeds 0-2) whose per-element energies and force
    scale are fitted to EMT labels of displaced NH3 (eV), so energies are of a real size."""
    data = emt_arrays(displaced(molecule("NH3"), 8, 0.05, np.random.default_rng(7)))
    members = [make_member(seed) for seed in range(3)]
    for member in members:
        member.fit_normalisation(data.numbers, data.n_atoms, data.energy, data.forces)
    return Committee(members)


def _committee_reference(atoms: Atoms) -> float:
    """The mean of the members' energies, each from the model and autograd directly, eV."""
    committee = _committee()
    graph = build_graph(
        atoms.numbers, atoms.positions, np.array([len(atoms)]), committee.spec.cutoff
    )
    positions = torch.as_tensor(atoms.positions, dtype=torch.float64)
    energies = [
        float(energy_and_forces(m, graph, positions)[0].detach()[0]) for m in committee.members
    ]
    return float(np.mean(energies))


# --- the cases --------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One calculator and a structure to check it on.

    ``units`` returns the energy (eV) that the calculator's energy of ``atoms`` must equal
    within ``units_tol`` eV, by another route; or, with ``units_is_constant``, a property
    of the method computed with the same calculator class (EMT's cohesive energy) that
    must equal the physical value ``units_expected`` (eV). ``fd_components``: the (atom,
    axis) pairs to difference, None for all.
    """

    calculator: Callable[[], Calculator]
    atoms: Callable[[], Atoms]
    units: Callable[[Atoms], float]
    units_tol: float  # eV
    fd_step: float  # Å
    fd_tol: float  # eV/Å
    invariance_tol: float  # eV, and eV/Å for the rotated forces
    molecule: bool
    units_is_constant: bool = False
    units_expected: float | None = None  # eV
    fd_components: tuple[tuple[int, int], ...] | None = None


CASES = {
    # HF: no integration grid, so rotation is exact. SCF noise at conv_tol 1e-11 Ha is
    # below 3e-10 eV, under 2e-7 eV/Å in a difference at h = 1e-3 Å. Measured: analytic
    # forces agree with the differences to 2.5e-5 eV/Å (the O(h²) term), PySCF called
    # directly to 5e-10 eV, a translation moves the energy by 2e-12 eV.
    "pyscf": Case(
        calculator=lambda: PySCFCalculator(**_PYSCF),
        atoms=lambda: _distorted(molecule("H2O"), seed=1),
        units=_pyscf_reference,
        units_tol=1e-6,
        fd_step=1e-3,
        fd_tol=1e-4,
        invariance_tol=1e-6,
        molecule=True,
    ),
    # Measured in test_pyscf_periodic.py: analytic forces agree with differences to 4e-5
    # eV/Å on this coarse mesh, and a rigid shift moves the energy by 1.7e-5 eV against
    # the fixed FFT mesh ("egg box"); here 4.2e-5 eV/Å and 1.7e-5 eV. A call takes about
    # a second on one thread: three components only.
    "pyscf_periodic": Case(
        calculator=lambda: PeriodicPySCFCalculator(**_PERIODIC),
        atoms=_h2_in_box,
        units=_periodic_reference,
        units_tol=1e-6,
        fd_step=1e-3,
        fd_tol=3e-4,
        invariance_tol=3e-4,
        molecule=False,
        fd_components=((0, 0), (1, 1), (1, 2)),
    ),
    # As advloop's labeller builds it: tblite's default accuracy (1.0). Measured on this
    # NH3: the forces differ from differences of the energy by 1.2e-4 eV/Å whatever the
    # step (1e-3 to 1e-4 Å), the self-consistent charges' convergence error (at accuracy
    # 0.01 the difference falls as h², to 5e-7 eV/Å at h = 1e-4 Å). Rigid motions move
    # the energy by under 1e-6 eV.
    "tblite": Case(
        calculator=_tblite,
        atoms=lambda: _distorted(molecule("NH3"), seed=2),
        units=_tblite_reference,
        units_tol=1e-6,
        fd_step=1e-3,
        fd_tol=3e-4,
        invariance_tol=1e-6,
        molecule=True,
    ),
    # EMT is a closed-form, smooth energy: differences at h = 1e-4 Å agree to 1e-8 eV/Å
    # (measured); its Cu cohesive energy is 3.516 eV.
    "emt": Case(
        calculator=EMT,
        atoms=lambda: _distorted(_cu3al(), seed=3),
        units=_emt_cohesive_energy,
        units_tol=0.1,
        units_is_constant=True,
        units_expected=_CU_COHESIVE_EV,
        fd_step=1e-4,
        fd_tol=1e-6,
        invariance_tol=1e-9,
        molecule=False,
    ),
    # Float64 members: forces are autograd's exact derivative; differences at h = 1e-4 Å
    # agree to 2e-8 eV/Å (measured). PaiNN is invariant under rotations and translations.
    "committee": Case(
        calculator=lambda: CommitteeCalculator(_committee()),
        atoms=lambda: _distorted(molecule("NH3"), seed=4, std=0.05),
        units=_committee_reference,
        units_tol=1e-9,
        fd_step=1e-4,
        fd_tol=1e-6,
        invariance_tol=1e-8,
        molecule=True,
    ),
}


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request) -> Case:
    return CASES[request.param]


@functools.cache
def _evaluated(name: str) -> tuple[Atoms, float, np.ndarray]:
    """The case's atoms with their energy (eV) and forces (eV/Å), computed once."""
    c = CASES[name]
    atoms = c.atoms()
    atoms.calc = c.calculator()
    forces = atoms.get_forces()
    return atoms, atoms.get_potential_energy(), forces


def _energy(case: Case, atoms: Atoms) -> float:
    atoms = atoms.copy()
    atoms.calc = case.calculator()
    return atoms.get_potential_energy()


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


# --- the contract -----------------------------------------------------------------------


def test_declares_energy_and_forces(case):
    calc = case.calculator()
    assert {"energy", "forces"} <= set(calc.implemented_properties)


def test_energy_is_a_float_in_ev_and_forces_are_n_atoms_by_3(request, case):
    name = request.node.callspec.id
    atoms, energy, forces = _evaluated(name)
    assert isinstance(energy, float) and np.isfinite(energy)
    assert isinstance(forces, np.ndarray) and forces.dtype == np.float64
    assert forces.shape == (len(atoms), 3) and np.isfinite(forces).all()
    assert np.abs(forces).max() > 0.1  # distorted: a real test of the forces, not 0 = 0
    if case.units_is_constant:
        assert case.units(atoms) == pytest.approx(case.units_expected, abs=case.units_tol)
    else:
        assert energy == pytest.approx(case.units(atoms), abs=case.units_tol)


def test_forces_are_minus_the_energy_gradient(request, case):
    atoms, _, forces = _evaluated(request.node.callspec.id)
    components = case.fd_components or [(a, x) for a in range(len(atoms)) for x in range(3)]
    h = case.fd_step
    for a, x in components:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[a, x] += h
        minus.positions[a, x] -= h
        fd = -(_energy(case, plus) - _energy(case, minus)) / (2 * h)
        assert forces[a, x] == pytest.approx(fd, abs=case.fd_tol), (a, x)


def test_energy_is_invariant_under_rigid_motions(request, case):
    atoms, energy, forces = _evaluated(request.node.callspec.id)
    shifted = atoms.copy()
    shifted.positions += [0.37, -0.21, 0.11]  # Å; not a multiple of any mesh spacing
    assert _energy(case, shifted) == pytest.approx(energy, abs=case.invariance_tol)
    if case.molecule:
        rotation = _random_rotation(np.random.default_rng(5))
        centre = atoms.get_center_of_mass()
        rotated = atoms.copy()
        rotated.positions = (atoms.positions - centre) @ rotation.T + centre
        rotated.calc = case.calculator()
        assert rotated.get_potential_energy() == pytest.approx(energy, abs=case.invariance_tol)
        np.testing.assert_allclose(
            rotated.get_forces(), forces @ rotation.T, atol=case.invariance_tol
        )


def test_results_are_cached_on_unchanged_atoms_and_recomputed_after_a_move(case):
    atoms = case.atoms()
    calc = case.calculator()
    calls = []
    compute = calc.calculate

    def counted(*args, **kwargs):
        calls.append(args)
        return compute(*args, **kwargs)

    calc.calculate = counted
    atoms.calc = calc
    forces = atoms.get_forces()
    energy = atoms.get_potential_energy()
    assert len(calls) == 1  # forces first: one calculation gives both
    assert not calc.calculation_required(atoms, ["energy", "forces"])
    forces[:] = 0.0  # the caller's copy, not the cache
    again = atoms.get_forces()
    assert len(calls) == 1 and np.abs(again).max() > 0.1
    assert atoms.get_potential_energy() == energy

    atoms.positions[0] += [0.03, -0.02, 0.01]
    assert calc.calculation_required(atoms, ["energy"])
    moved = atoms.get_forces()
    assert len(calls) == 2
    assert not np.allclose(moved, again)
    assert atoms.get_potential_energy() != energy
