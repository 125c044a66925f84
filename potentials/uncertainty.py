"""How well the committee's spread predicts its true error (calibration).

Computed on every batch of newly labelled structures: the committee predicted them before
their labels existed, so they are an honest test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties given their mean rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for value in np.unique(x):
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two 1-D arrays; NaN when either is constant or n < 2."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(
            f"spearman needs two 1-D arrays of one length, got {a.shape} and {b.shape}"
        )
    if len(a) < 2:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass(frozen=True)
class Calibration:
    """spearman: rank correlation between predicted σ_F and observed force error per
    structure; ratio: mean predicted σ_F over mean observed error (1 is calibrated, < 1
    over-confident); both in eV/Å before the ratio."""

    n: int
    spearman: float
    ratio: float
    predicted_mean: float  # eV/Å
    observed_mean: float  # eV/Å


def per_structure_errors(
    predicted_std: np.ndarray,
    predicted_forces: np.ndarray,
    true_forces: np.ndarray,
    idx_m: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Per structure [n_structures]: the mean predicted σ_F over its atoms and the mean
    norm of its force error (both eV/Å); arguments as :func:`force_calibration`."""
    idx_m = np.asarray(idx_m)
    n = int(idx_m.max()) + 1 if len(idx_m) else 0
    if n == 0:
        return np.zeros(0), np.zeros(0)
    counts = np.maximum(np.bincount(idx_m, minlength=n), 1)
    pred = np.bincount(idx_m, weights=predicted_std, minlength=n) / counts
    err = np.linalg.norm(np.asarray(predicted_forces) - np.asarray(true_forces), axis=1)
    return pred, np.bincount(idx_m, weights=err, minlength=n) / counts


def conformal_scale(observed: np.ndarray, predicted: np.ndarray, coverage: float) -> float:
    """Split-conformal scale c for the bound |error| ≤ c σ (Vovk, Gammerman & Shafer,
    *Algorithmic Learning in a Random World*, 2005; Angelopoulos & Bates, arXiv:2107.07511):
    the ⌈(n + 1) coverage⌉-th smallest of the n ratios observed/predicted, from
    structures the committee had not seen (per-structure mean force error and mean σ_F,
    eV/Å, [n]). A fresh structure exchangeable with these then has error ≤ c σ with
    probability at least ``coverage``. Infinite when n is too small for that coverage
    (n < coverage / (1 − coverage)): no finite bound holds then. Structures with σ = 0
    and error > 0 count as infinite ratios.

    Raises ValueError for a coverage outside (0, 1) or shapes that differ.
    """
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must lie in (0, 1), got {coverage}")
    obs = np.asarray(observed, dtype=np.float64)
    pred = np.asarray(predicted, dtype=np.float64)
    if obs.shape != pred.shape or obs.ndim != 1:
        raise ValueError(f"observed {obs.shape} and predicted {pred.shape} must be [n] alike")
    keep = np.isfinite(obs) & np.isfinite(pred)
    obs, pred = obs[keep], pred[keep]
    n = len(obs)
    rank = int(np.ceil((n + 1) * coverage))
    if n == 0 or rank > n:
        return float("inf")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(
            pred > 0, obs / np.where(pred > 0, pred, 1.0), np.where(obs > 0, np.inf, 0.0)
        )
    return float(np.sort(ratio)[rank - 1])


def force_calibration(
    predicted_std: np.ndarray,
    predicted_forces: np.ndarray,
    true_forces: np.ndarray,
    idx_m: np.ndarray,
) -> Calibration:
    """Calibration of per-atom force std against per-atom force errors.

    predicted_std [n_atoms] eV/Å (committee std of each atom's force vector),
    predicted_forces and true_forces [n_atoms, 3] eV/Å, idx_m [n_atoms] structure index.
    Per structure, the predicted value is the mean of predicted_std and the observed one
    the mean norm of the force error over its atoms.
    """
    pred, obs = per_structure_errors(predicted_std, predicted_forces, true_forces, idx_m)
    n = len(pred)
    if n == 0:
        return Calibration(0, float("nan"), float("nan"), float("nan"), float("nan"))
    ratio = float(pred.mean() / obs.mean()) if obs.mean() > 0 else float("inf")
    return Calibration(n, spearman(pred, obs), ratio, float(pred.mean()), float(obs.mean()))


def element_scales(per_atom_std: np.ndarray, numbers: np.ndarray) -> dict[int, float]:
    """Each element's typical committee force spread on a reference set (its training
    structures): the median of per_atom_std [n_atoms] eV/Å over the atoms of that element
    (numbers [n_atoms]). Elements with a zero median get the smallest positive median,
    or 1 if every median is zero."""
    z = np.asarray(numbers)
    std = np.asarray(per_atom_std, dtype=np.float64)
    medians = {int(e): float(np.median(std[z == e])) for e in np.unique(z)}
    positive = [m for m in medians.values() if m > 0]
    floor = min(positive) if positive else 1.0
    return {e: (m if m > 0 else floor) for e, m in medians.items()}


def element_weighted_std(
    per_atom_std: np.ndarray,
    numbers: np.ndarray,
    idx_m: np.ndarray,
    n_structures: int,
    scales: dict[int, float],
) -> np.ndarray:
    """Per structure [n_structures], the mean over its atoms of σ_i / s_Z(i): the
    committee's force spread on each atom relative to what is typical for its element
    on the training set (``scales``, :func:`element_scales`), so that light atoms with
    large force spreads (hydrogen) do not dominate which structure counts as uncertain.
    Dimensionless; 1 is as uncertain as the training set's typical atom of each element.
    An element absent from ``scales`` gets the smallest scale known.

    Raises ValueError if ``scales`` is empty.
    """
    if not scales:
        raise ValueError("element_weighted_std needs the scale of at least one element")
    z = np.asarray(numbers)
    floor = min(scales.values())
    s = np.array([scales.get(int(e), floor) for e in z], dtype=np.float64)
    idx_m = np.asarray(idx_m)
    ratio = np.asarray(per_atom_std, dtype=np.float64) / s
    counts = np.bincount(idx_m, minlength=n_structures)
    return np.bincount(idx_m, weights=ratio, minlength=n_structures) / np.maximum(counts, 1)
