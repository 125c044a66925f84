"""Molecular (non-periodic) Hartree-Fock and Kohn-Sham DFT as an ASE calculator, via PySCF.

PySCF: Q. Sun et al., "Recent developments in the PySCF program package",
J. Chem. Phys. 153, 024109 (2020). Analytic nuclear gradients as implemented there.

Units at the interface: positions in Å; energy in eV and forces in eV/Å in
``self.results``. PySCF works in Hartree and bohr internally; conversions use
``ase.units.Hartree`` and ``ase.units.Bohr``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, Parameters, all_changes
from ase.units import Bohr, Hartree
from pyscf import dft, gto, scf
from pyscf.lib.exceptions import BasisNotFoundError

from calculators.errors import InvalidStructureError, SCFConvergenceError
from potentials.hashing import structure_hash

__all__ = ["PySCFCalculator", "PySCFSettings", "MIN_INTERATOMIC_DISTANCE"]

Method = Literal["RKS", "UKS", "RHF", "UHF"]
_METHODS: tuple[str, ...] = get_args(Method)
_KS_METHODS = ("RKS", "UKS")
_RESTRICTED_METHODS = ("RKS", "RHF")

MIN_INTERATOMIC_DISTANCE = 0.3  # Å; any closer pair is rejected before compute


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


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
        max_memory_mb: memory PySCF may use, MB.
        verbose: PySCF verbosity, 0 (silent) to 9.

    Raises:
        ValueError: on an unknown method or functional, a negative spin, a restricted
            method with ``spin != 0``, or an out-of-range numerical setting.
    """

    __pydantic_config__ = {"extra": "forbid"}  # unknown keys in a run config are errors

    method: Method = "RKS"
    xc: str = "PBE"
    basis: str = "6-31G*"
    charge: int = 0
    spin: int = 0
    density_fit: bool = False
    grid_level: int = 3
    conv_tol: float = 1e-9
    max_cycle: int = 100
    max_memory_mb: int = 2000
    verbose: int = 0

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(_METHODS)}")
        if not isinstance(self.basis, str) or not self.basis.strip():
            raise ValueError(f"basis must be a non-empty basis-set name, got {self.basis!r}")
        if not _is_int(self.charge):
            raise ValueError(f"charge must be an integer, got {self.charge!r}")
        if not _is_int(self.spin):
            raise ValueError(f"spin (2S, number of unpaired electrons) must be an integer, got {self.spin!r}")
        if self.spin < 0:
            raise ValueError(f"spin is 2S, the number of unpaired electrons, and must be >= 0; got {self.spin}")
        if self.method in _RESTRICTED_METHODS and self.spin != 0:
            unrestricted = "UKS" if self.method == "RKS" else "UHF"
            raise ValueError(
                f"method {self.method} is closed-shell and needs spin=0, got spin={self.spin}; "
                f"use method={unrestricted!r} for open-shell systems"
            )
        if not isinstance(self.density_fit, bool):
            raise ValueError(f"density_fit must be True or False, got {self.density_fit!r}")
        if not _is_int(self.grid_level) or not 0 <= self.grid_level <= 9:
            raise ValueError(f"grid_level must be an integer in [0, 9], got {self.grid_level!r}")
        if not isinstance(self.conv_tol, (int, float)) or not 0.0 < float(self.conv_tol) < 1.0:
            raise ValueError(f"conv_tol (Hartree) must be a positive number below 1, got {self.conv_tol!r}")
        if not _is_int(self.max_cycle) or self.max_cycle < 1:
            raise ValueError(f"max_cycle must be an integer >= 1, got {self.max_cycle!r}")
        if not _is_int(self.max_memory_mb) or self.max_memory_mb < 1:
            raise ValueError(f"max_memory_mb must be a positive integer (MB), got {self.max_memory_mb!r}")
        if not _is_int(self.verbose) or not 0 <= self.verbose <= 9:
            raise ValueError(f"verbose must be an integer in [0, 9], got {self.verbose!r}")
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

    @property
    def level_of_theory(self) -> str:
        """Human-readable, stable provenance string, e.g. ``"RKS/PBE/6-31G*"``, ``"RHF/STO-3G"``.

        Functional and basis are upper-cased so that spellings PySCF treats alike
        (``"pbe"``/``"PBE"``) give one string; ``"/DF"`` is appended with density fitting.
        """
        parts = [self.method]
        if self.method in _KS_METHODS:
            parts.append(self.xc.strip().upper())
        parts.append(self.basis.strip().upper())
        if self.density_fit:
            parts.append("DF")
        return "/".join(parts)


