"""How the SCF is run: a ladder of increasingly robust settings, tried in turn until
one converges, and the previous geometry's density as the initial guess.

The rungs, in the order of the default ladder:

- ``"default"``: the settings as given (Pulay DIIS, ``max_cycle`` iterations).
  P. Pulay, Chem. Phys. Lett. 73, 393 (1980).
- ``"more_cycles"``: DIIS with ``MORE_CYCLES_FACTOR × max_cycle`` iterations and a
  larger subspace (``MORE_CYCLES_DIIS_SPACE`` Fock matrices).
- ``"level_shift"``: virtual orbitals shifted up by ``LEVEL_SHIFT_HA`` and the first
  ``DAMPED_CYCLES`` Fock matrices damped (``DAMPING``) before DIIS starts, for
  ``MORE_CYCLES_FACTOR × max_cycle`` iterations. V. R. Saunders and I. H. Hillier,
  Int. J. Quantum Chem. 7, 699 (1973).
- ``"newton"``: PySCF's second-order (co-iterative augmented Hessian) solver,
  ``mf.newton()``, for ``max_cycle`` macro iterations. Q. Sun, arXiv:1610.08423 (2016).

Every rung after the first starts from PySCF's default initial guess (the first may
start from a reused density), never from the last density of a rung that failed.
Measured on H2O with both O-H bonds stretched 2.5× at RKS/PBE/STO-3G, where DIIS
oscillates: Newton from the default guess converges to -74.78595 Ha, the lowest state
found, while Newton from the last DIIS density converges to -73.26942 Ha, an excited
state 41 eV higher. Starting over also makes a label independent of which rungs
failed before it. A solution from any rung after the first must also pass an internal
stability analysis (see :func:`run_scf_ladder`).

Units: energies and energy changes in Hartree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import numpy as np
from pyscf import scf

# Rung escalations, which a run's log should show (flows forward this logger to Prefect).
_log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SCF_LADDER",
    "REUSE_MAX_DISPLACEMENT",
    "DensityGuess",
    "SCF_RUNGS",
    "LadderResult",
    "RungAttempt",
    "ScfRung",
    "run_scf_ladder",
    "validate_ladder",
]

ScfRung = Literal["default", "more_cycles", "level_shift", "newton"]
SCF_RUNGS: tuple[str, ...] = get_args(ScfRung)
DEFAULT_SCF_LADDER: tuple[ScfRung, ...] = ("default", "more_cycles", "level_shift", "newton")

MORE_CYCLES_FACTOR = 2  # iterations of the DIIS rungs after the first, × max_cycle
MORE_CYCLES_DIIS_SPACE = 12  # Fock matrices kept by DIIS (PySCF's default is 8)
LEVEL_SHIFT_HA = 0.3  # Hartree, added to the virtual orbital energies
DAMPING = 0.5  # fraction of the previous Fock matrix mixed into the new one
DAMPED_CYCLES = 4  # damped iterations before DIIS starts (PySCF's diis_start_cycle)
STABILITY_FOLLOW_STEPS = 3  # Newton restarts along a negative orbital-Hessian mode

# The previous density matrix is reused as the initial guess only if no atom moved more
# than this since the geometry it belongs to (Å). The AO density is tied to the lab
# frame: for a rotated copy of a molecule it is a poor guess that can lead the SCF to
# another solution.
REUSE_MAX_DISPLACEMENT = 0.5  # Å


def validate_ladder(ladder: Iterable[str]) -> tuple[ScfRung, ...]:
    """Return ``ladder`` as a tuple after checking it.

    Raises:
        ValueError: if it is a bare string or empty, names an unknown rung, or repeats one.
    """
    if isinstance(ladder, str):
        raise ValueError(f"scf_ladder must be a sequence of rung names, not the string {ladder!r}")
    rungs = tuple(ladder)
    if not rungs:
        raise ValueError(f"scf_ladder must name at least one rung out of {', '.join(SCF_RUNGS)}")
    for rung in rungs:
        if rung not in SCF_RUNGS:
            raise ValueError(
                f"unknown SCF ladder rung {rung!r}; known rungs are {', '.join(SCF_RUNGS)}"
            )
    repeated = sorted({rung for rung in rungs if rungs.count(rung) > 1})
    if repeated:
        raise ValueError(
            f"SCF ladder rung(s) {', '.join(map(repr, repeated))} appear more than once"
        )
    return cast("tuple[ScfRung, ...]", rungs)  # each checked against SCF_RUNGS above


@dataclass(frozen=True)
class DensityGuess:
    """A converged AO density matrix and what it belongs to, kept as the next initial guess.

    Attributes:
        key: what must match for reuse, e.g. (atomic numbers, basis, charge, spin, method).
        positions: the geometry it was converged at, Å, ``[n_atoms, 3]``.
        dm: ``[nao, nao]`` (restricted) or ``[2, nao, nao]`` (unrestricted).
    """

    key: tuple[Any, ...]
    positions: np.ndarray
    dm: np.ndarray

    def for_geometry(self, key: tuple[Any, ...], positions: np.ndarray) -> np.ndarray | None:
        """``dm`` if ``key`` matches and no atom moved more than ``REUSE_MAX_DISPLACEMENT`` Å; else None.

        With the same basis and atom order the AO basis is the same set of functions
        (moved with their atoms), so the matrix is used directly as PySCF's ``dm0``.
        """
        if key != self.key or positions.shape != self.positions.shape:
            return None
        if np.abs(positions - self.positions).max() > REUSE_MAX_DISPLACEMENT:
            return None
        return self.dm


@dataclass(frozen=True)
class RungAttempt:
    """One rung of the ladder, tried.

    Attributes:
        rung: the rung's name.
        converged: whether the rung's solution was accepted: PySCF reported convergence
            and, on any rung but the first, the solution is internally stable.
        cycles: SCF iterations run (macro iterations for ``"newton"``), including the
            Newton iterations spent following instabilities.
        max_cycle: the iteration limit of this rung.
        energy_ha: the last total energy, Ha (NaN if the rung raised before one).
        delta_e_ha: the energy change of the last iteration, Ha (NaN if none).
        gradient_norm: norm of the orbital gradient at the last iteration (NaN if none).
        reused_density: whether the rung started from the previous geometry's density.
        seconds: wall-clock time of the rung, s.
        error: why the rung failed other than by running out of iterations (PySCF
            raised, or the solution stayed a saddle point), else None.
    """

    rung: str
    converged: bool
    cycles: int
    max_cycle: int
    energy_ha: float
    delta_e_ha: float
    gradient_norm: float
    reused_density: bool
    seconds: float
    error: str | None = None

    def describe(self) -> str:
        """One line for an error message: the rung, its limit and why it failed (or that it converged)."""
        start = ", from the previous geometry's density" if self.reused_density else ""
        head = f"{self.rung} (max_cycle={self.max_cycle}{start})"
        if self.error is not None:
            return f"{head}: {self.error} (after {self.cycles} cycles, E={self.energy_ha:.10f} Ha)"
        if self.converged:
            return f"{head}: converged in {self.cycles} cycles, E={self.energy_ha:.10f} Ha"
        return (
            f"{head}: not converged after {self.cycles} cycles, last ΔE={self.delta_e_ha:.2e} Ha, "
            f"|g|={self.gradient_norm:.2e}, E={self.energy_ha:.10f} Ha"
        )


@dataclass(frozen=True)
class LadderResult:
    """The outcome of :func:`run_scf_ladder`.

    Attributes:
        mf: the converged mean-field object (second-order wrapper removed, ready for
            ``nuc_grad_method()``), or None if no rung converged.
        rung: the name of the rung that converged, or None.
        attempts: every rung tried, in order.
    """

    mf: scf.hf.SCF | None
    rung: str | None
    attempts: tuple[RungAttempt, ...]

    @property
    def cycles(self) -> int:
        """SCF iterations over all rungs tried (Newton macro iterations count as one each)."""
        return sum(attempt.cycles for attempt in self.attempts)


def _configure(mf: scf.hf.SCF, rung: str, max_cycle: int) -> tuple[scf.hf.SCF, int]:
    """Apply a rung's settings to a fresh mean-field object; returns it and its iteration limit."""
    if rung == "default":
        limit = max_cycle
    elif rung == "more_cycles":
        limit = MORE_CYCLES_FACTOR * max_cycle
        mf.diis_space = MORE_CYCLES_DIIS_SPACE
    elif rung == "level_shift":
        limit = MORE_CYCLES_FACTOR * max_cycle
        mf.level_shift = LEVEL_SHIFT_HA
        mf.damp = DAMPING
        mf.diis_start_cycle = DAMPED_CYCLES
    elif rung == "newton":
        limit = max_cycle
        mf = mf.newton()
    else:
        raise ValueError(
            f"unknown SCF ladder rung {rung!r}; known rungs are {', '.join(SCF_RUNGS)}"
        )
    mf.max_cycle = limit
    return mf, limit


