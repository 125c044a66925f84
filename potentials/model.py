"""Energy models built from schnetpack, and the batched graph input they read.

A committee member is an :class:`EnergyModel`:

    E(X) = Σ_i e_ref(Z_i) + scale · Σ_i ε_θ(X)_i

where ε_θ is a schnetpack representation (PaiNN by default, Schütt, Unke & Gastegger,
ICML 2021) with an atomwise output head, e_ref are per-element reference energies fitted
to the training labels by least squares (eV) and ``scale`` (eV) is the RMS of the
training forces, so the network learns a quantity of order one. Forces are not computed
here: callers take ``-∂E/∂X`` with the ``create_graph`` they need (schnetpack's own
``Forces`` module drops the graph in ``eval()`` mode, which kills the attack gradient).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

import numpy as np
import torch
from ase.neighborlist import primitive_neighbor_list
from torch import nn

from advloop.constraints import NonNegativeInt, PositiveFloat, PositiveInt, check_fields
from advloop.potentials._schnetpack import schnetpack as spk
from advloop.potentials._schnetpack import spk_properties as K

MAX_Z = 100
Architecture = Literal["painn", "schnet", "so3net"]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of one committee member.

    cutoff in Å. ``n_atom_basis`` is the feature width, ``n_rbf`` the number of radial
    basis functions on [0, cutoff]: Gaussians (``radial_basis="gaussian"``, SchNet's) or
    sin(nπr/r_c)/r (``"bessel"``, DimeNet's and PaiNN's paper choice).
    """

    __pydantic_config__ = {"extra": "forbid", "allow_inf_nan": False}

    # the schnetpack representation
    architecture: Architecture = "painn"
    # feature width
    n_atom_basis: PositiveInt = 32
    # interaction (message-passing) blocks
    n_interactions: PositiveInt = 3
    # radial basis functions on [0, cutoff]
    n_rbf: PositiveInt = 20
    # neighbour cutoff radius
    cutoff: PositiveFloat = field(default=5.0, metadata={"unit": "Å"})
    lmax: NonNegativeInt = 2  # SO3net only: highest angular momentum of its features
    # Gaussians (SchNet's) or sin(nπr/r_c)/r (PaiNN's)
    radial_basis: Literal["gaussian", "bessel"] = "gaussian"

    def __post_init__(self) -> None:
        check_fields(self, "model")

    def to_dict(self) -> dict:
        return asdict(self)


def build_representation(spec: ModelSpec) -> nn.Module:
    """The schnetpack representation network for ``spec``."""
    rbf = spk.nn.BesselRBF if spec.radial_basis == "bessel" else spk.nn.GaussianRBF
    radial = rbf(n_rbf=spec.n_rbf, cutoff=spec.cutoff)
    cutoff_fn = spk.nn.CosineCutoff(spec.cutoff)
    if spec.architecture == "painn":
        return spk.representation.PaiNN(
            n_atom_basis=spec.n_atom_basis,
            n_interactions=spec.n_interactions,
            radial_basis=radial,
            cutoff_fn=cutoff_fn,
        )
    if spec.architecture == "so3net":
        return spk.representation.SO3net(
            n_atom_basis=spec.n_atom_basis,
            n_interactions=spec.n_interactions,
            lmax=spec.lmax,
            radial_basis=radial,
            cutoff_fn=cutoff_fn,
        )
    return spk.representation.SchNet(
        n_atom_basis=spec.n_atom_basis,
        n_interactions=spec.n_interactions,
        radial_basis=radial,
        cutoff_fn=cutoff_fn,
    )


