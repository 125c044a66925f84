"""Adversarial attacks on the committee (Schwalbe-Koda, Tan & Gómez-Bombarelli, Nat.
Commun. 12, 5104, 2021), geometry checks, and selection of what to label."""

from adversarial.attack import AttackResult, AttackSettings, iattack, run_attack
from adversarial.geometry import check_geometry, kabsch_rmsd, pairwise_kabsch_rmsd
from adversarial.objective import adversarial_objective, kT_from_temperature, log_partition
from adversarial.selection import SelectionResult, SelectionSettings, select_candidates

__all__ = [
    "AttackResult", "AttackSettings", "SelectionResult", "SelectionSettings",
    "adversarial_objective", "check_geometry", "iattack", "kT_from_temperature",
    "kabsch_rmsd", "log_partition", "pairwise_kabsch_rmsd", "run_attack", "select_candidates",
]
