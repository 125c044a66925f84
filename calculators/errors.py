"""Exceptions raised while labelling structures with a reference calculator.

They subclass ASE's hierarchy so that any ASE-aware code can catch them:

- ``LabelError(CalculationFailed)``: any failure to label one structure;
- ``SCFConvergenceError(LabelError, SCFError)``: the SCF did not converge;
- ``InvalidStructureError(LabelError)``: the structure was rejected before any compute;
- ``InvalidLabelError(LabelError)``: the calculator returned an unusable label (a
  non-finite energy or force, forces not ``[n_atoms, 3]``, an absurd magnitude).

Each carries the structure hash (``advloop.potentials.hashing.structure_hash``) and the
calculator's directory, so a failure in a log or a dataset can be traced back to the
structure that caused it. Both survive pickling (``BaseException.__reduce__`` keeps the
instance ``__dict__``), which matters when errors cross process boundaries.
"""

from __future__ import annotations

from ase.calculators.calculator import CalculationFailed, SCFError

__all__ = ["InvalidLabelError", "InvalidStructureError", "LabelError", "SCFConvergenceError"]


class LabelError(CalculationFailed):
    """A structure could not be labelled (energy and forces not computed).

    Args:
        message: what went wrong and, where possible, how to fix it.
        structure_hash: ``structure_hash(atoms)`` of the structure, or None if unknown.
        directory: the calculator's working directory, or None if it has none.
    """

    def __init__(
        self,
        message: str,
        *,
        structure_hash: str | None = None,
        directory: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.structure_hash = structure_hash
        self.directory = directory

    def __str__(self) -> str:
        context = []
        if self.structure_hash is not None:
            context.append(f"structure_hash={self.structure_hash}")
        if self.directory is not None:
            context.append(f"directory={self.directory}")
        if not context:
            return self.message
        return f"{self.message} [{', '.join(context)}]"


class SCFConvergenceError(LabelError, SCFError):
    """The self-consistent field iterations did not converge."""


class InvalidStructureError(LabelError):
    """The structure was rejected before any compute was spent.

    Examples: two atoms closer than a minimum distance, a charge and spin
    multiplicity incompatible with the electron count, an element that the basis
    set does not cover, or a periodic cell given to a molecular calculator.
    """


class InvalidLabelError(LabelError):
    """The calculator returned a label that must not be trained on.

    Raised by :func:`advloop.calculators.label_store.check_label` after the calculation: an energy
    that is not one finite real number, forces that are not ``[n_atoms, 3]`` finite real
    numbers, or a magnitude no physical structure has (a calculator bug, a unit error, a
    diverged SCF reported as converged). The message says which.
    """