def initialize(network: nn.Module, generator: torch.Generator) -> None:
    """Draw every weight of ``network`` from ``generator``, with the distributions
    schnetpack gives them: Glorot-uniform weights and zero biases for its ``Dense`` layers,
    N(0, 1) embeddings (the padding row zero), PyTorch's default for plain ``Linear``
    layers. Nothing process-wide is read or changed, so members built in parallel threads
    get the same weights as members built one by one.

    Raises TypeError for a parameter of a layer it does not know (a new architecture must
    say how its weights are drawn)."""
    known: set[int] = set()
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, spk.nn.Dense):
                if module.weight_init is not nn.init.xavier_uniform_ or (
                    module.bias is not None and module.bias_init is not nn.init.zeros_
                ):
                    raise TypeError(f"{module}: initializers other than schnetpack's defaults")
                nn.init.xavier_uniform_(module.weight, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, a=5**0.5, generator=generator)
                if module.bias is not None:
                    bound = 1 / module.in_features**0.5
                    module.bias.uniform_(-bound, bound, generator=generator)
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, 1.0, generator=generator)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()
            else:
                continue
            known.update(id(p) for p in module.parameters(recurse=False))
    unknown = [name for name, p in network.named_parameters() if id(p) not in known]
    if unknown:
        raise TypeError(f"no initializer for parameters {unknown[:3]}")


class EnergyModel(nn.Module):
    """One committee member: total energy (eV) of each structure in a batch. Its initial
    weights are drawn from ``generator`` (:func:`initialize`; default: seed 0)."""

    # buffers (registered in __init__): per-element reference energies [MAX_Z + 1] eV and
    # the learned energy's scale (a 0-d tensor, eV)
    element_energy: torch.Tensor
    scale: torch.Tensor

    def __init__(self, spec: ModelSpec, generator: torch.Generator | None = None):
        super().__init__()
        self.spec = spec
        self.network = spk.model.NeuralNetworkPotential(
            representation=build_representation(spec),
            input_modules=[spk.atomistic.PairwiseDistances()],
            output_modules=[spk.atomistic.Atomwise(n_in=spec.n_atom_basis, output_key="energy")],
        )
        initialize(
            self.network, generator if generator is not None else torch.Generator().manual_seed(0)
        )
        self.register_buffer("element_energy", torch.zeros(MAX_Z + 1, dtype=torch.float64))
        self.register_buffer("scale", torch.ones((), dtype=torch.float64))

    def forward(self, graph: Graph, positions: torch.Tensor) -> torch.Tensor:
        """Energies [n_structures] in eV (float64) for ``positions`` [n_atoms, 3] Å.

        ``positions`` may carry a gradient (forces, attacks); ``graph`` holds the
        connectivity that stays fixed while positions move.
        """
        learned = self.network(self._inputs(graph, positions))["energy"].to(torch.float64)
        reference = torch.zeros_like(learned).index_add_(
            0, graph.idx_m, self.element_energy[graph.numbers]
        )
        return reference + self.scale * learned

    def _inputs(self, graph: Graph, positions: torch.Tensor) -> dict[str, torch.Tensor]:
        dtype = next(self.network.parameters()).dtype
        return {
            K.Z: graph.numbers,
            K.R: positions.to(dtype),
            K.idx_i: graph.idx_i,
            K.idx_j: graph.idx_j,
            K.offsets: graph.offsets(positions.device, dtype),
            K.idx_m: graph.idx_m,
            K.n_atoms: graph.n_atoms,
        }

    def atom_features(self, graph: Graph, positions: torch.Tensor) -> torch.Tensor:
        """The representation's invariant per-atom features [n_atoms, n_atom_basis]: what
        the energy head reads, so a learned descriptor of each atom's environment (used
        to tell candidate geometries apart in the member's own feature space)."""
        inputs = self._inputs(graph, positions)
        for module in self.network.input_modules:
            inputs = module(inputs)
        return self.network.representation(inputs)["scalar_representation"]

    def fit_normalisation(
        self, numbers: np.ndarray, n_atoms: np.ndarray, energy: np.ndarray, forces: np.ndarray
    ) -> None:
        """Set per-element energies (least squares, minimum norm) and the force scale.

        numbers [n_atoms_total], n_atoms [n_structures], energy [n_structures] eV,
        forces [n_atoms_total, 3] eV/Å.
        """
        elements = np.unique(numbers)
        idx_m = np.repeat(np.arange(len(n_atoms)), n_atoms)
        counts = np.zeros((len(n_atoms), len(elements)))
        np.add.at(counts, (idx_m, np.searchsorted(elements, numbers)), 1.0)
        ref, *_ = np.linalg.lstsq(counts, energy, rcond=None)
        table = torch.zeros(MAX_Z + 1, dtype=torch.float64)
        table[torch.as_tensor(elements)] = torch.as_tensor(ref, dtype=torch.float64)
        self.element_energy.copy_(table)
        rms = float(np.sqrt(np.mean(np.square(forces)))) if len(forces) else 0.0
        self.scale.fill_(rms if rms > 1e-6 else 1.0)


