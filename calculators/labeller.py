"""Turn any ASE calculator into energy and force labels, one outcome per structure.

A structure the calculator cannot label (it raises ASE's ``CalculationFailed``, e.g.
``InvalidStructureError`` or ``SCFConvergenceError``) becomes an outcome with an
``error`` string, and labelling goes on with the next structure. So does one whose
label, as the calculator returned it, is not valid
(:func:`~advloop.calculators.label_store.check_label`: a non-finite energy or force, forces not
``[n_atoms, 3]``, an absurd magnitude): ``InvalidLabelError`` with the reason. Any other
exception is a bug and propagates.

With a :class:`~advloop.calculators.label_store.LabelStore` and the level-of-theory settings,
labelling is content-addressed: a structure already labelled (or already failed) at the
same settings is read back, not recomputed, and every new label is stored the moment it
is computed.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator, CalculationFailed

from advloop.calculators.label_store import LabelStore, check_label, label_key
from advloop.potentials.hashing import structure_hash

__all__ = ["LabelOutcome", "label_structures"]


@dataclass(frozen=True, eq=False)
class LabelOutcome:
    """The result of labelling one structure.

    ``eq=False``: outcomes hold arrays, so field-wise ``==`` would be ambiguous; compare
    fields explicitly (``np.allclose(a.forces, b.forces)``).

    Attributes:
        index: position of the structure in the input sequence.
        energy: potential energy, eV, finite; None on failure.
        forces: forces, eV/Å, ``[n_atoms, 3]``, finite, read-only; None on failure.
        error: None on success, otherwise ``"ExceptionClass: message"``.
        seconds: wall-clock time spent on this structure, s (for a cached label, the
            time its original calculation took).
        cached: True when the label came from a label store.

    Raises:
        ValueError: if the fields are inconsistent (energy and forces must both be set
            exactly when ``error`` is None), ``forces`` is not ``[n_atoms, 3]``, or a
            number is not finite.
    """

    index: int
    energy: float | None
    forces: np.ndarray | None
    error: str | None
    seconds: float
    cached: bool = False  # read back from a label store, not computed now

    def __post_init__(self) -> None:
        if self.error is None:
            if self.energy is None or self.forces is None:
                raise ValueError(
                    f"outcome {self.index}: no error, so energy and forces are required"
                )
            forces = np.array(self.forces, dtype=float)
            if forces.ndim != 2 or forces.shape[1] != 3:
                raise ValueError(
                    f"outcome {self.index}: forces must have shape [n_atoms, 3], got {forces.shape}"
                )
            energy = float(self.energy)
            if not (np.isfinite(energy) and np.isfinite(forces).all()):
                raise ValueError(f"outcome {self.index}: energy and forces must be finite")
            forces.setflags(write=False)
            object.__setattr__(self, "energy", energy)
            object.__setattr__(self, "forces", forces)
        elif self.energy is not None or self.forces is not None:
            raise ValueError(f"outcome {self.index}: a failed outcome carries no energy or forces")

    @property
    def ok(self) -> bool:
        """True when the structure was labelled (``error`` is None)."""
        return self.error is None


def label_structures(
    structures: Sequence[Atoms],
    calculator: BaseCalculator,
    store: LabelStore | None = None,
    theory: Mapping | None = None,
) -> list[LabelOutcome]:
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
        store: where labels are looked up before computing and kept after; needs
            ``theory``, the settings that identify the level of theory.
        theory: level-of-theory settings (JSON-serialisable mapping).

    Returns:
        One ``LabelOutcome`` per structure, in input order (``outcome.index == i``).

    A label the calculator returns is checked
    (:func:`~advloop.calculators.label_store.check_label`); an invalid one is a failed outcome,
    ``"InvalidLabelError: <what is wrong> [structure_hash=...]"``, stored as a failure like
    any other, so a re-run does not compute it again. A stored success that is not a valid label for the structure (an
    older advloop stored what a broken calculator returned) is recomputed.

    Raises:
        ValueError: a store without ``theory``.
        Any exception other than ``ase.calculators.calculator.CalculationFailed``
        raised by the calculator (those are recorded in the outcome instead).
    """
    if store is not None and theory is None:
        raise ValueError("a label store needs the level-of-theory settings (theory=...)")
    outcomes: list[LabelOutcome] = []
    for index, structure in enumerate(structures):
        if store is None or theory is None:
            outcomes.append(_label_one(index, structure, calculator))
            continue
        key = label_key(structure, theory)
        stored = store.get(key, n_atoms=len(structure))
        if stored is not None:
            outcomes.append(
                LabelOutcome(
                    index, stored.energy, stored.forces, stored.error, stored.seconds, cached=True
                )
            )
            continue
        outcome = _label_one(index, structure, calculator)
        store.put(key, theory, outcome.energy, outcome.forces, outcome.error, outcome.seconds)
        outcomes.append(outcome)
    return outcomes


def _label_one(index: int, structure: Atoms, calculator: BaseCalculator) -> LabelOutcome:
    atoms = structure.copy()
    atoms.calc = calculator
    start = time.perf_counter()
    try:
        forces = atoms.get_forces(apply_constraint=False)
        energy = atoms.get_potential_energy(apply_constraint=False)
        energy, forces = check_label(
            energy, forces, len(atoms), structure_hash=structure_hash(structure)
        )
    except CalculationFailed as err:  # InvalidLabelError from check_label included
        return LabelOutcome(
            index, None, None, f"{type(err).__name__}: {err}", time.perf_counter() - start
        )
    return LabelOutcome(index, energy, forces, None, time.perf_counter() - start)
