"""ASE calculators: PySCF DFT reference labels, the labeller, and their errors."""

from calculators.committee_calculator import CommitteeCalculator
from calculators.errors import InvalidStructureError, LabelError, SCFConvergenceError
from potentials.hashing import structure_hash
from calculators.labeller import LabelOutcome, label_structures
from calculators.pyscf_calculator import PySCFCalculator, PySCFSettings

__all__ = [
    "CommitteeCalculator",
    "InvalidStructureError",
    "LabelError",
    "LabelOutcome",
    "PySCFCalculator",
    "PySCFSettings",
    "SCFConvergenceError",
    "label_structures",
    "structure_hash",
]