@dataclass
class Graph:
    """Connectivity of a batch of structures, fixed while positions move.

    numbers [n_atoms], idx_m [n_atoms] (structure of each atom), n_atoms [n_structures],
    idx_i/idx_j [n_pairs] (pair atoms, global indices), shifts [n_pairs, 3] (integer cell
    shifts), cells [n_structures, 3, 3] Å. A pair's offset vector is ``shift @ cell``.
    """

    numbers: torch.Tensor
    idx_m: torch.Tensor
    n_atoms: torch.Tensor
    idx_i: torch.Tensor
    idx_j: torch.Tensor
    shifts: torch.Tensor
    cells: torch.Tensor

    @property
    def n_structures(self) -> int:
        return int(self.n_atoms.shape[0])

    def offsets(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Offset vectors [n_pairs, 3] Å."""
        cell_of_pair = self.cells[self.idx_m[self.idx_i]]
        return torch.einsum("pk,pkl->pl", self.shifts, cell_of_pair).to(device=device, dtype=dtype)

    def to(self, device: torch.device | str) -> Graph:
        return Graph(**{k: v.to(device) for k, v in vars(self).items()})


def build_graph(
    numbers: np.ndarray,
    positions: np.ndarray,
    n_atoms: np.ndarray,
    cutoff: float,
    cells: np.ndarray | None = None,
    pbc: np.ndarray | None = None,
) -> Graph:
    """Neighbour pairs within ``cutoff`` Å for each structure of a batch.

    numbers [n_atoms_total], positions [n_atoms_total, 3] Å, n_atoms [n_structures],
    cells [n_structures, 3, 3] Å and pbc [n_structures, 3] (default: no cell, no pbc).
    """
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    n_struct = len(n_atoms)
    cells = np.zeros((n_struct, 3, 3)) if cells is None else np.asarray(cells, dtype=np.float64)
    pbc = np.zeros((n_struct, 3), dtype=bool) if pbc is None else np.asarray(pbc, dtype=bool)
    starts = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    idx_i, idx_j, shifts = [], [], []
    for s, (start, n) in enumerate(zip(starts, n_atoms)):
        pos = positions[start : start + n]
        if pbc[s].any():
            i, j, S = primitive_neighbor_list("ijS", pbc[s], cells[s], pos, cutoff)
        else:
            d = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
            i, j = np.nonzero((d < cutoff) & ~np.eye(n, dtype=bool))
            S = np.zeros((len(i), 3), dtype=np.int64)
        idx_i.append(i + start)
        idx_j.append(j + start)
        shifts.append(S)
    return Graph(
        numbers=torch.as_tensor(np.asarray(numbers), dtype=torch.long),
        idx_m=torch.as_tensor(np.repeat(np.arange(n_struct), n_atoms), dtype=torch.long),
        n_atoms=torch.as_tensor(n_atoms, dtype=torch.long),
        idx_i=torch.as_tensor(np.concatenate(idx_i), dtype=torch.long),
        idx_j=torch.as_tensor(np.concatenate(idx_j), dtype=torch.long),
        shifts=torch.as_tensor(np.concatenate(shifts), dtype=torch.float64),
        cells=torch.as_tensor(cells, dtype=torch.float64),
    )


def energy_and_forces(
    model: nn.Module, graph: Graph, positions: torch.Tensor, create_graph: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies [n_structures] eV and forces ``-∂E/∂X`` [n_atoms, 3] eV/Å.

    ``create_graph=True`` keeps the forces differentiable (training on forces, attacks).
    ``positions`` is used as given if it already requires grad (e.g. ``X + δ``).
    """
    if not positions.requires_grad:
        positions = positions.detach().requires_grad_(True)
    energy = model(graph, positions)
    (grad,) = torch.autograd.grad(energy.sum(), positions, create_graph=create_graph)
    return energy, -grad