class PySCFCalculator(Calculator):
    """Energy and analytic forces of a molecule from PySCF HF or Kohn-Sham DFT.

    Non-periodic systems only. Energy is always computed; forces (the analytic
    nuclear gradient, one extra step after the SCF) only when requested, so ask for
    forces first (or both) to avoid running the SCF twice. Kohn-Sham forces include
    the integration-grid response, so they are the exact derivative of the energy.

    Example::

        calc = PySCFCalculator(method="RKS", xc="PBE", basis="6-31G*")
        atoms.calc = calc
        forces = atoms.get_forces()            # eV/Å, [n_atoms, 3]
        energy = atoms.get_potential_energy()  # eV, from the same SCF

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

    def __init__(
        self,
        settings: PySCFSettings | None = None,
        *,
        directory: str | os.PathLike[str] = ".",
        **kwargs: Any,
    ) -> None:
        if settings is not None and kwargs:
            raise TypeError("pass either settings=PySCFSettings(...) or its fields as keywords, not both")
        self._settings = settings if settings is not None else PySCFSettings(**kwargs)
        super().__init__(directory=directory)
        self.parameters = Parameters(dataclasses.asdict(self._settings))

    @property
    def settings(self) -> PySCFSettings:
        """The frozen settings in use; change them with ``set(...)``."""
        return self._settings

    @property
    def level_of_theory(self) -> str:
        """Provenance string such as ``"RKS/PBE/6-31G*"`` (see ``PySCFSettings.level_of_theory``)."""
        return self._settings.level_of_theory

    def set(self, **kwargs: Any) -> dict[str, Any]:
        """Replace some settings (ASE's ``Calculator.set`` contract); clears results on change.

        Returns:
            The settings that changed, name to new value.

        Raises:
            TypeError: on a keyword that is not a ``PySCFSettings`` field.
            ValueError: if the new combination is invalid.
        """
        if not kwargs:
            return {}
        new_settings = dataclasses.replace(self._settings, **kwargs)
        changed = {key: value for key, value in kwargs.items() if getattr(self._settings, key) != value}
        self._settings = new_settings
        self.parameters = Parameters(dataclasses.asdict(new_settings))
        if changed:
            self.reset()
        return changed

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        """Run the SCF (and the nuclear gradient if ``"forces"`` is requested).

        Writes ``self.results["energy"]`` (eV) and, when requested,
        ``self.results["forces"]`` (eV/Å, ``[n_atoms, 3]``).

        Raises:
            InvalidStructureError: before any compute, for a periodic structure, atoms
                closer than ``MIN_INTERATOMIC_DISTANCE``, an electron count incompatible
                with charge and spin, or an element the basis set does not cover.
            SCFConvergenceError: if the SCF did not converge in ``max_cycle`` iterations.
        """
        super().calculate(atoms, list(properties), system_changes)
        atoms = self.atoms
        shash = structure_hash(atoms)
        _check_structure(atoms, self._settings, shash, self.directory)
        mol = _build_mole(atoms, self._settings, shash, self.directory)
        mf = _make_scf(mol, self._settings)
        energy_ha = float(mf.kernel())
        if not mf.converged:
            s = self._settings
            raise SCFConvergenceError(
                f"SCF did not converge within max_cycle={s.max_cycle} iterations to "
                f"conv_tol={s.conv_tol:g} Ha ({s.level_of_theory}, charge={s.charge}, spin={s.spin}); "
                f"last energy {energy_ha:.10f} Ha. Raise max_cycle, or check the structure",
                structure_hash=shash,
                directory=self.directory,
            )
        self.results["energy"] = energy_ha * Hartree
        if "forces" in properties:
            self.results["forces"] = -_nuclear_gradient(mf, self._settings) * (Hartree / Bohr)


def _check_structure(atoms: Atoms, settings: PySCFSettings, shash: str, directory: str) -> None:
    """Reject structures that cannot or should not be computed. Raises InvalidStructureError."""

    def reject(message: str) -> InvalidStructureError:
        return InvalidStructureError(message, structure_hash=shash, directory=directory)

    if atoms.pbc.any():
        raise reject(
            f"periodic DFT is not supported by this calculator yet (pbc={atoms.pbc.tolist()}); "
            "PySCFCalculator computes molecules: set atoms.pbc = False for an isolated molecule"
        )
    if len(atoms) == 0:
        raise reject("the structure has no atoms")
    numbers = atoms.numbers
    if (numbers < 1).any():
        index = int(np.flatnonzero(numbers < 1)[0])
        raise reject(f"atom {index} has atomic number {numbers[index]} (a dummy atom); only real elements are supported")

    if len(atoms) > 1:
        positions = atoms.positions
        i, j = np.triu_indices(len(atoms), k=1)
        distances = np.linalg.norm(positions[i] - positions[j], axis=1)
        closest = int(np.argmin(distances))
        if distances[closest] < MIN_INTERATOMIC_DISTANCE:
            a, b = int(i[closest]), int(j[closest])
            symbols = atoms.get_chemical_symbols()
            raise reject(
                f"atoms {a} ({symbols[a]}) and {b} ({symbols[b]}) are {distances[closest]:.3f} Å apart, "
                f"closer than the {MIN_INTERATOMIC_DISTANCE} Å minimum; the structure is unphysical"
            )

    n_electrons = int(numbers.sum()) - settings.charge
    if n_electrons < 1:
        raise reject(
            f"charge={settings.charge} leaves {n_electrons} electrons for {atoms.get_chemical_formula()}"
        )
    if settings.spin > n_electrons or (n_electrons - settings.spin) % 2 != 0:
        raise reject(
            f"charge={settings.charge} and spin={settings.spin} (2S) are incompatible with "
            f"{n_electrons} electrons in {atoms.get_chemical_formula()}: the number of electrons minus "
            f"2S must be even and non-negative (an {'odd' if n_electrons % 2 else 'even'} electron count "
            f"needs an {'odd' if n_electrons % 2 else 'even'} spin)"
        )


def _build_mole(atoms: Atoms, settings: PySCFSettings, shash: str, directory: str) -> gto.Mole:
    """Build a PySCF molecule in Å. Raises InvalidStructureError for an element outside the basis."""
    mol = gto.Mole()
    mol.atom = [(symbol, tuple(position)) for symbol, position in zip(atoms.get_chemical_symbols(), atoms.positions)]
    mol.unit = "Angstrom"
    mol.basis = settings.basis
    mol.charge = settings.charge
    mol.spin = settings.spin
    mol.symmetry = False
    mol.max_memory = settings.max_memory_mb
    mol.verbose = settings.verbose
    try:
        mol.build(dump_input=False, parse_arg=False)
    except BasisNotFoundError as err:
        missing = []
        for symbol in sorted(set(atoms.get_chemical_symbols())):
            try:
                gto.basis.load(settings.basis, symbol)
            except BasisNotFoundError:
                missing.append(symbol)
        elements = ", ".join(missing) if missing else "one of the elements"
        raise InvalidStructureError(
            f"basis set {settings.basis!r} not found for element(s) {elements} "
            f"(PySCF: {str(err).splitlines()[0]}); choose a basis that covers every element",
            structure_hash=shash,
            directory=directory,
        ) from err
    return mol


def _nuclear_gradient(mf: scf.hf.SCF, settings: PySCFSettings) -> np.ndarray:
    """Analytic nuclear gradient of a converged SCF, Hartree/bohr, ``[n_atoms, 3]``.

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
    if settings.density_fit:
        mf = mf.density_fit()
    return mf
