"""Selection of adversarial candidates for DFT labelling.

After an attack, each candidate structure carries a committee uncertainty. Following
Schwalbe-Koda, Tan & Gómez-Bombarelli, Nat. Commun. 12, 5104 (2021), a candidate is
labelled only if it is physically sane, more uncertain than most of the training set
(a percentile of the training set's own uncertainties), and not a near-duplicate
(Kabsch RMSD; for periodic cells the minimum-image RMSD up to a translation) of a
training structure or of another selected candidate; at most
``max_selected`` are kept per generation, the most uncertain first.

With ``method="diverse"`` the last step is a batch choice instead: among the candidates
that pass the filters, a greedy max-determinant selection in the committee's feature
space, conditioned on the training set (:mod:`advloop.adversarial.batch`), trades
uncertainty against diversity, so that one batch does not spend its labels on
near-copies of one uncertain region.

Units: positions in Å, uncertainties in eV/Å (e.g. mean per-atom force std), RMSD in Å.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from advloop.adversarial.batch import greedy_diverse_batch
from advloop.adversarial.geometry import (
    check_geometry,
    pairwise_kabsch_rmsd,
    pairwise_periodic_rmsd,
    validate_factors,
)
from advloop.constraints import (
    Fraction,
    NonNegativeFloat,
    Percentile,
    PositiveInt,
    check_fields,
)

__all__ = [
    "RejectReason",
    "Rejection",
    "SelectionMethod",
    "SelectionResult",
    "SelectionSettings",
    "select_candidates",
]

#: Why selection passed over a candidate, in the order the filters run.
RejectReason = Literal[
    "not_finite", "unphysical", "below_threshold", "known", "duplicate", "redundant", "over_cap"
]
#: How the batch is chosen among candidates that pass the filters: the most uncertain
#: first (``threshold``, the paper's rule) or greedy max-determinant (``diverse``).
SelectionMethod = Literal["threshold", "diverse"]
UncertaintyWeighting = Literal["none", "element"]


@dataclass(frozen=True)
class Rejection:
    """Why one candidate was not selected: the filter (``reason``) and a sentence for
    people (``detail``: the clashing atoms, the RMSD and the structure it duplicates)."""

    reason: RejectReason
    detail: str

    def __str__(self) -> str:
        return self.detail


@dataclass(frozen=True)
class SelectionSettings:
    """How candidates are filtered before labelling.

    Attributes:
        percentile: uncertainty threshold, as this percentile (0-100) of the training
            set's uncertainties; candidates strictly below it are rejected.
        rmsd_threshold: Å; a candidate with Kabsch RMSD strictly below this to a
            training structure or to an already-selected candidate is a near-duplicate.
            0 disables de-duplication.
        min_distance_factor: clash if a pair is closer than this × summed covalent
            radii (see :func:`advloop.adversarial.geometry.check_geometry`).
        max_bond_factor: atoms closer than this × summed covalent radii are bonded;
            a molecule whose bond graph is disconnected is fragmented.
        max_selected: cap on the number of candidates selected per generation, >= 1.
        method: ``threshold`` (the most uncertain first) or ``diverse`` (greedy
            max-determinant in the committee's feature space; needs features).
        min_novelty: for ``diverse``, a candidate whose kernel variance the training
            set and the batch explain to all but this share is ``redundant``.
        weighting: the uncertainty the caller ranks by: ``none`` (mean per-atom σ_F,
            eV/Å) or ``element`` (each atom's σ_F over its element's median on the
            training set, averaged: dimensionless, so hydrogen does not dominate; see
            :func:`advloop.potentials.uncertainty.element_weighted_std`).

    Raises:
        ValueError: on construction, if a value is out of range.
    """

    __pydantic_config__ = {"extra": "forbid", "allow_inf_nan": False}

    percentile: Percentile = 90.0
    rmsd_threshold: NonNegativeFloat = field(default=0.05, metadata={"unit": "Å"})
    min_distance_factor: NonNegativeFloat = 0.5
    max_bond_factor: NonNegativeFloat = 2.0
    max_selected: PositiveInt = 8
    method: SelectionMethod = "threshold"
    min_novelty: Fraction = 1e-3
    weighting: UncertaintyWeighting = "none"

    def __post_init__(self) -> None:
        check_fields(self, "selection")
        validate_factors(self.min_distance_factor, self.max_bond_factor)


@dataclass(frozen=True)
class SelectionResult:
    """Outcome of :func:`select_candidates`.

    Attributes:
        selected: indices into the candidates [n_selected], in order of decreasing
            uncertainty (``threshold``) or in the order picked (``diverse``).
        threshold: the uncertainty threshold used, eV/Å.
        rejected: candidate index -> :class:`Rejection`, one entry per candidate not
            selected, sorted by index.
    """

    selected: np.ndarray
    threshold: float
    rejected: dict[int, Rejection]


def select_candidates(
    numbers: np.ndarray,
    candidates: np.ndarray,
    uncertainty: np.ndarray,
    train_positions: np.ndarray,
    train_uncertainty: np.ndarray,
    settings: SelectionSettings,
    cells: np.ndarray | None = None,
    train_cells: np.ndarray | None = None,
    pbc: np.ndarray | None = None,
    features: np.ndarray | None = None,
    train_features: np.ndarray | None = None,
    eligible: np.ndarray | None = None,
    ineligible: str = "not eligible",
) -> SelectionResult:
    """Choose which candidates to label, giving each rejected one a reason.

    Filters, in order (a candidate gets the reason of the first filter it fails):

    1. not finite: NaN or inf in its positions or its uncertainty;
    2. geometry: :func:`advloop.adversarial.geometry.check_geometry` (clash or fragmented);
    3. below threshold: uncertainty < ``np.percentile(train_uncertainty, percentile)``;
    4. near-duplicate of a training structure: min Kabsch RMSD < ``rmsd_threshold``;
    5. ``threshold``: greedy, in decreasing uncertainty: near-duplicate of an already
       selected candidate, then over cap once ``max_selected`` are selected. Each
       cluster of near-duplicates is thus represented by its most uncertain member.
       ``diverse``: greedy max-determinant with quality = uncertainty
       (:func:`advloop.adversarial.batch.greedy_diverse_batch`); a pick that is a
       near-duplicate of a selected one is rejected as such, one the training set and
       the batch already explain is ``redundant``, the rest are over cap.

    Args:
        numbers: atomic numbers [n_atoms], shared by all structures.
        candidates: candidate positions [n_candidates, n_atoms, 3], Å.
        uncertainty: candidate uncertainties [n_candidates], eV/Å.
        train_positions: training-set positions [n_train, n_atoms, 3], Å, same
            composition and atom order as the candidates.
        train_uncertainty: training-set uncertainties [n_train], eV/Å, same metric as
            ``uncertainty``.
        settings: the thresholds and cap.
        cells, train_cells: [n_candidates, 3, 3] and [n_train, 3, 3] Å, with ``pbc`` [3],
            for periodic structures: distances are then
            :func:`advloop.adversarial.geometry.pairwise_periodic_rmsd` (minimum images, no
            rotation) and clashes include periodic images.
        eligible: [n_candidates] bool; candidates marked False are rejected as
            ``below_threshold`` with the detail ``ineligible`` (a calibrated error bound
            below the tolerance, say), after the geometry checks.
        features, train_features: [n_candidates, n_features] and [n_train, n_features]
            descriptors for ``method="diverse"`` (e.g.
            :meth:`advloop.potentials.committee.Committee.structure_features`).

    Returns:
        The selected indices, the threshold used and the reasons for the rest.

    Raises:
        ValueError: if shapes are inconsistent, the training set is empty, or the
            training positions or uncertainties are not finite.
    """
    z = np.asarray(numbers)
    if z.ndim != 1 or z.shape[0] == 0:
        raise ValueError(f"numbers must have shape [n_atoms] with n_atoms >= 1, got {z.shape}")
    n_atoms = z.shape[0]
    cand = np.asarray(candidates, dtype=np.float64)
    if cand.ndim != 3 or cand.shape[1:] != (n_atoms, 3):
        raise ValueError(
            f"candidates must have shape [n_candidates, n_atoms, 3] with n_atoms = {n_atoms}, got {cand.shape}"
        )
    n_candidates = cand.shape[0]
    unc = np.asarray(uncertainty, dtype=np.float64)
    if unc.shape != (n_candidates,):
        raise ValueError(
            f"uncertainty must have shape [n_candidates] = ({n_candidates},), got {unc.shape}"
        )
    train = np.asarray(train_positions, dtype=np.float64)
    if train.ndim != 3 or train.shape[1:] != (n_atoms, 3):
        raise ValueError(
            f"train_positions must have shape [n_train, n_atoms, 3] with n_atoms = {n_atoms} "
            f"(same composition and atom order as the candidates), got {train.shape}"
        )
    train_unc = np.asarray(train_uncertainty, dtype=np.float64)
    if train_unc.ndim != 1 or train_unc.shape[0] == 0:
        raise ValueError(
            f"train_uncertainty must have shape [n_train] with n_train >= 1 to set the threshold, "
            f"got {train_unc.shape}"
        )
    if train.shape[0] != train_unc.shape[0]:
        raise ValueError(
            f"train_positions has {train.shape[0]} structures but train_uncertainty has {train_unc.shape[0]}"
        )
    if not np.all(np.isfinite(train_unc)):
        raise ValueError(
            "train_uncertainty contains NaN or inf; fix the training-set uncertainties first"
        )
    if not np.all(np.isfinite(train)):
        raise ValueError("train_positions contains NaN or inf coordinates")
    if not isinstance(settings, SelectionSettings):
        raise ValueError(f"settings must be a SelectionSettings, got {type(settings).__name__}")

    if settings.method == "diverse":
        if features is None or train_features is None:
            raise ValueError('selection.method "diverse" needs features and train_features')
        if np.shape(features)[0] != n_candidates or np.shape(train_features)[0] != train.shape[0]:
            raise ValueError(
                f"features {np.shape(features)} and train_features {np.shape(train_features)} "
                f"must have one row per candidate ({n_candidates}) and training structure "
                f"({train.shape[0]})"
            )
    periodic = pbc is not None and bool(np.any(pbc))
    if periodic and (cells is None or train_cells is None):
        raise ValueError("periodic candidates need cells and train_cells")

    def distances(a_idx: np.ndarray, b: np.ndarray, b_cells: np.ndarray | None) -> np.ndarray:
        if not periodic:
            return pairwise_kabsch_rmsd(cand[a_idx], b)
        if cells is None or b_cells is None or pbc is None:  # checked above
            raise ValueError("periodic candidates need cells and train_cells")
        return pairwise_periodic_rmsd(cand[a_idx], np.asarray(cells)[a_idx], b, b_cells, pbc)

    threshold = float(np.percentile(train_unc, settings.percentile))
    rejected: dict[int, Rejection] = {}

    # 1. not finite
    finite_pos = np.all(np.isfinite(cand), axis=(1, 2))
    finite_unc = np.isfinite(unc)
    for bad in np.flatnonzero(~(finite_pos & finite_unc)):
        what = "positions" if not finite_pos[bad] else "uncertainty"
        rejected[int(bad)] = Rejection("not_finite", f"not finite ({what})")

    # 2. geometry
    for idx in range(n_candidates):
        if idx in rejected:
            continue
        reason = check_geometry(
            z,
            cand[idx],
            settings.min_distance_factor,
            settings.max_bond_factor,
            cells[idx] if periodic and cells is not None else None,
            pbc if periodic else None,
        )
        if reason is not None:
            rejected[idx] = Rejection("unphysical", reason)

    # 3. below threshold
    unit = " eV/Å" if settings.weighting == "none" else ""
    if eligible is not None and np.shape(eligible) != (n_candidates,):
        raise ValueError(f"eligible must have shape [{n_candidates}], got {np.shape(eligible)}")
    for idx in range(n_candidates):
        if idx not in rejected and eligible is not None and not eligible[idx]:
            rejected[idx] = Rejection("below_threshold", ineligible)
        elif idx not in rejected and unc[idx] < threshold:
            rejected[idx] = Rejection(
                "below_threshold", f"below threshold ({unc[idx]:.4g} < {threshold:.4g}{unit})"
            )

    # 4. near-duplicate of the training set
    alive = np.array([i for i in range(n_candidates) if i not in rejected], dtype=np.intp)
    if alive.size and train.shape[0] and settings.rmsd_threshold > 0:
        to_train = distances(alive, train, train_cells)  # [n_alive, n_train], Å
        nearest = np.argmin(to_train, axis=1)
        nearest_rmsd = to_train[np.arange(alive.size), nearest]
        duplicate = nearest_rmsd < settings.rmsd_threshold
        for dup in np.flatnonzero(duplicate):
            rejected[int(alive[dup])] = Rejection(
                "known",
                (
                    f"near-duplicate of training structure {int(nearest[dup])} (RMSD {nearest_rmsd[dup]:.3f} Å)"
                ),
            )
        alive = alive[~duplicate]

    # 5. greedy in decreasing uncertainty: near-duplicate of a selected one, then cap
    order = alive[np.argsort(-unc[alive], kind="stable")]
    if order.size and settings.rmsd_threshold > 0:
        among = distances(
            order, cand[order], np.asarray(cells)[order] if periodic else None
        )  # [n_alive, n_alive], Å
    else:
        among = np.full((order.size, order.size), np.inf)
    selected_pos: list[int] = []  # positions in `order`

    def near_duplicate(k: int, chosen: list[int]) -> bool:
        """Reject candidate ``order[k]`` if it duplicates one of ``chosen`` (positions)."""
        if not chosen:
            return False
        rmsd_to_selected = among[k, chosen]
        m = int(np.argmin(rmsd_to_selected))
        if rmsd_to_selected[m] >= settings.rmsd_threshold:
            return False
        rejected[int(order[k])] = Rejection(
            "duplicate",
            f"near-duplicate of candidate {int(order[chosen[m]])} "
            f"(RMSD {rmsd_to_selected[m]:.3f} Å)",
        )
        return True

    if settings.method == "diverse" and features is not None and train_features is not None:
        batch = greedy_diverse_batch(
            unc[order],
            np.asarray(features, dtype=np.float64)[order],
            np.asarray(train_features, dtype=np.float64),
            settings.max_selected,
            allowed=lambda k, chosen: not near_duplicate(k, chosen),
            min_novelty=settings.min_novelty,
        )
        selected_pos = batch.chosen
        for k in batch.redundant:
            rejected[int(order[k])] = Rejection(
                "redundant",
                f"redundant: the training set and the batch explain all but "
                f"{batch.novelty[k]:.2g} of it in the committee's feature space",
            )
        for k, candidate in enumerate(order):
            if k not in selected_pos and int(candidate) not in rejected:
                rejected[int(candidate)] = Rejection("over_cap", "over cap")
        order_selected = order[selected_pos].astype(np.intp)
        return SelectionResult(
            selected=order_selected, threshold=threshold, rejected=dict(sorted(rejected.items()))
        )
    for k, candidate in enumerate(order):
        if near_duplicate(k, selected_pos):
            continue
        if len(selected_pos) >= settings.max_selected:
            rejected[int(candidate)] = Rejection("over_cap", "over cap")
            continue
        selected_pos.append(k)

    selected = order[selected_pos].astype(np.intp)
    return SelectionResult(
        selected=selected,
        threshold=threshold,
        rejected=dict(sorted(rejected.items())),
    )
