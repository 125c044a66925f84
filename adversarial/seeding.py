"""Which labelled structures an exploration starts from.

- ``random``: a uniform sample of the dataset, without replacement;
- ``lowest_energy``: the structures lowest in energy per atom (the wells the committee
  knows best, from which the paper's attacks start);
- ``previous``: the structures the last generation added, so that exploration follows
  the frontier it found; topped up at random when there are fewer of them than seeds;
- ``md_frames``: the lowest-energy structures, which the caller then moves by a short
  committee MD at the application temperature before exploring from them (where
  dynamics at that temperature goes); here it chooses as ``lowest_energy`` does;
- ``mixed``: half ``lowest_energy``, the rest at random from the others.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["SeedPolicy", "choose_seeds"]

SeedPolicy = Literal["random", "lowest_energy", "previous", "md_frames", "mixed"]


def choose_seeds(
    energy_per_atom: np.ndarray,
    n_seeds: int,
    policy: SeedPolicy,
    rng: np.random.Generator,
    previous: np.ndarray | None = None,
) -> np.ndarray:
    """Sorted dataset indices of at most ``n_seeds`` seeds.

    energy_per_atom [n_structures] eV; ``previous``: the indices the last generation
    added (for ``policy="previous"``). Raises ValueError for an unknown policy, an empty
    dataset or ``n_seeds < 1``.
    """
    n = len(energy_per_atom)
    if n == 0:
        raise ValueError("cannot choose seeds from an empty dataset")
    if n_seeds < 1:
        raise ValueError(f"n_seeds must be at least 1, got {n_seeds}")
    k = min(n_seeds, n)
    if policy == "random":
        chosen = rng.choice(n, size=k, replace=False)
    elif policy in ("lowest_energy", "md_frames"):
        chosen = np.argsort(np.asarray(energy_per_atom), kind="stable")[:k]
    elif policy == "mixed":
        low = np.argsort(np.asarray(energy_per_atom), kind="stable")[: (k + 1) // 2]
        rest = np.setdiff1d(np.arange(n), low)
        chosen = np.concatenate([low, rng.choice(rest, size=k - len(low), replace=False)])
    elif policy == "previous":
        recent = np.unique(np.asarray(previous if previous is not None else [], dtype=np.int64))
        recent = recent[(recent >= 0) & (recent < n)]
        if len(recent) > k:
            recent = rng.choice(recent, size=k, replace=False)
        rest = np.setdiff1d(np.arange(n), recent)
        fill = rng.choice(rest, size=k - len(recent), replace=False)
        chosen = np.concatenate([recent, fill])
    else:
        raise ValueError(
            "seed policy must be 'random', 'lowest_energy', 'previous', 'md_frames' or "
            f"'mixed', got {policy!r}"
        )
    return np.sort(chosen.astype(np.int64))