class _Trace:
    """Records the last iteration of a PySCF SCF kernel through its ``callback`` hook."""

    def __init__(self) -> None:
        self.cycles = 0
        self.energy = self.delta_e = self.gradient = float("nan")

    def run(self, mf: scf.hf.SCF, **kernel_args: Any) -> float:
        """Run ``mf.kernel(**kernel_args)``, adding its iterations to ``cycles``; returns the energy, Ha."""
        done = self.cycles

        def record(envs: dict[str, Any]) -> None:
            iteration = (
                envs["imacro"] if "imacro" in envs else envs["cycle"]
            )  # Newton or DIIS kernel
            self.cycles = max(self.cycles, done + int(iteration) + 1)
            self.energy = float(envs["e_tot"])
            self.delta_e = float(envs["e_tot"] - envs["last_hf_e"])
            self.gradient = float(envs["norm_gorb"])

        mf.callback = record
        try:
            return float(mf.kernel(**kernel_args))
        finally:
            mf.callback = None


def _plain(mf: scf.hf.SCF) -> scf.hf.SCF:
    """The mean-field object without the second-order solver's wrapper (for gradients)."""
    return mf.undo_soscf() if hasattr(mf, "undo_soscf") else mf


def _settle(mf: scf.hf.SCF, max_cycle: int, trace: _Trace) -> tuple[scf.hf.SCF, str | None]:
    """Follow internal instabilities of a converged SCF down to a stable solution.

    Internal stability analysis (within the method's own restricted/unrestricted space)
    finds whether the orbital Hessian has a negative eigenvalue, i.e. whether the SCF
    converged to a saddle point; if so, the orbitals are rotated along that mode and
    the Newton solver reconverges, up to ``STABILITY_FOLLOW_STEPS`` times.
    R. Seeger and J. A. Pople, J. Chem. Phys. 66, 3045 (1977).

    Returns:
        The stable object and None, or the last object and why it is not acceptable.
    """
    for _ in range(STABILITY_FOLLOW_STEPS):
        mo_coeff, _, stable, _ = mf.stability(internal=True, external=False, return_status=True)
        if stable:
            return mf, None
        newton = mf.newton()
        newton.max_cycle = max_cycle
        trace.run(newton, mo_coeff=mo_coeff, mo_occ=mf.mo_occ)
        if not newton.converged:
            return (
                mf,
                "converged to a saddle point (internally unstable) and Newton did not converge from it",
            )
        mf = _plain(newton)
    _, _, stable, _ = mf.stability(internal=True, external=False, return_status=True)
    if stable:
        return mf, None
    return mf, f"still internally unstable after following {STABILITY_FOLLOW_STEPS} instabilities"


