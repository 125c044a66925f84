"""The committee: several energy models whose spread measures uncertainty.

Statistics over members use the sample variance (``ddof=1``), as the adversarial-attack
paper's code does (Schwalbe-Koda, Tan & Gómez-Bombarelli, Nat. Commun. 12, 5104, 2021).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from advloop.potentials.batched import looped_energies_forces
from advloop.potentials.checkpoint import load_member, non_finite
from advloop.potentials.model import EnergyModel, Graph, ModelSpec, build_graph


@dataclass(frozen=True)
class CommitteePrediction:
    """Committee statistics for a batch of structures (numpy, eV and eV/Å).

    energy_mean, energy_std: [n_structures]; forces_mean: [n_atoms, 3];
    forces_std: [n_atoms] (√ of the summed per-component variance of each atom's force);
    forces_std_mean / forces_std_max: [n_structures], the mean and max of forces_std over
    each structure's atoms.
    """

    energy_mean: np.ndarray
    energy_std: np.ndarray
    forces_mean: np.ndarray
    forces_std: np.ndarray
    forces_std_mean: np.ndarray
    forces_std_max: np.ndarray


class Committee:
    """Members that share one :class:`ModelSpec`; evaluated on the same batch."""

    def __init__(self, members: Sequence[EnergyModel]):
        if len(members) < 2:
            raise ValueError(f"a committee needs at least 2 members, got {len(members)}")
        specs = {m.spec for m in members}
        if len(specs) != 1:
            raise ValueError(f"committee members have different model settings: {specs}")
        for k, m in enumerate(members):
            if bad := non_finite(m.state_dict()):
                raise ValueError(
                    f"committee member {k} has NaN or infinite weights "
                    f"({', '.join(bad[:3])}); its predictions would be meaningless"
                )
        self.members = list(members)
        for m in self.members:
            m.eval()
            m.requires_grad_(False)

    @classmethod
    def from_checkpoints(
        cls, paths: Sequence[str | Path], dtype: torch.dtype = torch.float32
    ) -> Committee:
        return cls([load_member(p, dtype=dtype) for p in paths])

    @property
    def spec(self) -> ModelSpec:
        return self.members[0].spec

    def __len__(self) -> int:
        return len(self.members)

    @property
    def device(self) -> torch.device:
        """Where the members' weights live (callers put their tensors there)."""
        return next(self.members[0].parameters()).device

    def energies_forces(
        self, graph: Graph, positions: torch.Tensor, create_graph: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's energies [n_members, n_structures] eV and forces
        [n_members, n_atoms, 3] eV/Å.

        With ``create_graph=True`` the forces stay differentiable with respect to
        ``positions`` (which the caller passes with ``requires_grad``), as the attack needs.
        """
        return looped_energies_forces(self.members, graph, positions, create_graph)

    def predict_arrays(
        self,
        numbers: np.ndarray,
        positions: np.ndarray,
        n_atoms: np.ndarray,
        cells: np.ndarray | None = None,
        pbc: np.ndarray | None = None,
        batch_size: int = 512,
    ) -> CommitteePrediction:
        """Committee statistics for structures given as flat arrays (see
        :class:`advloop.potentials.dataset.Arrays` for shapes)."""
        n_atoms = np.asarray(n_atoms, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(n_atoms)])
        energies, forces, idx_m = [], [], []
        for s0 in range(0, len(n_atoms), batch_size):
            s1 = min(s0 + batch_size, len(n_atoms))
            rows = slice(starts[s0], starts[s1])
            graph = build_graph(
                numbers[rows],
                positions[rows],
                n_atoms[s0:s1],
                self.spec.cutoff,
                None if cells is None else cells[s0:s1],
                None if pbc is None else pbc[s0:s1],
            )
            pos = torch.as_tensor(positions[rows], dtype=torch.float64, device=self.device)
            e, f = self.energies_forces(graph.to(self.device), pos)
            energies.append(e.detach().cpu())
            forces.append(f.detach().to(torch.float64).cpu())
            idx_m.append(graph.idx_m + s0)
        return summarise(torch.cat(energies, 1), torch.cat(forces, 1), torch.cat(idx_m))


def summarise(
    energies: torch.Tensor, forces: torch.Tensor, idx_m: torch.Tensor
) -> CommitteePrediction:
    """Committee statistics from member energies [M, S] and forces [M, A, 3]."""
    n_struct = energies.shape[1]
    f_std = forces.var(dim=0).sum(dim=-1).sqrt()  # [A]
    counts = torch.zeros(n_struct, dtype=f_std.dtype).index_add_(0, idx_m, torch.ones_like(f_std))
    f_mean = torch.zeros(n_struct, dtype=f_std.dtype).index_add_(0, idx_m, f_std) / counts
    f_max = torch.zeros(n_struct, dtype=f_std.dtype).scatter_reduce(
        0, idx_m, f_std, "amax", include_self=False
    )
    return CommitteePrediction(
        energy_mean=energies.mean(0).numpy(),
        energy_std=energies.std(0).numpy(),
        forces_mean=forces.mean(0).numpy(),
        forces_std=f_std.numpy(),
        forces_std_mean=f_mean.numpy(),
        forces_std_max=f_max.numpy(),
    )
