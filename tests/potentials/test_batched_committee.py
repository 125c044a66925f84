"""The vmapped committee evaluation agrees with the looped one, gradients included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from advloop.potentials.batched import (
    StackedCommittee,
    looped_energies_forces,
    stacked_energies_forces,
)
from advloop.potentials.committee import Committee
from advloop.potentials.model import ModelSpec, build_graph
from tests.conftest import TINY_SPEC, make_member

TOL = 1e-10


def _members(n: int = 3):
    """Float64 members differing by seed, with reference energies and a force scale."""
    members = [make_member(10 + seed) for seed in range(n)]
    for k, m in enumerate(members):
        m.element_energy[1] = -13.6 + 0.1 * k
        m.element_energy[7] = -1480.0
        m.element_energy[8] = -2040.0
        m.element_energy[29] = -1.3e4
        m.scale.fill_(0.7 + 0.2 * k)
    return members


def _batch(periodic: bool = False, seed: int = 0):
    """Graph and positions [A, 3] Å for NH3 + H2O (and a periodic Cu2 cell), displaced."""
    rng = np.random.default_rng(seed)
    structures = [molecule("NH3"), molecule("H2O")]
    if periodic:
        structures.append(bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1)))
    for atoms in structures:
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
    positions = np.concatenate([a.positions for a in structures])
    graph = build_graph(
        np.concatenate([a.numbers for a in structures]),
        positions,
        np.array([len(a) for a in structures]),
        TINY_SPEC.cutoff,
        np.stack([a.cell[:] for a in structures]),
        np.stack([a.pbc for a in structures]),
    )
    return graph, torch.as_tensor(positions, dtype=torch.float64)


@pytest.mark.parametrize("evaluate", [stacked_energies_forces, looped_energies_forces])
@pytest.mark.parametrize("periodic", [False, True])
def test_energies_and_forces_match_looped_committee(periodic: bool, evaluate) -> None:
    members = _members()
    graph, positions = _batch(periodic)
    e_loop, f_loop = Committee(members).energies_forces(graph, positions)
    e_vmap, f_vmap = evaluate(members, graph, positions)
    assert e_vmap.shape == (3, graph.n_structures)
    assert f_vmap.shape == (3, len(positions), 3)
    torch.testing.assert_close(e_vmap, e_loop, rtol=0, atol=TOL)
    torch.testing.assert_close(f_vmap, f_loop, rtol=0, atol=TOL)
    # members really differ, so a shared-force bug would show
    assert (f_loop[0] - f_loop[1]).abs().max() > 1e-3
    assert not f_vmap.requires_grad


def test_force_variance_gradient_matches_looped_committee() -> None:
    """The attack's gradient: ∂ Σ var_k(F) / ∂δ at X + δ, with create_graph=True."""
    members = _members()
    graph, positions = _batch()
    committee = Committee(members)
    stacked = StackedCommittee(members)
    grads = []

    def single_backward(graph, positions, create_graph):
        return looped_energies_forces(members, graph, positions, create_graph)

    for evaluate in (committee.energies_forces, stacked.energies_forces, single_backward):
        delta = torch.full_like(positions, 0.01).requires_grad_(True)
        _, forces = evaluate(graph, positions + delta, create_graph=True)
        (grad,) = torch.autograd.grad(forces.var(dim=0).sum(), delta)
        grads.append(grad)
    assert grads[0].abs().max() > 1e-6
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=TOL)
    torch.testing.assert_close(grads[2], grads[0], rtol=0, atol=TOL)


def test_positions_without_grad_are_not_modified() -> None:
    members = _members(2)
    graph, positions = _batch()
    before = positions.clone()
    stacked_energies_forces(members, graph, positions)
    assert not positions.requires_grad
    assert torch.equal(positions, before)


def test_stacked_committee_is_a_snapshot_without_parameter_gradients() -> None:
    members = _members(2)
    for m in members:
        m.requires_grad_(True)
    stacked = StackedCommittee(members)
    graph, positions = _batch()
    e, _ = stacked.energies_forces(graph, positions, create_graph=True)
    assert all(not p.requires_grad for p in stacked.params.values())
    with torch.no_grad():
        for p in members[0].network.parameters():
            p.add_(1.0)
    e_again, _ = stacked.energies_forces(graph, positions)
    torch.testing.assert_close(e_again, e.detach(), rtol=0, atol=0)


def test_rejects_mixed_members() -> None:
    other = make_member(0, ModelSpec(n_atom_basis=8, n_interactions=1, n_rbf=4, cutoff=4.0))
    with pytest.raises(ValueError, match="different model settings"):
        StackedCommittee([make_member(0), other])
    with pytest.raises(ValueError, match="dtype or device"):
        StackedCommittee([make_member(0), make_member(1, dtype=torch.float32)])
    with pytest.raises(ValueError, match="empty"):
        StackedCommittee([])


@pytest.mark.parametrize("create_graph", [False, True])
def test_member_by_member_and_single_backward_agree(create_graph):
    from advloop.potentials.batched import (
        member_by_member_energies_forces,
        single_backward_energies_forces,
    )

    members = _members()
    graph, positions = _batch(periodic=True)
    x = torch.as_tensor(positions).requires_grad_(True)
    e1, f1 = member_by_member_energies_forces(members, graph, x, create_graph)
    e2, f2 = single_backward_energies_forces(members, graph, x, create_graph)
    torch.testing.assert_close(e1, e2, atol=TOL, rtol=0)
    torch.testing.assert_close(f1, f2, atol=TOL, rtol=0)
    if create_graph:  # the forces stay differentiable in both, with the same gradient
        (g1,) = torch.autograd.grad(f1.var(0).sum(), x, retain_graph=True)
        (g2,) = torch.autograd.grad(f2.var(0).sum(), x)
        torch.testing.assert_close(g1, g2, atol=1e-8, rtol=0)
