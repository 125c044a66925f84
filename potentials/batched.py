"""All committee members in one vectorised pass (``torch.func``), instead of a loop.

The members share one :class:`~advloop.potentials.model.ModelSpec`, so their parameters and
buffers stack into tensors with a leading member axis (``torch.func.stack_module_state``)
and ``torch.vmap`` over that axis runs one forward pass for the whole committee
(``torch.func.functional_call`` on a parameter-free copy of one member).

Per-member forces come from one backward pass: every member reads its own copy of the
positions, ``X_k`` [n_members, n_atoms, 3], so ``∂(Σ_k Σ_s E_ks)/∂X_k = ∂E_k/∂X_k``.
Since the copies are views of the caller's ``positions``, ``create_graph=True`` keeps the
forces differentiable with respect to ``positions`` (the adversarial attack needs the
gradient of the force variance; see TRAPS.md on schnetpack's ``Forces``).

schnetpack 2.0.4's PaiNN, SchNet, ``PairwiseDistances`` and ``Atomwise`` run under
``vmap`` unchanged: their data-dependent sizes (``int(idx_m[-1])``, ``atomic_numbers.shape``)
read the graph, which is shared by all members and so is not batched.

On a CPU (torch 2.13, 1–2 threads) the vmapped pass is measured *slower* than a plain
loop over the members whose backward passes each see only their own member
(:func:`looped_energies_forces`; numbers in ``benchmarks/results/committee.json``): the
batched elementwise products over pairs cost about twice the members' separate ones.
Both avoid the cost of :meth:`Committee.energies_forces`, whose M backward passes start
from rows of the stacked energies, so that each one also traverses the other M - 1
members' graphs with zero gradients.

The stacked tensors are copies: gradients with respect to the members' parameters do not
reach the members (use this for inference and attacks, not for training), and a
:class:`StackedCommittee` must be rebuilt after its members change.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch.func import functional_call, stack_module_state

from advloop.potentials.model import EnergyModel, Graph, energy_and_forces


class StackedCommittee:
    """The members' parameters and buffers stacked once, evaluated with ``torch.vmap``.

    Raises ValueError for fewer than one member, members with different model settings,
    or members whose tensors differ in dtype or device.
    """

    def __init__(self, members: Sequence[EnergyModel]):
        members = list(members)
        if not members:
            raise ValueError("cannot stack an empty list of committee members")
        specs = {m.spec for m in members}
        if len(specs) != 1:
            raise ValueError(f"committee members have different model settings: {specs}")
        kinds = {(t.dtype, t.device) for m in members for t in m.network.parameters()}
        if len(kinds) != 1:
            raise ValueError(
                f"committee members' parameters differ in dtype or device: {sorted(map(str, kinds))}; "
                "move every member to one dtype and device first"
            )
        self.n_members = len(members)
        self.params, self.buffers = stack_module_state(members)
        # stack_module_state makes fresh leaves that require grad when the members' do;
        # they are a snapshot, so never let them collect gradients.
        for tensor in self.params.values():
            tensor.requires_grad_(False)
        # A copy with no storage: functional_call supplies every tensor.
        self._base = copy.deepcopy(members[0]).to("meta")

    def energies_forces(
        self, graph: Graph, positions: torch.Tensor, create_graph: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's energies [n_members, n_structures] eV and forces
        [n_members, n_atoms, 3] eV/Å for ``positions`` [n_atoms, 3] Å.

        Same contract as :meth:`advloop.potentials.committee.Committee.energies_forces`: with
        ``create_graph=True`` the forces stay differentiable with respect to
        ``positions`` (which the caller passes with ``requires_grad``).
        """
        if not positions.requires_grad:
            positions = positions.detach().requires_grad_(True)
        # [M, A, 3] views of the same positions, one per member
        member_positions = positions.unsqueeze(0).expand(self.n_members, -1, -1)

        def energy(params, buffers, x):
            return functional_call(self._base, (params, buffers), (graph, x))

        energies = torch.vmap(energy)(self.params, self.buffers, member_positions)
        (grad,) = torch.autograd.grad(energies.sum(), member_positions, create_graph=create_graph)
        return energies, -grad


def stacked_energies_forces(
    members: Sequence[EnergyModel],
    graph: Graph,
    positions: torch.Tensor,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies [n_members, n_structures] eV and forces [n_members, n_atoms, 3] eV/Å of
    every member, evaluated together with ``torch.vmap``.

    Stacks the members' tensors on every call; build a :class:`StackedCommittee` once
    to evaluate the same members repeatedly (an attack's steps).
    """
    return StackedCommittee(members).energies_forces(graph, positions, create_graph)


def looped_energies_forces(
    members: Sequence[EnergyModel],
    graph: Graph,
    positions: torch.Tensor,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Energies [n_members, n_structures] eV and forces [n_members, n_atoms, 3] eV/Å of
    every member, in a Python loop over members: each member's forward pass and then its
    forces' backward pass, in turn (:func:`member_by_member_energies_forces`).

    Measured against :func:`single_backward_energies_forces` (all forward passes, then
    one backward pass): 2.5-3× the prediction throughput at 50-500 atoms
    (``benchmarks/results/committee.json``); an attack step (``create_graph=True``)
    costs the same within noise either way (``benchmarks/results/attack.json``). Same contract as
    :meth:`advloop.potentials.committee.Committee.energies_forces`.
    """
    return member_by_member_energies_forces(members, graph, positions, create_graph)


def member_by_member_energies_forces(
    members: Sequence[EnergyModel],
    graph: Graph,
    positions: torch.Tensor,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`looped_energies_forces`: forward and backward of one member at a time."""
    members = list(members)
    if not members:
        raise ValueError("cannot evaluate an empty list of committee members")
    results = [energy_and_forces(m, graph, positions, create_graph) for m in members]
    energies = torch.stack([e for e, _ in results])
    return (energies if create_graph else energies.detach()), torch.stack([f for _, f in results])


def single_backward_energies_forces(
    members: Sequence[EnergyModel],
    graph: Graph,
    positions: torch.Tensor,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`looped_energies_forces`: all forward passes, then one backward pass.

    Member k reads its own view ``X_k`` of ``positions``, so one backward pass from the
    summed energies traverses each member's graph once and gives ``∂E_k/∂X_k``.
    """
    members = list(members)
    if not members:
        raise ValueError("cannot evaluate an empty list of committee members")
    if not positions.requires_grad:
        positions = positions.detach().requires_grad_(True)
    member_positions = positions.unsqueeze(0).expand(len(members), -1, -1)
    energies = torch.stack([m(graph, member_positions[k]) for k, m in enumerate(members)])
    (grad,) = torch.autograd.grad(energies.sum(), member_positions, create_graph=create_graph)
    return energies, -grad
