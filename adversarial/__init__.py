"""Exploration for active learning: the adversarial attack on the committee (Schwalbe-Koda,
Tan & Gómez-Bombarelli, Nat. Commun. 12, 5104, 2021), the baselines it is compared with
(random displacement, committee molecular dynamics), seed policies, geometry checks, and
selection of what to label. Every strategy takes :class:`Seeds` and returns
:class:`Candidates`."""

from advloop.adversarial.attack import AttackResult, AttackSettings, attack, iattack, run_attack
from advloop.adversarial.baselines import CommitteeMDSettings, committee_md, icommittee_md
from advloop.adversarial.geometry import (
    check_geometry,
    kabsch_rmsd,
    pairwise_kabsch_rmsd,
    pairwise_periodic_rmsd,
)
from advloop.adversarial.objective import adversarial_objective, kT_from_temperature, log_partition
from advloop.adversarial.random_displacement import RandomDisplacementSettings, random_displacement
from advloop.adversarial.seeding import choose_seeds
from advloop.adversarial.selection import SelectionResult, SelectionSettings, select_candidates
from advloop.adversarial.structures import Candidates, Seeds

__all__ = [
    "AttackResult",
    "AttackSettings",
    "Candidates",
    "CommitteeMDSettings",
    "RandomDisplacementSettings",
    "Seeds",
    "SelectionResult",
    "SelectionSettings",
    "adversarial_objective",
    "attack",
    "check_geometry",
    "choose_seeds",
    "committee_md",
    "iattack",
    "icommittee_md",
    "kT_from_temperature",
    "kabsch_rmsd",
    "log_partition",
    "pairwise_kabsch_rmsd",
    "pairwise_periodic_rmsd",
    "random_displacement",
    "run_attack",
    "select_candidates",
]
