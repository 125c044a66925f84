"""The committee: several energy models whose spread measures uncertainty.

Statistics over members use the sample variance (``ddof=1``), as the adversarial-attack
paper's code does (Schwalbe-Koda, Tan & Gómez-Bombarelli, Nat. Commun. 12, 5104, 2021).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
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
    each structure's atoms; structure_features: see :meth:`Committee.predict_arrays`.
    """

    energy_mean: np.ndarray
    energy_std: np.ndarray
    forces_mean: np.ndarray
    forces_std: np.ndarray
    forces_std_mean: np.ndarray
    forces_std_max: np.ndarray
    structure_features: np.ndarray | None = None


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
        elements: np.ndarray | None = None,
    ) -> CommitteePrediction:
        """Committee statistics for structures given as flat arrays (see
        :class:`advloop.potentials.dataset.Arrays` for shapes).

        With ``elements`` (sorted atomic numbers) the prediction also holds
        ``structure_features`` [n_structures, n_elements × n_members × n_atom_basis], a
        learned descriptor of each structure from the same forward passes: per element,
        the mean over the structure's atoms of that element of each member's atom features
        (:meth:`EnergyModel.atom_features`), members side by side (each member's feature
        space is its own, so they are concatenated, not averaged)."""
        n_atoms = np.asarray(n_atoms, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(n_atoms)])
        energies, forces, idx_m, features = [], [], [], []
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
            if elements is None:
                e, f = self.energies_forces(graph.to(self.device), pos)
            else:
                with _captured_features(self.members) as captured:
                    e, f = self.energies_forces(graph.to(self.device), pos)
                atoms = torch.cat([c[-1] for c in captured], dim=1)
                features.append(
                    pool_by_element(atoms, numbers[rows], graph.idx_m, s1 - s0, elements)
                )
            energies.append(e.detach().cpu())
            forces.append(f.detach().to(torch.float64).cpu())
            idx_m.append(graph.idx_m + s0)
        pred = summarise(torch.cat(energies, 1), torch.cat(forces, 1), torch.cat(idx_m))
        if elements is not None:
            pred = replace(pred, structure_features=np.concatenate(features))
        return pred

    def structure_features(
        self,
        numbers: np.ndarray,
        positions: np.ndarray,
        n_atoms: np.ndarray,
        cells: np.ndarray | None = None,
        pbc: np.ndarray | None = None,
        elements: np.ndarray | None = None,
    ) -> np.ndarray:
        """A learned descriptor of each structure [n_structures, n_elements × n_members ×
        n_atom_basis] (see :meth:`predict_arrays`, which gives it beside the committee's
        statistics in the same pass); ``elements`` default: those present."""
        elements = np.unique(numbers) if elements is None else np.asarray(elements)
        pred = self.predict_arrays(numbers, positions, n_atoms, cells, pbc, elements=elements)
        if pred.structure_features is None:  # predict_arrays fills it when given elements
            raise RuntimeError("the committee gave no structure features")
        return pred.structure_features


@contextmanager
def _captured_features(members: Sequence[EnergyModel]) -> Iterator[list[list[torch.Tensor]]]:
    """While inside, every forward pass of member k's representation appends its
    invariant atom features [n_atoms, n_atom_basis] (detached) to ``captured[k]``: the
    features of :meth:`EnergyModel.atom_features` at no extra forward pass."""
    captured: list[list[torch.Tensor]] = [[] for _ in members]
    handles = []
    for k, member in enumerate(members):

        def hook(_module, _inputs, output, k=k):
            captured[k].append(output["scalar_representation"].detach())

        handles.append(member.network.representation.register_forward_hook(hook))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def pool_by_element(
    atom_features: torch.Tensor,
    numbers: np.ndarray,
    idx_m: torch.Tensor,
    n_structures: int,
    elements: np.ndarray,
) -> np.ndarray:
    """Per structure and element, the mean of ``atom_features`` [n_atoms, F] over that
    element's atoms, elements side by side: [n_structures, len(elements) × F] (zeros for
    an element a structure lacks)."""
    atoms = atom_features.to(torch.float64).cpu()
    z = torch.as_tensor(np.asarray(numbers))
    idx_m = idx_m.cpu()
    blocks = []
    for element in elements:
        mask = (z == int(element)).to(torch.float64)
        count = torch.zeros(n_structures, dtype=torch.float64).index_add_(0, idx_m, mask)
        total = torch.zeros(n_structures, atoms.shape[1], dtype=torch.float64).index_add_(
            0, idx_m, atoms * mask[:, None]
        )
        blocks.append(total / count.clamp_min(1.0)[:, None])
    return torch.cat(blocks, dim=1).numpy()


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
