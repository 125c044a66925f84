"""ASE calculators: PySCF DFT reference labels, the labeller, and their errors."""

from advloop.calculators.committee_calculator import CommitteeCalculator
from advloop.calculators.errors import InvalidStructureError, LabelError, SCFConvergenceError
from advloop.calculators.labeller import LabelOutcome, label_structures
from advloop.calculators.pyscf_calculator import PySCFCalculator, PySCFSettings
from advloop.potentials.hashing import structure_hash

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
