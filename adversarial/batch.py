"""Batch-diverse selection: which candidates, labelled together, teach the committee most.

Labelling the k most uncertain candidates of a generation spends most of the batch on
near-copies of one uncertain region (the attack drives several seeds to the same
weakness). Greedy maximisation of a determinant trades uncertainty against diversity
instead: with a kernel k on a feature space and a quality q (the uncertainty), the batch
B maximises det(L_B), L = diag(q) K diag(q), the MAP of a determinantal point process
(Kulesza & Taskar, Found. Trends Mach. Learn. 5, 123, 2012). Conditioning K on the
training structures first (the posterior kernel of a Gaussian process with kernel k),
as the MaxDet selection of Holzmüller, Zaverkin, Kästner & Steinwart (JMLR 24, 164,
2023) does, makes a candidate that resembles the training set worth little however
uncertain it is. The greedy step is a pivoted Cholesky factorisation: pick the candidate
with the largest q_i² C_ii (C: the kernel conditioned on the training set and the batch
so far), then condition on it with a rank-one update.

Features are the committee's own atom features, pooled per element
(:meth:`advloop.potentials.committee.Committee.structure_features`); they are
standardised and compared with a Gaussian kernel whose length scale is the median
distance between candidates and training structures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["DiverseBatch", "greedy_diverse_batch"]

#: conditioning on more training structures than this keeps those nearest the candidates
MAX_CONDITIONING = 1000
_JITTER = 1e-6


@dataclass(frozen=True)
class DiverseBatch:
    """chosen: candidate indices in the order picked; gain [n_candidates]: q_i² C_ii
    of every candidate when the batch was complete (0 for a chosen one); novelty
    [n_candidates]: C_ii / k_ii before any pick, the share of a candidate's kernel
    variance that the training set does not explain (1: unlike anything known)."""

    chosen: list[int]
    gain: np.ndarray
    novelty: np.ndarray
    redundant: list[int]


def _standardise(train: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    both = np.concatenate([train, cand])
    mean, std = both.mean(axis=0), both.std(axis=0)
    keep = std > 1e-10
    return (train[:, keep] - mean[keep]) / std[keep], (cand[:, keep] - mean[keep]) / std[keep]


def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def greedy_diverse_batch(
    quality: np.ndarray,
    features: np.ndarray,
    train_features: np.ndarray,
    k: int,
    allowed: Callable[[int, list[int]], bool] | None = None,
    min_novelty: float = 1e-3,
) -> DiverseBatch:
    """Pick at most ``k`` candidates by greedy max-determinant, conditioned on training.

    Args:
        quality: [n_candidates] non-negative uncertainty of each candidate (its unit
            cancels: only ratios matter).
        features: [n_candidates, n_features] candidate descriptors.
        train_features: [n_train, n_features] descriptors of the training structures.
        k: the most to pick.
        allowed: ``allowed(i, chosen)`` may veto candidate i given those chosen so far
            (a geometric near-duplicate); a vetoed candidate is never picked.
        min_novelty: stop when the best remaining candidate's conditional variance is
            below this share of its prior variance (it is redundant).

    Raises:
        ValueError: on shapes that do not match, or non-finite inputs.
    """
    q = np.asarray(quality, dtype=np.float64)
    x = np.asarray(features, dtype=np.float64)
    t = np.asarray(train_features, dtype=np.float64)
    n = q.shape[0]
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"features must be [n_candidates={n}, n_features], got {x.shape}")
    if t.ndim != 2 or t.shape[1] != x.shape[1]:
        raise ValueError(
            f"train_features must be [n_train, {x.shape[1]}] like the candidates, got {t.shape}"
        )
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(x)) and np.all(np.isfinite(t))):
        raise ValueError("quality and features must be finite")
    if np.any(q < 0):
        raise ValueError("quality must be non-negative")
    if n == 0 or k < 1:
        return DiverseBatch([], np.zeros(n), np.ones(n), [])
    t, x = _standardise(t, x)
    d_ct = _sqdist(x, t) if len(t) else np.zeros((n, 0))
    if len(t) > MAX_CONDITIONING:  # those nearest any candidate carry the conditioning
        nearest = np.argsort(d_ct.min(axis=0))[:MAX_CONDITIONING]
        t, d_ct = t[nearest], d_ct[:, nearest]
    d_cc = _sqdist(x, x)
    scale = float(np.median(d_ct)) if d_ct.size else float(np.median(d_cc))
    scale = scale if scale > 1e-12 else 1.0
    c = np.exp(-d_cc / scale)  # [n, n], k_ii = 1
    if len(t):
        k_ct = np.exp(-d_ct / scale)
        k_tt = np.exp(-_sqdist(t, t) / scale) + _JITTER * np.eye(len(t))
        chol = np.linalg.cholesky(k_tt)
        w = np.linalg.solve(chol, k_ct.T)  # [n_train, n]
        c = c - w.T @ w
    novelty = np.clip(np.diag(c).copy(), 0.0, 1.0)
    gain = q**2 * np.clip(np.diag(c), 0.0, None)
    usable = np.ones(n, dtype=bool)
    chosen: list[int] = []
    redundant: list[int] = []
    while len(chosen) < k:
        scores = np.where(usable, gain, -np.inf)
        i = int(np.argmax(scores))
        if not np.isfinite(scores[i]):
            break
        usable[i] = False
        if c[i, i] < min_novelty:
            redundant.append(i)
            continue
        if allowed is not None and not allowed(i, chosen):
            continue
        chosen.append(i)
        col = c[:, i] / np.sqrt(c[i, i])
        c = c - np.outer(col, col)
        gain = q**2 * np.clip(np.diag(c), 0.0, None)
        gain[chosen] = 0.0
    return DiverseBatch(chosen, gain, novelty, redundant)
