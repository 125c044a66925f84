"""Molecular (non-periodic) Hartree-Fock and Kohn-Sham DFT as an ASE calculator, via PySCF.

PySCF: Q. Sun et al., "Recent developments in the PySCF program package",
J. Chem. Phys. 153, 024109 (2020). Analytic nuclear gradients as implemented there.

Units at the interface: positions in Å; energy in eV and forces in eV/Å in
``self.results``. PySCF works in Hartree and bohr internally; conversions use
``ase.units.Hartree`` and ``ase.units.Bohr``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from ase import Atoms
from ase.calculators.calculator import CalculatorSetupError, all_changes
from ase.data import chemical_symbols, covalent_radii
from ase.units import Bohr, Hartree
from pyscf import dft, gto, lib, scf
from pyscf.lib.exceptions import BasisNotFoundError
from pyscf.scf.dispersion import parse_dft, parse_disp

from advloop.calculators.errors import InvalidStructureError, SCFConvergenceError
from advloop.calculators.scf_ladder import (
    DEFAULT_SCF_LADDER,
    REUSE_MAX_DISPLACEMENT,
    DensityGuess,
    RungAttempt,
    ScfRung,
    run_scf_ladder,
    validate_ladder,
)
from advloop.calculators.settings_calculator import SettingsCalculator
from advloop.constraints import Interval, NonNegativeInt, PositiveInt, check_fields, doc
from advloop.potentials.hashing import structure_hash

__all__ = [
    "MIN_DISTANCE_FACTOR",
    "MIN_INTERATOMIC_DISTANCE",
    "PySCFCalculator",
    "PySCFSettings",
    "REUSE_MAX_DISPLACEMENT",
    "check_labelable",
]

Method = Literal["RKS", "UKS", "RHF", "UHF"]
Dispersion = Literal["d3bj", "d4"]
_KS_METHODS = ("RKS", "UKS")
_RESTRICTED_METHODS = ("RKS", "RHF")

# Two atoms i, j closer than max(MIN_INTERATOMIC_DISTANCE, MIN_DISTANCE_FACTOR * (r_i + r_j)),
# with r the covalent radii of ase.data (B. Cordero et al., Dalton Trans. 2832 (2008)),
# are rejected before compute. The factor sits below the exploration's default
# min_distance_factor (0.5), so this is a hard floor, not a second selection policy:
# 0.30 Å for H-H (the floor), 0.39 Å for O-H, 0.61 Å for C-C.
MIN_INTERATOMIC_DISTANCE = 0.3  # Å
MIN_DISTANCE_FACTOR = 0.4  # × the sum of the two covalent radii


def _check_dispersion(dispersion: str | None, xc: str) -> None:
    """Raise ValueError unless the dispersion correction can be computed for ``xc``.

    ``dispersion`` is the setting, or None when ``xc`` itself names one (``"B3LYP-D3BJ"``,
    which PySCF honours); ``xc`` is ``"HF"`` for Hartree-Fock. The correction is
    evaluated once for H2 (about a millisecond), so a missing package or a functional
    without parameters is reported when the settings are made, not after an SCF.
    """
    try:
        from pyscf.dispersion import dftd3, dftd4
    except ImportError as err:
        raise ValueError(
            f"dispersion correction {dispersion or xc!r} needs the pyscf-dispersion package (DFT-D3/D4 "
            "for PySCF), which is not installed: pip install pyscf-dispersion"
        ) from err
    method, version, with_3body = parse_disp(xc.strip().lower(), dispersion)
    h2 = gto.M(atom="H 0 0 0; H 0 0 0.74", basis="sto-3g", verbose=0)
    try:
        if version.startswith("d3"):
            dftd3.DFTD3Dispersion(h2, xc=method, version=version, atm=with_3body).get_dispersion()
        else:
            dftd4.DFTD4Dispersion(h2, xc=method, atm=with_3body).get_dispersion()
    except RuntimeError as err:
        raise ValueError(
            f"dispersion correction {version!r} has no parameters for xc={xc!r}: {err}"
        ) from err


@dataclass(frozen=True)
class PySCFSettings:
    """Level of theory and numerical settings for one PySCF SCF + gradient calculation.

    Attributes:
        method: ``"RKS"``/``"UKS"`` (restricted/unrestricted Kohn-Sham DFT) or
            ``"RHF"``/``"UHF"`` (Hartree-Fock). Restricted methods require ``spin == 0``
            (no silent switch to restricted open-shell).
        xc: exchange-correlation functional in libxc/PySCF syntax (``"PBE"``,
            ``"B3LYP"``, ...). Ignored for HF methods.
        basis: basis set name known to PySCF (``"6-31G*"``, ``"def2-SVP"``, ...).
        charge: total charge, in units of the elementary charge.
        spin: number of unpaired electrons, 2S (PySCF's convention; 0 singlet, 1 doublet).
        density_fit: use density fitting (RI-J/K) with PySCF's default auxiliary basis.
        grid_level: PySCF DFT integration grid level, 0 (coarse) to 9 (fine).
        conv_tol: SCF energy convergence threshold, Hartree.
        max_cycle: maximum number of SCF iterations.
        threads: OpenMP threads for this calculator's work (None: PySCF's default,
            from ``OMP_NUM_THREADS``).
        max_memory_mb: memory PySCF may use, MB.
        verbose: PySCF verbosity, 0 (silent) to 9.
        scf_ladder: the SCF strategies tried in turn until one converges (see
            ``advloop.calculators.scf_ladder``): ``"default"``, ``"more_cycles"``,
            ``"level_shift"``, ``"newton"``. ``("default",)`` turns the ladder off.
        reuse_density: start the SCF from the last converged density matrix when the
            atoms (numbers and order), basis, charge, spin and method are the same and
            no atom moved more than ``REUSE_MAX_DISPLACEMENT``. Off by default: on NH3
            at PBE/6-31G* it saved 4-15 % of SCF cycles and no measurable time, and where
            an SCF has several solutions a label could then depend on the structure
            labelled before it, which a content-addressed label store must not allow.
            ``benchmarks/labelling.py`` measures it.
        dispersion: empirical dispersion correction added to energy and forces:
            ``"d3bj"`` (S. Grimme et al., J. Comput. Chem. 32, 1456 (2011)), ``"d4"``
            (E. Caldeweyher et al., J. Chem. Phys. 150, 154122 (2019)), or None. Needs
            the ``pyscf-dispersion`` package.

    Raises:
        ValueError: on an unknown method or functional, a negative spin, a restricted
            method with ``spin != 0``, an out-of-range numerical setting, an unknown or
            repeated ladder rung, or a dispersion correction that is unknown, has no
            parameters for the functional, or whose package is missing.
    """

    __pydantic_config__ = {
        "extra": "forbid",
        "allow_inf_nan": False,
    }  # unknown keys, inf and NaN are errors

    method: Method = "RKS"
    xc: str = "PBE"
    basis: str = "6-31G*"
    charge: int = 0
    spin: Annotated[NonNegativeInt, doc("2S, the number of unpaired electrons")] = 0
    density_fit: bool = False
    grid_level: Annotated[int, Interval(ge=0, le=9)] = 3
    conv_tol: Annotated[float, Interval(gt=0, lt=1)] = field(
        default=1e-9, metadata={"unit": "Hartree"}
    )
    max_cycle: PositiveInt = 100
    threads: PositiveInt | None = None
    max_memory_mb: PositiveInt = field(default=2000, metadata={"unit": "MB"})
    verbose: Annotated[int, Interval(ge=0, le=9)] = 0
    scf_ladder: tuple[ScfRung, ...] = DEFAULT_SCF_LADDER
    reuse_density: bool = False
    dispersion: Dispersion | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scf_ladder", validate_ladder(self.scf_ladder))
        check_fields(self)
        if not isinstance(self.basis, str) or not self.basis.strip():
            raise ValueError(f"basis must be a non-empty basis-set name, got {self.basis!r}")
        if self.method in _RESTRICTED_METHODS and self.spin != 0:
            unrestricted = "UKS" if self.method == "RKS" else "UHF"
            raise ValueError(
                f"method {self.method} is closed-shell and needs spin=0, got spin={self.spin}; "
                f"use method={unrestricted!r} for open-shell systems"
            )
        if self.method in _KS_METHODS:
            if not isinstance(self.xc, str) or not self.xc.strip():
                raise ValueError(f"xc must be a non-empty functional name, got {self.xc!r}")
            try:
                dft.libxc.parse_xc(self.xc)
            except (KeyError, ValueError) as err:
                raise ValueError(
                    f"unknown exchange-correlation functional xc={self.xc!r} for method {self.method} "
                    f"(libxc/PySCF names such as 'PBE', 'B3LYP', 'PBE0')"
                ) from err
        implied = parse_dft(self.xc.strip().lower())[2] if self.method in _KS_METHODS else None
        if implied is not None and self.dispersion is not None:
            raise ValueError(
                f"xc={self.xc!r} already includes a dispersion correction ({implied}); "
                "give it once: drop it from xc, or set dispersion=None"
            )
        if implied is not None or self.dispersion is not None:
            _check_dispersion(self.dispersion, self.xc if self.method in _KS_METHODS else "HF")

    @property
    def level_of_theory(self) -> str:
        """Human-readable, stable provenance string, e.g. ``"RKS/PBE/6-31G*"``, ``"RHF/STO-3G"``.

        Functional and basis are upper-cased so that spellings PySCF treats alike
        (``"pbe"``/``"PBE"``) give one string; a dispersion correction is appended to
        the functional (``"RKS/PBE-D3BJ/6-31G*"``), or to the method for Hartree-Fock
        (``"RHF-D3BJ/STO-3G"``); ``"/DF"`` is appended with density fitting. The SCF
        ladder and density reuse are numerical strategies and do not appear.
        """
        suffix = f"-{self.dispersion.upper()}" if self.dispersion is not None else ""
        parts: list[str] = [self.method]
        if self.method in _KS_METHODS:
            parts.append(self.xc.strip().upper() + suffix)
        else:
            parts[0] += suffix
        parts.append(self.basis.strip().upper())
        if self.density_fit:
            parts.append("DF")
        return "/".join(parts)


class ThreadScopedCalculator(SettingsCalculator):
    """A PySCF calculator whose work runs on ``settings.threads`` OpenMP threads (None:
    PySCF's default), restored afterwards. ``calculate`` follows ASE's contract (it sets
    ``self.atoms``) and then calls ``_calculate``, which subclasses implement."""

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        """ASE's entry point: :meth:`_calculate` with ``settings.threads`` OpenMP threads."""
        super().calculate(atoms, list(properties), system_changes)
        with lib.with_omp_threads(self._settings.threads):
            self._calculate(atoms, properties, system_changes)

    def _calculate(
        self, atoms: Atoms | None, properties: Sequence[str], system_changes: Sequence[str]
    ) -> None:
        raise NotImplementedError


class PySCFCalculator(ThreadScopedCalculator):
    """Energy and analytic forces of a molecule from PySCF HF or Kohn-Sham DFT.

    Non-periodic systems only. Energy is always computed; forces (the analytic
    nuclear gradient, one extra step after the SCF) only when requested, so ask for
    forces first (or both) to avoid running the SCF twice. Kohn-Sham forces include
    the integration-grid response, so they are the exact derivative of the energy.

    An SCF that does not converge is retried along ``settings.scf_ladder``; the
    structure fails only when every rung fails. After each calculation,
    ``scf_rung`` names the rung that converged, ``scf_cycles`` counts the SCF
    iterations over all rungs tried, and ``scf_attempts`` holds one
    ``advloop.calculators.scf_ladder.RungAttempt`` per rung tried.

    Example::

        calc = PySCFCalculator(method="RKS", xc="PBE", basis="6-31G*")
        atoms.calc = calc
        forces = atoms.get_forces()            # eV/Å, [n_atoms, 3]
        energy = atoms.get_potential_energy()  # eV, from the same SCF
        calc.scf_rung                          # "default" unless the SCF needed help

    Args:
        settings: a ready ``PySCFSettings``; or pass its fields as keywords instead.
        directory: ASE working directory (PySCF writes no files here; it is reported
            in errors for provenance).
        **kwargs: fields of ``PySCFSettings``.

    Raises:
        TypeError: if both ``settings`` and keywords are given, or a keyword is unknown.
        ValueError: if a setting is invalid (see ``PySCFSettings``).
    """

    implemented_properties = ["energy", "forces"]
    settings_class = PySCFSettings

    def __init__(
        self,
        settings: PySCFSettings | None = None,
        *,
        directory: str | os.PathLike[str] = ".",
        **kwargs: Any,
    ) -> None:
        super().__init__(settings, directory=directory, **kwargs)
        self._density_guess: DensityGuess | None = None
        self._clear_scf_record()

    def reset(self) -> None:
        """Clear the results and the SCF record; the density kept for reuse stays."""
        super().reset()
        self._clear_scf_record()

    def _clear_scf_record(self) -> None:
        self.scf_rung: str | None = None
        self.scf_cycles: int | None = None
        self.scf_attempts: tuple[RungAttempt, ...] = ()

    def _calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        """Run the SCF ladder (and the nuclear gradient if ``"forces"`` is requested).

        Writes ``self.results["energy"]`` (eV) and, when requested,
        ``self.results["forces"]`` (eV/Å, ``[n_atoms, 3]``); sets ``scf_rung``,
        ``scf_cycles`` and ``scf_attempts``.

        Raises:
            InvalidStructureError: before any compute, for any problem that
                ``check_labelable`` reports.
            SCFConvergenceError: if no rung of ``settings.scf_ladder`` converged; the
                message lists each rung, its iteration limit and last energy change.
        """
        self._clear_scf_record()
        atoms = self.atoms
        if atoms is None:
            raise CalculatorSetupError("no atoms to calculate: pass atoms or attach the calculator")
        s = self._settings
        with np.errstate(invalid="ignore"):  # a non-finite position is reported just below
            shash = structure_hash(atoms)
        problems = check_labelable(atoms, s)
        if problems:
            raise InvalidStructureError(
                "; ".join(problems), structure_hash=shash, directory=self.directory
            )
        mol = _build_mole(atoms, s, shash, self.directory)
        key = (tuple(atoms.numbers.tolist()), s.basis, s.charge, s.spin, s.method)
        guess = self._density_guess if s.reuse_density else None
        dm0 = guess.for_geometry(key, atoms.positions) if guess is not None else None
        outcome = run_scf_ladder(lambda: _make_scf(mol, s), s.scf_ladder, s.max_cycle, dm0)
        self.scf_rung, self.scf_cycles, self.scf_attempts = (
            outcome.rung,
            outcome.cycles,
            outcome.attempts,
        )
        if outcome.mf is None:
            tried = "; ".join(attempt.describe() for attempt in outcome.attempts)
            raise SCFConvergenceError(
                f"SCF did not converge to conv_tol={s.conv_tol:g} Ha on any of the {len(outcome.attempts)} "
                f"rung(s) of the SCF ladder ({s.level_of_theory}, charge={s.charge}, spin={s.spin}): {tried}. "
                "Check the structure, or add rungs to scf_ladder",
                structure_hash=shash,
                directory=self.directory,
            )
        mf = outcome.mf
        if s.reuse_density:
            dm = np.array(mf.make_rdm1(), dtype=float)
            self._density_guess = DensityGuess(key, atoms.positions.copy(), dm)
        self.results["energy"] = float(mf.e_tot) * Hartree
        if "forces" in properties:
            self.results["forces"] = -_nuclear_gradient(mf, s) * (Hartree / Bohr)


def check_labelable(atoms: Atoms, settings: PySCFSettings) -> list[str]:
    """Every reason why ``atoms`` cannot be computed with ``settings``; empty if none.

    Computes nothing (reads basis-set files only), so a run configuration can check its
    input structures up front. ``PySCFCalculator`` raises ``InvalidStructureError``
    with these messages before any SCF.

    Checked: a periodic cell (molecules only); no atoms; atomic numbers outside 1-118;
    NaN or infinite positions; two atoms closer than
    ``max(MIN_INTERATOMIC_DISTANCE, MIN_DISTANCE_FACTOR × (r_i + r_j))`` (covalent
    radii, Å); an electron count that charge and spin (2S) cannot fit; an element the
    basis set does not cover.

    Args:
        atoms: the structure, positions in Å.
        settings: the level of theory (basis, charge, spin).

    Returns:
        One message per problem, each saying what is wrong and how to fix it.
    """
    problems: list[str] = []
    if atoms.pbc.any():
        problems.append(
            f"PySCFCalculator computes molecules, not periodic cells (pbc={atoms.pbc.tolist()}): "
            "use PeriodicPySCFCalculator (labels.kind: pyscf_periodic) for a cell, or set "
            "atoms.pbc = False for an isolated molecule"
        )
    if len(atoms) == 0:
        return [*problems, "the structure has no atoms"]
    numbers = atoms.numbers
    invalid = (numbers < 1) | (numbers >= len(chemical_symbols))
    for index in np.flatnonzero(invalid):
        problems.append(
            f"atom {index} has atomic number {numbers[index]}, not a real element (1-{len(chemical_symbols) - 1})"
        )
    positions = np.asarray(atoms.positions, dtype=float)
    finite = np.isfinite(positions).all(axis=1)
    for index in np.flatnonzero(~finite):
        problems.append(f"atom {index} has a non-finite position {positions[index].tolist()} (Å)")
    if invalid.any():
        return problems
    symbols = atoms.get_chemical_symbols()
    if finite.all() and len(atoms) > 1:
        problems.extend(_close_contacts(numbers, positions, symbols))
    n_electrons = int(numbers.sum()) - settings.charge
    if n_electrons < 1:
        problems.append(
            f"charge={settings.charge} leaves {n_electrons} electrons for {atoms.get_chemical_formula()}"
        )
    elif settings.spin > n_electrons or (n_electrons - settings.spin) % 2 != 0:
        parity = "odd" if n_electrons % 2 else "even"
        problems.append(
            f"charge={settings.charge} and spin={settings.spin} (2S) are incompatible with "
            f"{n_electrons} electrons in {atoms.get_chemical_formula()}: the number of electrons minus "
            f"2S must be even and non-negative (an {parity} electron count needs an {parity} spin)"
        )
    missing = [
        symbol for symbol in sorted(set(symbols)) if not _basis_covers(settings.basis, symbol)
    ]
    if missing:
        problems.append(
            f"basis set {settings.basis!r} not found for element(s) {', '.join(missing)}; "
            "choose a basis that covers every element"
        )
    return problems


def _close_contacts(numbers: np.ndarray, positions: np.ndarray, symbols: list[str]) -> list[str]:
    """One message per pair of atoms closer than the bound (see ``check_labelable``)."""
    i, j = np.triu_indices(len(numbers), k=1)
    distances = np.linalg.norm(positions[i] - positions[j], axis=1)
    radii = covalent_radii[numbers[i]] + covalent_radii[numbers[j]]
    bounds = np.maximum(MIN_INTERATOMIC_DISTANCE, MIN_DISTANCE_FACTOR * radii)
    close = [
        f"atoms {a} ({symbols[a]}) and {b} ({symbols[b]}) are {d:.3f} Å apart, closer than the {bound:.3f} Å "
        f"minimum for this pair (max({MIN_INTERATOMIC_DISTANCE} Å, {MIN_DISTANCE_FACTOR} × sum of covalent radii)); "
        "the structure is unphysical"
        for a, b, d, bound in zip(i.tolist(), j.tolist(), distances.tolist(), bounds.tolist())
        if d < bound
    ]
    if len(close) > 3:  # a collapsed structure: name a few pairs, count the rest
        close = [
            *close[:3],
            f"and {len(close) - 3} more pairs of atoms closer than their minimum distance",
        ]
    return close


def _basis_covers(basis: str, symbol: str) -> bool:
    """Whether PySCF has functions for element ``symbol`` in the named basis set."""
    with warnings.catch_warnings():  # PySCF suggests basis-set-exchange on every miss
        warnings.filterwarnings("ignore", message="Basis may be available in basis-set-exchange")
        try:
            return bool(gto.basis.load(basis, symbol))
        except BasisNotFoundError:
            return False


def _has_ecp(basis: str, symbol: str) -> bool:
    """Whether the named basis set comes with an effective core potential for ``symbol``."""
    try:
        return bool(gto.basis.load_ecp(basis, symbol))
    except (BasisNotFoundError, RuntimeError):  # PySCF: "Unable to parse the input ECP data"
        return False


def _build_mole(atoms: Atoms, settings: PySCFSettings, shash: str, directory: str) -> gto.Mole:
    """Build a PySCF molecule in Å. Raises InvalidStructureError if PySCF rejects the basis."""
    mol = gto.Mole()
    mol.atom = [
        (symbol, tuple(position))
        for symbol, position in zip(atoms.get_chemical_symbols(), atoms.positions)
    ]
    mol.unit = "Angstrom"
    mol.basis = settings.basis
    # A basis made for an effective core potential (def2-* beyond Kr, LANL2DZ, *-PP) has no
    # core functions; PySCF adds its ECP only when asked, else runs all-electron silently.
    symbols = sorted(set(atoms.get_chemical_symbols()))
    mol.ecp = {symbol: settings.basis for symbol in symbols if _has_ecp(settings.basis, symbol)}
    mol.charge = settings.charge
    mol.spin = settings.spin
    mol.symmetry = False
    mol.max_memory = settings.max_memory_mb
    mol.verbose = settings.verbose
    try:
        mol.build(dump_input=False, parse_arg=False)
    except BasisNotFoundError as err:  # check_labelable should have caught it first
        raise InvalidStructureError(
            f"basis set {settings.basis!r}: {str(err).splitlines()[0]}; choose a basis that covers every element",
            structure_hash=shash,
            directory=directory,
        ) from err
    return mol


def _nuclear_gradient(mf: scf.hf.SCF, settings: PySCFSettings) -> np.ndarray:
    """Analytic nuclear gradient of a converged SCF, Hartree/bohr, ``[n_atoms, 3]``.

    Includes the dispersion correction's gradient when ``settings.dispersion`` is set.
    For Kohn-Sham methods the response of the integration grid to the nuclear
    positions is included (``grid_response = True``), so the forces are the exact
    derivative of the reported energy and sum to zero. Without it, forces differ from
    finite differences of the energy by ~3e-4 eV/Å at grid level 3 (~5e-3 eV/Å at
    level 1) and carry a spurious net force of ~1e-4 eV/Å (measured on NH3 and NH2
    at PBE/STO-3G); the extra cost is a fraction of the SCF.
    """
    gradient = mf.nuc_grad_method()
    if settings.method in _KS_METHODS:
        gradient.grid_response = True
    return np.asarray(gradient.kernel(), dtype=float)


def _make_scf(mol: gto.Mole, settings: PySCFSettings) -> scf.hf.SCF:
    """Bind the settings to a PySCF mean-field object (not yet run)."""
    if settings.method == "RKS":
        mf = dft.RKS(mol)
    elif settings.method == "UKS":
        mf = dft.UKS(mol)
    elif settings.method == "RHF":
        mf = scf.RHF(mol)
    else:
        mf = scf.UHF(mol)
    if settings.method in _KS_METHODS:
        mf.xc = settings.xc
        mf.grids.level = settings.grid_level
    mf.conv_tol = settings.conv_tol
    mf.max_cycle = settings.max_cycle
    mf.max_memory = settings.max_memory_mb
    mf.verbose = settings.verbose
    mf.chkfile = None  # no checkpoint file written each iteration
    if settings.dispersion is not None:
        mf.disp = settings.dispersion
    if settings.density_fit:
        mf = mf.density_fit()
    return mf
