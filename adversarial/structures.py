"""The records every exploration strategy takes and returns.

A strategy (the adversarial attack, random displacement, committee molecular dynamics)
starts from :class:`Seeds` and returns :class:`Candidates`: new geometries, each with
the seed it came from and the committee's uncertainty on it, ready for selection.
Structures are stored flat, as in :class:`advloop.potentials.dataset.Arrays`: all atoms of all
structures in one array, with ``n_atoms`` giving each structure's length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from advloop.potentials.dataset import Arrays

__all__ = ["Candidates", "Seeds", "atom_offsets"]


def atom_offsets(n_atoms: np.ndarray) -> np.ndarray:
    """[n_structures + 1] offsets of each structure's first atom in flat arrays."""
    return np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64)


@dataclass(frozen=True)
class Seeds:
    """Starting geometries. numbers [n_atoms_total]; positions [n_atoms_total, 3] Å;
    n_atoms [n_seeds]; cells [n_seeds, 3, 3] Å (zeros without a cell); pbc [n_seeds, 3];
    index [n_seeds]: each seed's index in the dataset (or -1)."""

    numbers: np.ndarray
    positions: np.ndarray
    n_atoms: np.ndarray
    cells: np.ndarray
    pbc: np.ndarray
    index: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.n_atoms)
        total = int(np.sum(self.n_atoms))
        if self.numbers.shape != (total,) or self.positions.shape != (total, 3):
            raise ValueError(
                f"seeds: numbers {self.numbers.shape} and positions "
                f"{self.positions.shape} must cover n_atoms (total {total})"
            )
        if self.cells.shape != (n, 3, 3) or self.pbc.shape != (n, 3) or self.index.shape != (n,):
            raise ValueError("seeds: cells [n, 3, 3], pbc [n, 3] and index [n] must match n_atoms")

    @classmethod
    def from_arrays(cls, data: Arrays, indices: np.ndarray | None = None) -> Seeds:
        """The records ``indices`` of a dataset (all of them by default) as seeds."""
        indices = np.arange(len(data)) if indices is None else np.asarray(indices, dtype=np.int64)
        sub = data.subset(indices)
        return cls(sub.numbers, sub.positions, sub.n_atoms, sub.cell, sub.pbc, indices)

    def __len__(self) -> int:
        return len(self.n_atoms)

    @property
    def starts(self) -> np.ndarray:
        """[n_seeds + 1] atom offsets of each seed in the flat arrays."""
        return atom_offsets(self.n_atoms)

    @property
    def periodic(self) -> bool:
        return bool(np.any(self.pbc))


@dataclass(frozen=True)
class Candidates:
    """Geometries an exploration strategy proposes for labelling.

    numbers [n_atoms_total]; positions [n_atoms_total, 3] Å; n_atoms, parent (index of the
    seed each came from, into :class:`Seeds`), sigma_f_mean and sigma_f_max (eV/Å, mean
    and max over atoms of the per-atom committee force standard deviation
    ``√Σ_xyz var_members(F)``) and score (the strategy's own ranking, for example the
    adversarial objective) all [n_candidates]; cells [n_candidates, 3, 3] Å and pbc
    [n_candidates, 3]. ``stopped`` maps a seed index to why its exploration ended early
    (an unphysical geometry, a trajectory past the upper trust level).
    """

    numbers: np.ndarray
    positions: np.ndarray
    n_atoms: np.ndarray
    cells: np.ndarray
    pbc: np.ndarray
    parent: np.ndarray
    sigma_f_mean: np.ndarray
    sigma_f_max: np.ndarray
    score: np.ndarray
    stopped: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.n_atoms)
        for name in ("parent", "sigma_f_mean", "sigma_f_max", "score"):
            if np.shape(getattr(self, name)) != (n,):
                raise ValueError(f"candidates.{name} must have shape [{n}]")
        total = int(np.sum(self.n_atoms))
        if self.positions.shape != (total, 3) or self.numbers.shape != (total,):
            raise ValueError("candidates: numbers and positions must cover n_atoms")
        for name in ("positions", "sigma_f_mean", "sigma_f_max", "score"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"candidates.{name} holds NaN or inf")

    def __len__(self) -> int:
        return len(self.n_atoms)

    @property
    def starts(self) -> np.ndarray:
        return atom_offsets(self.n_atoms)

    @classmethod
    def from_atoms(
        cls,
        structures: list,
        parent,
        sigma_f_mean,
        sigma_f_max,
        score,
        stopped: dict[int, str] | None = None,
    ) -> Candidates:
        """Candidates from a list of ``ase.Atoms`` and per-candidate arrays."""
        if not structures:
            return cls.empty(stopped)
        return cls(
            np.concatenate([a.numbers for a in structures]),
            np.concatenate([a.positions for a in structures]),
            np.array([len(a) for a in structures], dtype=np.int64),
            np.stack([a.cell.array for a in structures]),
            np.stack([a.pbc for a in structures]),
            np.asarray(parent, dtype=np.int64),
            np.asarray(sigma_f_mean, dtype=float),
            np.asarray(sigma_f_max, dtype=float),
            np.asarray(score, dtype=float),
            dict(stopped or {}),
        )

    def subset(self, indices: np.ndarray | list[int]) -> Candidates:
        """The candidates ``indices``, in that order (``stopped`` as it is: it is keyed
        by seed, not by candidate)."""
        idx = np.asarray(indices, dtype=np.int64)
        starts = self.starts
        atoms = (
            np.concatenate([np.arange(starts[i], starts[i + 1]) for i in idx])
            if len(idx)
            else np.zeros(0, dtype=np.int64)
        )
        return type(self)(
            self.numbers[atoms],
            self.positions[atoms],
            self.n_atoms[idx],
            self.cells[idx],
            self.pbc[idx],
            self.parent[idx],
            self.sigma_f_mean[idx],
            self.sigma_f_max[idx],
            self.score[idx],
            dict(self.stopped),
        )

    @classmethod
    def concatenate(cls, by_source: dict[str, Candidates]) -> Candidates:
        """The candidates of several strategies run from the same seeds, one after the
        other in the order given. A seed stopped by more than one keeps each reason, each
        named by its source; with a single source, everything is as it was."""
        parts = list(by_source.values())
        if len(parts) == 1:
            return parts[0]
        stopped: dict[int, str] = {}
        for name, part in by_source.items():
            for seed, reason in part.stopped.items():
                stopped[seed] = "; ".join(filter(None, (stopped.get(seed), f"{name}: {reason}")))
        full = [p for p in parts if len(p)]
        if not full:
            return cls.empty(stopped)

        def joined(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in full])

        return cls(
            numbers=joined("numbers"),
            positions=joined("positions"),
            n_atoms=joined("n_atoms"),
            cells=joined("cells"),
            pbc=joined("pbc"),
            parent=joined("parent"),
            sigma_f_mean=joined("sigma_f_mean"),
            sigma_f_max=joined("sigma_f_max"),
            score=joined("score"),
            stopped=dict(sorted(stopped.items())),
        )

    @classmethod
    def empty(cls, stopped: dict[int, str] | None = None) -> Candidates:
        z = np.zeros(0)
        return cls(
            np.zeros(0, dtype=np.int64),
            np.zeros((0, 3)),
            np.zeros(0, dtype=np.int64),
            np.zeros((0, 3, 3)),
            np.zeros((0, 3), dtype=bool),
            np.zeros(0, dtype=np.int64),
            z,
            z,
            z,
            dict(stopped or {}),
        )
