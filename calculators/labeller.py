"""Turn any ASE calculator into energy and force labels, one outcome per structure.

A structure the calculator cannot label (it raises ASE's ``CalculationFailed``, e.g.
``InvalidStructureError`` or ``SCFConvergenceError``) becomes an outcome with an
``error`` string, and labelling goes on with the next structure. Any other exception
is a bug and propagates.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator, CalculationFailed

__all__ = ["LabelOutcome", "label_structures"]


@dataclass(frozen=True, eq=False)
class LabelOutcome:
    """The result of labelling one structure.

    ``eq=False``: outcomes hold arrays, so field-wise ``==`` would be ambiguous; compare
    fields explicitly (``np.allclose(a.forces, b.forces)``).

    Attributes:
        index: position of the structure in the input sequence.
        energy: potential energy, eV; None on failure.
        forces: forces, eV/Å, ``[n_atoms, 3]``, read-only; None on failure.
        error: None on success, otherwise ``"ExceptionClass: message"``.
        seconds: wall-clock time spent on this structure, s.

    Raises:
        ValueError: if the fields are inconsistent (energy and forces must both be set
            exactly when ``error`` is None) or ``forces`` is not ``[n_atoms, 3]``.
    """

    index: int
    energy: float | None
    forces: np.ndarray | None
    error: str | None
    seconds: float

    def __post_init__(self) -> None:
        if self.error is None:
            if self.energy is None or self.forces is None:
                raise ValueError(f"outcome {self.index}: no error, so energy and forces are required")
            forces = np.array(self.forces, dtype=float)
            if forces.ndim != 2 or forces.shape[1] != 3:
                raise ValueError(f"outcome {self.index}: forces must have shape [n_atoms, 3], got {forces.shape}")
            forces.setflags(write=False)
            object.__setattr__(self, "forces", forces)
        elif self.energy is not None or self.forces is not None:
            raise ValueError(f"outcome {self.index}: a failed outcome carries no energy or forces")

    @property
    def ok(self) -> bool:
        """True when the structure was labelled (``error`` is None)."""
        return self.error is None


def label_structures(structures: Sequence[Atoms], calculator: BaseCalculator) -> list[LabelOutcome]:
    """Compute energy (eV) and forces (eV/Å) for each structure with one ASE calculator.

    Each structure is copied, the copy is attached to ``calculator``, and forces then
    energy are requested (forces first, so a calculator that computes energy alongside
    forces runs once). Constraints on the structures are not applied: labels are the
    calculator's raw energy and forces. The input structures are not modified.

    Structures are labelled one after another in the calling process; parallelism,
    if any, belongs to the caller (or the calculator's own threads).

    Args:
        structures: the structures, ``n_structures`` of them.
        calculator: any ASE calculator implementing ``energy`` and ``forces``.

    Returns:
        One ``LabelOutcome`` per structure, in input order (``outcome.index == i``).

    Raises:
        Any exception other than ``ase.calculators.calculator.CalculationFailed``
        raised by the calculator (those are recorded in the outcome instead).
    """
    outcomes: list[LabelOutcome] = []
    for index, structure in enumerate(structures):
        atoms = structure.copy()
        atoms.calc = calculator
        start = time.perf_counter()
        try:
            forces = np.array(atoms.get_forces(apply_constraint=False), dtype=float)
            energy = float(atoms.get_potential_energy(apply_constraint=False))
        except CalculationFailed as err:
            outcome = LabelOutcome(
                index=index,
                energy=None,
                forces=None,
                error=f"{type(err).__name__}: {err}",
                seconds=time.perf_counter() - start,
            )
        else:
            outcome = LabelOutcome(
                index=index,
                energy=energy,
                forces=forces,
                error=None,
                seconds=time.perf_counter() - start,
            )
        outcomes.append(outcome)
    return outcomes
