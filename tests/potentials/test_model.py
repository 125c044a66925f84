"""Tests of the energy models: forces and their gradients against finite differences,
symmetry, neighbour lists, normalisation and spec validation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from scipy.spatial.transform import Rotation

from advloop.potentials.model import EnergyModel, ModelSpec, build_graph, energy_and_forces

ARCHITECTURES = ["painn", "schnet", "so3net"]


def _spec(architecture: str) -> ModelSpec:
    return ModelSpec(
        architecture=architecture, n_atom_basis=16, n_interactions=2, n_rbf=10, cutoff=4.0
    )


def _model(architecture: str, seed: int = 0, radial_basis: str = "gaussian") -> EnergyModel:
    """A float64 untrained model with non-trivial reference energies and scale."""
    model = EnergyModel(
        replace(_spec(architecture), radial_basis=radial_basis), torch.Generator().manual_seed(seed)
    )
    model.network.to(torch.float64)
    model.element_energy[1] = -13.6
    model.element_energy[7] = -1480.0
    model.element_energy[8] = -2040.0
    model.scale.fill_(2.5)
    model.eval()
    return model


def _two_nh3(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numbers [8], positions [8, 3] Å, n_atoms [2]: two distorted NH3 far apart."""
    rng = np.random.default_rng(seed)
    mols = [molecule("NH3"), molecule("NH3")]
    for k, m in enumerate(mols):
        m.positions += rng.normal(scale=0.1, size=m.positions.shape) + [3.0 * k, 0.0, 0.0]
    numbers = np.concatenate([m.numbers for m in mols])
    positions = np.concatenate([m.positions for m in mols])
    return numbers, positions, np.array([4, 4])


def _displaced(positions: np.ndarray, h: float, atoms_coords) -> np.ndarray:
    """Copies [2 * len(atoms_coords), n_atoms, 3]: +h then -h along each (atom, xyz)."""
    out = []
    for a, c in atoms_coords:
        for sign in (1.0, -1.0):
            x = positions.copy()
            x[a, c] += sign * h
            out.append(x)
    return np.stack(out)


def _batch_energies(model, numbers, n_atoms, configs: np.ndarray) -> np.ndarray:
    """Total energy (summed over the batch's structures) of each config [K, n_atoms, 3],
    all evaluated in one forward pass. Displacements of 1e-4 Å do not change the graph:
    every pair is intra-molecular and far inside the cutoff."""
    k = len(configs)
    flat = configs.reshape(-1, 3)
    graph = build_graph(np.tile(numbers, k), flat, np.tile(n_atoms, k), model.spec.cutoff)
    with torch.no_grad():
        e = model(graph, torch.as_tensor(flat, dtype=torch.float64)).numpy()
    return e.reshape(k, len(n_atoms)).sum(axis=1)