def run_scf_ladder(
    make_scf: Callable[[], scf.hf.SCF],
    ladder: Iterable[str],
    max_cycle: int,
    dm0: np.ndarray | None = None,
    check_stability: bool = True,
) -> LadderResult:
    """Run the SCF rung by rung until one converges.

    A solution found by any rung after the first is accepted only if it is internally
    stable, after following instabilities (see :func:`_settle`): measured on H2O with
    both bonds stretched 3× at RHF/STO-3G, DIIS with more cycles converges to a saddle
    point 0.064 eV above the minimum that Newton reaches, and level shifting to one
    4.0 eV above it; following the instability recovers the minimum from both. The
    first rung is not checked (the analysis costs about as much as a Kohn-Sham SCF).

    Args:
        make_scf: returns a fresh, configured, not yet run mean-field object; called
            once per rung tried.
        ladder: rung names (see ``SCF_RUNGS``), tried in order.
        max_cycle: the base iteration limit that each rung scales.
        dm0: initial AO density matrix for the first rung only, ``[nao, nao]``
            (restricted) or ``[2, nao, nao]`` (unrestricted); None for PySCF's guess.
        check_stability: follow instabilities of later rungs' solutions (False where
            PySCF has no stability analysis, as for periodic multigrid SCF).

    Returns:
        The converged object and rung, or ``mf=None`` with every attempt recorded.
        A rung in which PySCF raises ``numpy.linalg.LinAlgError`` (a failed
        diagonalisation) counts as failed; any other exception propagates.

    Raises:
        ValueError: if the ladder is invalid (see :func:`validate_ladder`).
    """
    attempts: list[RungAttempt] = []
    for k, rung in enumerate(validate_ladder(ladder)):
        mf, limit = _configure(make_scf(), rung, max_cycle)
        trace = _Trace()
        guess = dm0 if k == 0 else None
        start = time.perf_counter()
        error = None
        try:
            energy = trace.run(mf, dm0=guess)
            converged = bool(mf.converged) and bool(np.isfinite(energy))
            mf = _plain(mf)
            if converged and k > 0 and check_stability:
                mf, error = _settle(mf, max_cycle, trace)
                converged, energy = error is None, float(mf.e_tot)
        except np.linalg.LinAlgError as err:
            error, energy, converged = f"raised {type(err).__name__}: {err}", trace.energy, False
        attempts.append(
            RungAttempt(
                rung=rung,
                converged=converged,
                cycles=trace.cycles,
                max_cycle=limit,
                energy_ha=energy,
                delta_e_ha=trace.delta_e,
                gradient_norm=trace.gradient,
                reused_density=guess is not None,
                seconds=time.perf_counter() - start,
                error=error,
            )
        )
        if converged:
            if k:
                _log.info(
                    "SCF converged on rung %r after %d failed rung(s), %d cycles in all",
                    rung,
                    k,
                    sum(a.cycles for a in attempts),
                )
            return LadderResult(mf=mf, rung=rung, attempts=tuple(attempts))
        _log.warning(
            "SCF rung %r did not converge (%d of %d cycles%s)",
            rung,
            trace.cycles,
            limit,
            f"; {error}" if error else "",
        )
    return LadderResult(mf=None, rung=None, attempts=tuple(attempts))
