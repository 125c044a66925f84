"""Γ-point Kohn-Sham DFT for periodic cells (zeolites, bulk) as an ASE calculator, via pyscf.pbc.

PySCF: Q. Sun et al., "Recent developments in the PySCF program package",
J. Chem. Phys. 153, 024109 (2020). Multigrid integration and Γ-point analytic
nuclear gradients: X. Zhang's ``MultiGridNumInt2`` and ``pyscf.pbc.grad.rks/uks``
(PySCF ≥ 2.5). GTH pseudopotentials: S. Goedecker, M. Teter, J. Hutter,
Phys. Rev. B 54, 1703 (1996); C. Hartwigsen, S. Goedecker, J. Hutter, Phys. Rev. B
58, 3641 (1998). Fermi-Dirac smearing and the Mermin free energy: N. D. Mermin,
Phys. Rev. 137, A1441 (1965).

What PySCF 2.14 supports for periodic analytic forces (read from
``pyscf/pbc/grad`` and ``pyscf/pbc/dft/multigrid`` of the installed version), and so
what this module uses:

- Γ-point ``pbc.dft.RKS``/``UKS`` gradients exist only with the multigrid numerical
  integrator (``mf.multigrid_numint()``, ``MultiGridNumInt2``): the Coulomb and XC
  potentials and the local pseudopotential are done on one uniform FFT mesh. This
  is the scheme used here.
- Gaussian density fitting (GDF, ``mf.density_fit()``) has no periodic nuclear
  gradients at all (neither Γ-point nor k-point: the ``*_e1`` derivative integrals
  exist only for FFTDF), so there is no ``density_fit`` setting.
- k-point ``KRKS`` gradients work with FFTDF and a single Γ k-point, but cost ~10×
  the multigrid path (66 s against 7 s for H2 in a 4 Å box at the default mesh);
  not offered.
- Multigrid gradients cover LDA and GGA functionals only: hybrids (no exchange
  derivative), meta-GGAs and non-local (VV10) functionals raise ``NotImplementedError``
  in PySCF and are rejected here when the settings are made. ECPs are not supported
  by periodic gradients; GTH pseudopotentials are required.
- Fermi-Dirac smearing (``smearing_``) works with these gradients. The analytic
  gradient is the derivative of the Mermin free energy E − σS, not of E (checked by
  finite differences: with σ = 0.05 Ha, dE/dx differs by a factor ~2, d(E − σS)/dx
  agrees to 1e-8 Ha/bohr), so with smearing the reported ``energy`` (and
  ``free_energy``) is E − σS, the energy consistent with the forces.

Cost of one energy + forces call (SCF from PySCF's default guess, conv_tol 1e-8 Ha,
RKS-PBE/gth-szv/gth-pbe), measured 2026-11 on the shared 2-core machine, one OpenMP
thread, load average ~3 from other work (so roughly 1.5x an idle core):

- H2 in a 4 Å cubic box: 0.8 s at ke_cutoff 100 Ha (mesh 37³); 5 s at PySCF's
  default mesh (83³: gth-szv H has a steep exponent).
- Si2, primitive diamond cell (fcc vectors 3.84 Å), default mesh 35³: 27 s. Small
  cells are dear: Gaussians are collocated over many periodic images.
- Si8, cubic diamond cell (5.43 Å), default mesh 51³: 12 s.
- α-quartz Si3O6 (4.92 × 4.92 × 5.41 Å, 9 atoms, 36 basis functions): 58 s at
  ke_cutoff 100 Ha (43×43×47) and 58 s at 200 Ha (61×61×67); PySCF's default mesh
  (123×123×135) did not finish in 180 s. 100 Ha is not converged for oxygen here
  (energy 0.25 eV off the 200 Ha one; net force 0.29 eV/Å against 0.02 eV/Å), so set
  ke_cutoff explicitly (~200 Ha with gth-szv O) and check the net force.

After each SCF the density is integrated on the mesh and must give the electron
count (``_check_density_on_mesh``): this catches a mesh far too coarse and a process
whose PySCF libraries are bound to two OpenMP runtimes (``pyscf.lib`` imported before
``torch``, ``pyscf.pbc`` after it), which was seen here to give wrong multigrid
densities silently.

Units at the interface: positions and cell in Å; energy in eV and forces in eV/Å in
``self.results``. PySCF works in Hartree and bohr; conversions use
``ase.units.Hartree`` and ``ase.units.Bohr``. ``ke_cutoff`` and ``smearing`` are in
Hartree, as PySCF takes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from ase import Atoms
from ase.calculators.calculator import CalculatorSetupError, all_changes
from ase.neighborlist import primitive_neighbor_list
from ase.units import Bohr, Hartree
from pyscf.dft import libxc
from pyscf.lib.exceptions import BasisNotFoundError
from pyscf.pbc import dft as pbc_dft
from pyscf.pbc import gto as pbc_gto
from pyscf.pbc.scf.addons import smearing_

from advloop.calculators.errors import InvalidStructureError, LabelError, SCFConvergenceError
from advloop.calculators.pyscf_calculator import MIN_INTERATOMIC_DISTANCE, ThreadScopedCalculator
from advloop.calculators.scf_ladder import run_scf_ladder, validate_ladder
from advloop.constraints import (
    Interval,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    UnitInterval,
    check_fields,
    doc,
)
from advloop.potentials.hashing import structure_hash

__all__ = ["PeriodicPySCFCalculator", "PeriodicPySCFSettings"]

PeriodicMethod = Literal["RKS", "UKS"]

MIN_CELL_VOLUME = 1.0  # Å^3; a smaller cell is degenerate (or has no cell at all)
# Largest accepted |electrons on the FFT mesh - electrons| / electrons for the converged
# density. Measured: 3e-5 for H2 in a 4 Å box at ke_cutoff 20 Ha (17^3 points), 2e-9 at
# 100 Ha; a broken OpenMP binding (see _check_density_on_mesh) gives errors of 0.4 to 1.
MAX_RELATIVE_ELECTRON_COUNT_ERROR = 1e-3


@dataclass(frozen=True)
class PeriodicPySCFSettings:
    """Level of theory and numerics for one Γ-point PySCF SCF + analytic gradient of a cell.

    Attributes:
        method: ``"RKS"`` (closed shell, needs ``spin == 0``) or ``"UKS"``.
        xc: an LDA or GGA functional in libxc/PySCF syntax (``"PBE"``, ``"LDA"``,
            ``"BLYP"``). Hybrids, meta-GGAs and VV10 are rejected: PySCF 2.14 has no
            periodic multigrid gradients for them.
        basis: basis set name known to PySCF, normally a GTH-adapted one
            (``"gth-szv"``, ``"gth-dzvp"``, ``"gth-tzv2p"``).
        pseudo: GTH pseudopotential family (``"gth-pbe"``, ``"gth-blyp"``, ...); pick
            the one made for ``xc``.
        charge: total charge of the cell, elementary charges (a charged cell gets
            PySCF's neutralising background).
        spin: number of unpaired electrons per cell, 2S.
        ke_cutoff: plane-wave kinetic-energy cutoff of the FFT mesh, **Hartree**
            (PySCF's unit); None lets PySCF choose it from ``cell.precision`` and the
            steepest basis exponent (often far more than needed, e.g. 83³ points for
            H2 in a 4 Å box with gth-szv).
        smearing: Fermi-Dirac smearing width σ, **Hartree**; 0 for none. With σ > 0
            the reported energy is the Mermin free energy E − σS (see the module
            docstring); UKS keeps the number of unpaired electrons fixed at ``spin``.
        conv_tol: SCF energy convergence threshold, Hartree.
        max_cycle: maximum number of SCF iterations.
        threads: OpenMP threads for this calculator's work (None: PySCF's default,
            from ``OMP_NUM_THREADS``).
        scf_ladder: SCF strategies tried in turn until one converges (see
            ``advloop.calculators.scf_ladder``): ``"default"``, ``"more_cycles"``,
            ``"level_shift"``; without the stability analysis, which PySCF lacks for
            periodic multigrid SCF.
        max_memory_mb: memory PySCF may use, MB.
        verbose: PySCF verbosity, 0 (silent) to 9.

    Raises:
        ValueError: naming the offending key as ``periodic_dft.<key>``, on an unknown method or
            functional, a functional without periodic gradients, a non-GTH
            pseudopotential, a restricted method with ``spin != 0``, or an
            out-of-range number.
    """

    __pydantic_config__ = {
        "extra": "forbid",
        "allow_inf_nan": False,
    }  # unknown keys, inf and NaN are errors

    method: Annotated[
        PeriodicMethod, doc("periodic Hartree-Fock has no analytic gradients in PySCF")
    ] = "RKS"
    xc: str = "PBE"
    basis: str = "gth-szv"
    pseudo: str = "gth-pbe"
    charge: int = 0
    spin: Annotated[NonNegativeInt, doc("2S, the number of unpaired electrons per cell")] = 0
    ke_cutoff: PositiveFloat | None = field(default=None, metadata={"unit": "Hartree"})
    smearing: Annotated[UnitInterval, doc("the Fermi-Dirac width; 0.01 Ha is about 3160 K")] = (
        field(default=0.0, metadata={"unit": "Hartree"})
    )
    conv_tol: Annotated[float, Interval(gt=0, lt=1)] = field(
        default=1e-8, metadata={"unit": "Hartree"}
    )
    max_cycle: PositiveInt = 100
    threads: PositiveInt | None = None
    scf_ladder: tuple[str, ...] = ("default", "more_cycles", "level_shift")
    max_memory_mb: PositiveInt = field(default=4000, metadata={"unit": "MB"})
    verbose: Annotated[int, Interval(ge=0, le=9)] = 0

    def __post_init__(self) -> None:
        ladder = validate_ladder(self.scf_ladder)
        if "newton" in ladder:
            raise ValueError(
                "periodic_dft.scf_ladder: the 'newton' rung is not available for "
                "periodic multigrid SCF; use default, more_cycles, level_shift"
            )
        object.__setattr__(self, "scf_ladder", ladder)
        check_fields(self, "periodic_dft")
        _check_xc(self.xc)
        if not isinstance(self.basis, str) or not self.basis.strip():
            raise ValueError(
                f"periodic_dft.basis must be a non-empty basis-set name such as 'gth-szv', got {self.basis!r}"
            )
        if not isinstance(self.pseudo, str) or not self.pseudo.strip().lower().startswith("gth"):
            raise ValueError(
                f"periodic_dft.pseudo must name a GTH pseudopotential family such as 'gth-pbe', got {self.pseudo!r}; "
                "PySCF's periodic analytic gradients support GTH pseudopotentials only (no ECPs), and "
                "all-electron cells need impractically fine meshes"
            )
        if self.method == "RKS" and self.spin != 0:
            raise ValueError(
                f"periodic_dft.spin: method RKS is closed-shell and needs spin=0, got spin={self.spin}; "
                "use method='UKS' for open-shell cells"
            )

    @property
    def level_of_theory(self) -> str:
        """Stable provenance string, e.g. ``"RKS-PBE/gth-szv/gth-pbe/Γ"``.

        The functional is upper-cased and basis and pseudopotential lower-cased, so
        spellings PySCF treats alike give one string. A set ``ke_cutoff`` appends
        ``"/ke=100Ha"`` and smearing ``"/fermi=0.01Ha"``, since both change the labels.
        """
        label = f"{self.method}-{self.xc.strip().upper()}/{self.basis.strip().lower()}/{self.pseudo.strip().lower()}/Γ"
        if self.ke_cutoff is not None:
            label += f"/ke={float(self.ke_cutoff):g}Ha"
        if self.smearing > 0:
            label += f"/fermi={float(self.smearing):g}Ha"
        return label


def _check_xc(xc: object) -> None:
    """Raise ValueError unless ``xc`` is an LDA or GGA functional without exact exchange or VV10."""
    if not isinstance(xc, str) or not xc.strip():
        raise ValueError(
            f"periodic_dft.xc must be a non-empty functional name such as 'PBE', got {xc!r}"
        )
    try:
        kind = libxc.xc_type(xc)
        hybrid = libxc.is_hybrid_xc(xc)
        nonlocal_ = bool(libxc.is_nlc(xc))
    except (KeyError, ValueError) as err:
        raise ValueError(
            f"periodic_dft.xc: unknown exchange-correlation functional {xc!r} (libxc/PySCF names such as 'PBE')"
        ) from err
    if kind not in ("LDA", "GGA") or hybrid or nonlocal_:
        what = (
            "a hybrid or Hartree-Fock"
            if hybrid
            else "a non-local (VV10)"
            if nonlocal_
            else f"an {kind}"
        )
        raise ValueError(
            f"periodic_dft.xc={xc!r} is {what} functional; PySCF's periodic analytic gradients (multigrid, Γ point) "
            "support LDA and GGA functionals only, e.g. 'PBE', 'BLYP', 'LDA'"
        )


class PeriodicPySCFCalculator(ThreadScopedCalculator):
    """Energy and analytic forces of a 3D-periodic cell from Γ-point Kohn-Sham DFT in pyscf.pbc.

    Γ point only: no k-point sampling, so the cell must be large enough for Γ to
    represent the Brillouin zone (insulating zeolite unit cells usually are; a
    2-atom silicon cell is not). Energy is always
    computed; forces (one gradient step after the SCF) only when requested, so ask
    for forces first (or both) to run the SCF once. Forces are the exact derivative
    of the reported energy up to the mesh error of the multigrid integration; a rigid
    translation changes the energy slightly (the FFT mesh is fixed to the cell), by
    about 2e-5 eV for H2 in a 4 Å box at 100 Ha.

    Example::

        calc = PeriodicPySCFCalculator(xc="PBE", basis="gth-szv", pseudo="gth-pbe", ke_cutoff=200.0)
        zeolite.calc = calc                      # ase.Atoms with a cell and pbc=True
        forces = zeolite.get_forces()            # eV/Å, [n_atoms, 3]
        energy = zeolite.get_potential_energy()  # eV, from the same SCF

    Args:
        settings: a ready ``PeriodicPySCFSettings``; or pass its fields as keywords.
        directory: ASE working directory (PySCF writes no files here; it is reported
            in errors for provenance).
        **kwargs: fields of ``PeriodicPySCFSettings``.

    Raises:
        TypeError: if both ``settings`` and keywords are given, or a keyword is unknown.
        ValueError: if a setting is invalid (see ``PeriodicPySCFSettings``).
    """

    implemented_properties = ["energy", "free_energy", "forces"]
    settings_class = PeriodicPySCFSettings

    def _calculate(
        self,
        atoms: Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        """Run the Γ-point SCF (and the nuclear gradient if ``"forces"`` is requested).

        Writes ``self.results["energy"]`` and ``["free_energy"]`` (eV, equal; the
        Mermin free energy when smearing) and, when requested, ``["forces"]`` (eV/Å,
        ``[n_atoms, 3]``).

        Raises:
            InvalidStructureError: before any compute, for a structure that is not
                periodic in all three directions, a degenerate cell, atoms (or periodic
                images) closer than ``MIN_INTERATOMIC_DISTANCE``, an element the
                pseudopotential or basis set does not cover, or a valence-electron
                count incompatible with charge and spin.
            SCFConvergenceError: if the SCF did not converge in ``max_cycle`` iterations.
            LabelError: if the converged density does not integrate to the electron
                count on the mesh (see ``_check_density_on_mesh``).
        """
        atoms = self.atoms
        if atoms is None:
            raise CalculatorSetupError("no atoms to calculate: pass atoms or attach the calculator")
        settings = self._settings
        shash = structure_hash(atoms)
        _check_structure(atoms, settings, shash, self.directory)
        cell = _build_cell(atoms, settings, shash, self.directory)
        outcome = run_scf_ladder(
            lambda: _make_scf(cell, settings),
            settings.scf_ladder,
            settings.max_cycle,
            check_stability=False,
        )
        self.scf_rung, self.scf_attempts = outcome.rung, outcome.attempts
        if outcome.mf is None:
            tried = "; ".join(attempt.describe() for attempt in outcome.attempts)
            raise SCFConvergenceError(
                f"periodic SCF did not converge to conv_tol={settings.conv_tol:g} Ha on any rung of "
                f"the SCF ladder ({settings.level_of_theory}, charge={settings.charge}, "
                f"spin={settings.spin}): {tried}. Add labels.smearing for a small-gap "
                "cell, or check the structure",
                structure_hash=shash,
                directory=self.directory,
            )
        mf = outcome.mf
        _check_density_on_mesh(mf, cell, shash, self.directory)
        energy_ev = _free_energy_ha(mf, settings) * Hartree
        self.results["energy"] = energy_ev
        self.results["free_energy"] = energy_ev
        if "forces" in properties:
            gradient = np.asarray(mf.nuc_grad_method().kernel(), dtype=float)  # Hartree/bohr
            self.results["forces"] = -gradient * (Hartree / Bohr)


def _free_energy_ha(mf: Any, settings: PeriodicPySCFSettings) -> float:
    """The energy the analytic gradient differentiates, Hartree: E, or E − σS with smearing."""
    if settings.smearing > 0:
        return float(mf.e_free)
    return float(mf.e_tot)


def _check_density_on_mesh(mf: Any, cell: pbc_gto.Cell, shash: str, directory: str) -> None:
    """Check that the converged density integrates to the electron count on the multigrid mesh.

    Guards against two silent failures: a mesh far too coarse for the basis (raise
    ``ke_cutoff``), and PySCF's C libraries bound to two OpenMP runtimes. The second
    was seen here: if ``pyscf.lib`` is imported, then ``torch`` (which loads its own
    ``libgomp`` globally), and only then ``pyscf.pbc``/``pyscf.dft``, the later PySCF
    libraries run their parallel regions under torch's runtime while PySCF's helpers
    answer from PySCF's; the multigrid density comes out wrong (0.9 instead of 2
    electrons for H2, different on every run) and the SCF converges to nonsense or
    not at all, whatever the thread count. Importing torch before any PySCF module,
    or ``OMP_NUM_THREADS=1``, avoids it. The check costs one density collocation
    (a few % of the SCF).

    Raises:
        LabelError: if the relative error exceeds ``MAX_RELATIVE_ELECTRON_COUNT_ERROR``.
    """
    dm = np.asarray(mf.make_rdm1())
    if dm.ndim == 3:  # UKS: alpha and beta
        dm = dm.sum(axis=0)
    rho = np.asarray(mf._numint.get_rho(cell, dm, mf.grids))  # electrons/bohr^3 on the mesh
    on_mesh = float(rho.sum()) * cell.vol / rho.size
    expected = float(cell.nelectron)
    if abs(on_mesh - expected) > MAX_RELATIVE_ELECTRON_COUNT_ERROR * expected:
        cutoff = "unset" if cell.ke_cutoff is None else f"{cell.ke_cutoff:g} Ha"
        raise LabelError(
            f"the converged density integrates to {on_mesh:.6f} electrons on the {cell.mesh.tolist()} FFT mesh "
            f"instead of {expected:g}. Either the mesh is too coarse (raise labels.ke_cutoff, now {cutoff}) "
            "or PySCF's C libraries are bound to two OpenMP runtimes (pyscf.lib was "
            "imported before torch and pyscf.pbc after it: import torch before any PySCF module, or set "
            "OMP_NUM_THREADS=1)",
            structure_hash=shash,
            directory=directory,
        )


def _check_structure(
    atoms: Atoms, settings: PeriodicPySCFSettings, shash: str, directory: str
) -> None:
    """Reject cells that cannot or should not be computed. Raises InvalidStructureError."""

    def reject(message: str) -> InvalidStructureError:
        return InvalidStructureError(message, structure_hash=shash, directory=directory)

    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.all():
        kind = "non-periodic" if not pbc.any() else "partly periodic (a slab or wire)"
        raise reject(
            f"the structure is {kind} (pbc={pbc.tolist()}); PeriodicPySCFCalculator computes "
            "3D-periodic cells only (set atoms.pbc = True with a full cell), and the molecular "
            "advloop.calculators.PySCFCalculator is the one for isolated molecules"
        )
    if len(atoms) == 0:
        raise reject("the structure has no atoms")
    volume = abs(float(np.linalg.det(atoms.cell[:])))
    if volume < MIN_CELL_VOLUME:
        raise reject(
            f"the cell volume is {volume:.3g} Å^3 (cell lengths {np.round(atoms.cell.lengths(), 3).tolist()} Å); "
            "a periodic calculation needs three linearly independent cell vectors"
        )
    numbers = atoms.numbers
    if (numbers < 1).any():
        index = int(np.flatnonzero(numbers < 1)[0])
        raise reject(
            f"atom {index} has atomic number {numbers[index]} (a dummy atom); only real elements are supported"
        )

    first, second, distance = primitive_neighbor_list(
        "ijd", pbc, atoms.cell[:], atoms.positions, MIN_INTERATOMIC_DISTANCE, self_interaction=False
    )
    if len(distance):
        closest = int(np.argmin(distance))
        a, b = int(first[closest]), int(second[closest])
        symbols = atoms.get_chemical_symbols()
        which = (
            f"atom {a} ({symbols[a]}) and a periodic image of itself"
            if a == b
            else (f"atoms {a} ({symbols[a]}) and {b} ({symbols[b]}), periodic images included,")
        )
        raise reject(
            f"{which} are {distance[closest]:.3f} Å apart, closer than the {MIN_INTERATOMIC_DISTANCE} Å "
            "minimum; the structure is unphysical"
        )

    valence = 0
    for symbol in sorted(set(atoms.get_chemical_symbols())):
        try:
            pseudo = pbc_gto.pseudo.load(settings.pseudo, symbol)
        except BasisNotFoundError as err:
            raise reject(
                f"pseudopotential {settings.pseudo!r} not found for element {symbol} "
                f"(PySCF: {str(err).splitlines()[0]}); choose a GTH family that covers every element"
            ) from err
        valence += int(sum(pseudo[0])) * int(np.count_nonzero(atoms.symbols == symbol))
    n_electrons = valence - settings.charge
    if n_electrons < 1:
        raise reject(
            f"charge={settings.charge} leaves {n_electrons} valence electrons for {atoms.get_chemical_formula()}"
        )
    if settings.spin > n_electrons or (n_electrons - settings.spin) % 2 != 0:
        parity = "odd" if n_electrons % 2 else "even"
        raise reject(
            f"charge={settings.charge} and spin={settings.spin} (2S) are incompatible with {n_electrons} "
            f"valence electrons ({settings.pseudo}) in {atoms.get_chemical_formula()}: the number of "
            f"electrons minus 2S must be even and non-negative (an {parity} count needs an {parity} spin)"
        )


def _build_cell(
    atoms: Atoms, settings: PeriodicPySCFSettings, shash: str, directory: str
) -> pbc_gto.Cell:
    """Build a PySCF cell in Å. Raises InvalidStructureError for an element outside the basis."""
    cell = pbc_gto.Cell()
    cell.atom = [
        (symbol, tuple(position))
        for symbol, position in zip(atoms.get_chemical_symbols(), atoms.positions)
    ]
    cell.a = np.asarray(atoms.cell[:], dtype=float)
    cell.unit = "Angstrom"
    cell.basis = settings.basis
    cell.pseudo = settings.pseudo
    cell.charge = settings.charge
    cell.spin = settings.spin
    cell.dimension = 3
    if settings.ke_cutoff is not None:
        cell.ke_cutoff = float(settings.ke_cutoff)  # Hartree
    cell.max_memory = settings.max_memory_mb
    cell.verbose = settings.verbose
    try:
        cell.build(dump_input=False, parse_arg=False)
    except BasisNotFoundError as err:
        raise InvalidStructureError(
            f"basis set {settings.basis!r} or pseudopotential {settings.pseudo!r} not found for an element of "
            f"{atoms.get_chemical_formula()} (PySCF: {str(err).splitlines()[0]}); choose a basis that covers "
            "every element",
            structure_hash=shash,
            directory=directory,
        ) from err
    return cell


def _make_scf(cell: pbc_gto.Cell, settings: PeriodicPySCFSettings) -> Any:
    """Bind the settings to a Γ-point multigrid Kohn-Sham object (not yet run)."""
    kohn_sham = pbc_dft.RKS if settings.method == "RKS" else pbc_dft.UKS
    mf = kohn_sham(
        cell, xc=settings.xc
    ).multigrid_numint()  # the only Γ-point scheme with gradients
    if settings.smearing > 0:
        # fix_spin keeps 2S = settings.spin for UKS (separate Fermi levels per spin).
        mf = smearing_(
            mf, sigma=float(settings.smearing), method="fermi", fix_spin=settings.method == "UKS"
        )
    mf.conv_tol = settings.conv_tol
    mf.max_cycle = settings.max_cycle
    mf.max_memory = settings.max_memory_mb
    mf.verbose = settings.verbose
    mf.chkfile = None  # no checkpoint file written each iteration
    return mf