@pytest.mark.parametrize(
    "architecture, radial_basis", [(a, "gaussian") for a in ARCHITECTURES] + [("painn", "bessel")]
)
def test_forces_match_finite_differences(architecture: str, radial_basis: str) -> None:
    model = _model(architecture, radial_basis=radial_basis)
    numbers, positions, n_atoms = _two_nh3()
    graph = build_graph(numbers, positions, n_atoms, model.spec.cutoff)
    pos = torch.as_tensor(positions, dtype=torch.float64)
    energy, forces = energy_and_forces(model, graph, pos)
    assert energy.dtype == torch.float64 and energy.shape == (2,)
    assert forces.shape == (8, 3)
    forces = forces.numpy()
    assert np.abs(forces).max() > 1e-2  # not trivially zero

    h = 5e-5  # Å
    coords = [(a, c) for a in range(len(positions)) for c in range(3)]
    e = _batch_energies(model, numbers, n_atoms, _displaced(positions, h, coords))
    fd = -(e[0::2] - e[1::2]).reshape(len(positions), 3) / (2 * h)
    np.testing.assert_allclose(forces, fd, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_energy_invariant_and_forces_equivariant(architecture: str) -> None:
    model = _model(architecture)
    numbers, positions, n_atoms = _two_nh3(seed=1)
    rot = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
    moved = positions @ rot.T + np.array([1.5, -2.0, 0.7])

    e0, f0 = energy_and_forces(
        model, build_graph(numbers, positions, n_atoms, 4.0), torch.as_tensor(positions)
    )
    e1, f1 = energy_and_forces(
        model, build_graph(numbers, moved, n_atoms, 4.0), torch.as_tensor(moved)
    )
    # SO3net's Clebsch-Gordan tables are float32 constants: ~1e-8 eV of round-off on a
    # rotation, still far below any physical energy difference.
    tol = 1e-7 if architecture == "so3net" else 1e-9
    np.testing.assert_allclose(e1.detach().numpy(), e0.detach().numpy(), rtol=0, atol=tol)
    np.testing.assert_allclose(f1.numpy(), f0.numpy() @ rot.T, rtol=0, atol=tol)
    # and the structures are independent: energies of the batch = energies alone
    e_first, _ = energy_and_forces(
        model, build_graph(numbers[:4], positions[:4], [4], 4.0), torch.as_tensor(positions[:4])
    )
    np.testing.assert_allclose(e_first.detach().numpy(), e0.detach().numpy()[:1], rtol=0, atol=1e-9)


def test_build_graph_respects_cutoff_and_structures() -> None:
    numbers, positions, n_atoms = _two_nh3()
    h2o = molecule("H2O")
    h2o.positions += [1.0, 1.0, 0.0]  # overlaps the first NH3 in space, another structure
    numbers = np.concatenate([numbers, h2o.numbers])
    positions = np.concatenate([positions, h2o.positions])
    n_atoms = np.array([4, 4, 3])
    cutoff = 1.5
    g = build_graph(numbers, positions, n_atoms, cutoff)

    idx_m = g.idx_m.numpy()
    np.testing.assert_array_equal(idx_m, [0] * 4 + [1] * 4 + [2] * 3)
    i, j = g.idx_i.numpy(), g.idx_j.numpy()
    assert len(i) > 0
    np.testing.assert_array_equal(idx_m[i], idx_m[j])  # never across structures
    assert (i != j).all()
    d = np.linalg.norm(positions[i] - positions[j], axis=1)
    assert (d < cutoff).all()
    # every within-structure pair inside the cutoff is present, in both directions
    pairs = set(zip(i.tolist(), j.tolist()))
    expected = {
        (a, b)
        for a in range(11)
        for b in range(11)
        if a != b and idx_m[a] == idx_m[b] and np.linalg.norm(positions[a] - positions[b]) < cutoff
    }
    assert pairs == expected
    np.testing.assert_array_equal(g.shifts.numpy(), 0.0)


def test_build_graph_periodic_offsets() -> None:
    cu = bulk("Cu", "fcc", a=3.6)  # one atom, 12 neighbours at 2.55 Å through the cell
    g = build_graph(
        cu.numbers, cu.positions, [1], 3.0, cells=cu.cell[:][None], pbc=np.ones((1, 3), dtype=bool)
    )
    assert len(g.idx_i) == 12
    offsets = g.offsets(torch.device("cpu"), torch.float64).numpy()
    np.testing.assert_allclose(np.linalg.norm(offsets, axis=1), 3.6 / np.sqrt(2), atol=1e-12)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_create_graph_keeps_force_gradient(architecture: str) -> None:
    model = _model(architecture, seed=3)
    numbers, positions, n_atoms = _two_nh3(seed=2)
    graph = build_graph(numbers, positions, n_atoms, model.spec.cutoff)

    def objective(x: torch.Tensor, create_graph: bool) -> torch.Tensor:
        _, forces = energy_and_forces(model, graph, x, create_graph=create_graph)
        return forces.square().sum()

    x = torch.as_tensor(positions).clone().requires_grad_(True)
    value = objective(x, create_graph=True)
    (grad,) = torch.autograd.grad(value, x)
    assert grad.abs().max() > 1e-3

    # without create_graph the forces are detached: nothing to differentiate
    assert not objective(x, create_graph=False).requires_grad

    h = 1e-4
    for a, c in [(0, 2), (5, 0)]:
        plus, minus = positions.copy(), positions.copy()
        plus[a, c] += h
        minus[a, c] -= h
        fd = (
            objective(torch.as_tensor(plus), False).item()
            - objective(torch.as_tensor(minus), False).item()
        ) / (2 * h)
        assert grad[a, c].item() == pytest.approx(fd, rel=1e-5, abs=1e-7)


def test_fit_normalisation_single_composition() -> None:
    model = EnergyModel(_spec("painn"))
    rng = np.random.default_rng(4)
    n = 6
    numbers = np.tile(molecule("NH3").numbers, n)
    energy = rng.normal(-20.0, 0.3, size=n)
    forces = rng.normal(scale=0.7, size=(4 * n, 3))
    model.fit_normalisation(numbers, np.full(n, 4), energy, forces)

    ref = model.element_energy.numpy()
    assert ref[7] + 3 * ref[1] == pytest.approx(energy.mean(), abs=1e-10)
    assert np.count_nonzero(ref) == 2  # only N and H
    assert model.scale.item() == pytest.approx(np.sqrt(np.mean(forces**2)))


def test_fit_normalisation_two_compositions_is_exact() -> None:
    model = EnergyModel(_spec("schnet"))
    # E = 4 e_H + ... with e_H = -0.5, e_N = -50, e_O = -70 exactly
    nh3, h2o = molecule("NH3").numbers, molecule("H2O").numbers
    numbers = np.concatenate([nh3, h2o, nh3])
    energy = np.array([-51.5, -71.0, -51.5])
    model.fit_normalisation(numbers, np.array([4, 3, 4]), energy, np.zeros((11, 3)))
    ref = model.element_energy.numpy()
    assert ref[7] + 3 * ref[1] == pytest.approx(-51.5, abs=1e-10)
    assert ref[8] + 2 * ref[1] == pytest.approx(-71.0, abs=1e-10)
    assert model.scale.item() == 1.0  # zero forces: scale falls back to 1 eV


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cutoff": 0.0}, "cutoff"),
        ({"cutoff": -1.0}, "cutoff"),
        ({"cutoff": float("nan")}, "cutoff"),
        (
            {"architecture": "mace"},
            r"model\.architecture = 'mace': must be one of 'painn', 'schnet', 'so3net'",
        ),
        ({"n_interactions": 0}, "n_interactions"),
        ({"n_atom_basis": 0}, "n_atom_basis"),
        ({"n_rbf": 0}, "n_rbf"),
    ],
)
def test_model_spec_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelSpec(**kwargs)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_periodic_cell_translated_and_wrapped_gives_same_energy(architecture: str) -> None:
    from ase.build import bulk

    model = _model(architecture)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    atoms.positions += np.random.default_rng(5).normal(0, 0.05, atoms.positions.shape)
    moved = atoms.copy()
    moved.positions += np.array([1.1, -0.7, 2.3])
    moved.wrap()
    assert not np.allclose(moved.positions, atoms.positions)

    def run(a):
        graph = build_graph(
            a.numbers, a.positions, [len(a)], model.spec.cutoff, a.cell[:][None], a.pbc[None]
        )
        e, f = energy_and_forces(model, graph, torch.as_tensor(a.positions))
        return e.detach().numpy(), f.numpy()

    e0, f0 = run(atoms)
    e1, f1 = run(moved)
    tol = 1e-7 if architecture == "so3net" else 1e-8
    np.testing.assert_allclose(e1, e0, rtol=0, atol=tol)
    np.testing.assert_allclose(f1, f0, rtol=0, atol=tol)
    assert np.abs(f0).max() > 1e-3  # the rattled cell has non-trivial forces


@pytest.mark.parametrize("architecture", ["painn", "schnet", "so3net"])
def test_initial_weights_come_from_the_generator_alone(architecture: str) -> None:
    """Same generator seed, same weights, whatever torch's process-wide generator holds;
    another seed, other weights. Members built in parallel threads need no lock."""
    spec = _spec(architecture)
    torch.manual_seed(1)
    first = EnergyModel(spec, torch.Generator().manual_seed(7))
    torch.manual_seed(2)
    again = EnergyModel(spec, torch.Generator().manual_seed(7))
    other = EnergyModel(spec, torch.Generator().manual_seed(8))
    pairs = list(zip(first.state_dict().values(), again.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in pairs)
    assert not all(torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters()))
    emb = next(m for m in first.modules() if isinstance(m, torch.nn.Embedding))
    assert torch.all(emb.weight[0] == 0)  # the padding row
