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
    idx_m = np.asarray(idx_m)
    n = int(idx_m.max()) + 1 if len(idx_m) else 0
    if n == 0:
        return Calibration(0, float("nan"), float("nan"), float("nan"), float("nan"))
    counts = np.bincount(idx_m, minlength=n)
    pred = np.bincount(idx_m, weights=predicted_std, minlength=n) / counts
    err = np.linalg.norm(np.asarray(predicted_forces) - np.asarray(true_forces), axis=1)
    obs = np.bincount(idx_m, weights=err, minlength=n) / counts
    ratio = float(pred.mean() / obs.mean()) if obs.mean() > 0 else float("inf")
    return Calibration(n, spearman(pred, obs), ratio, float(pred.mean()), float(obs.mean()))
