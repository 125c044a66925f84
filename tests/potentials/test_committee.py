"""Tests of the committee statistics and of finding a run's committee checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from advloop.flows.run_folder import RunLayout
from advloop.potentials.checkpoint import save_member
from advloop.potentials.committee import Committee
from advloop.potentials.model import EnergyModel, ModelSpec, build_graph, energy_and_forces

SPEC = ModelSpec(n_atom_basis=16, n_interactions=2, n_rbf=10, cutoff=4.0)


def _members(n: int = 3, spec: ModelSpec = SPEC) -> list[EnergyModel]:
    """Untrained float64 members that differ only in their torch seed."""
    members = []
    for seed in range(n):
        model = EnergyModel(spec, torch.Generator().manual_seed(100 + seed))
        model.network.to(torch.float64)
        model.element_energy[1] = -13.6
        model.element_energy[7] = -1480.0
        model.element_energy[8] = -2040.0
        model.eval()
        members.append(model)
    return members


def _batch(seed: int = 0, periodic: bool = False):
    """numbers, positions [A, 3] Å, n_atoms [S], cells [S, 3, 3], pbc [S, 3] for NH3, H2O,
    NH3 (and a periodic Cu2 cell) with random displacements."""
    rng = np.random.default_rng(seed)
    structures = [molecule("NH3"), molecule("H2O"), molecule("NH3")]
    if periodic:
        structures.insert(1, bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1)))
    for atoms in structures:
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
    return (
        np.concatenate([a.numbers for a in structures]),
        np.concatenate([a.positions for a in structures]),
        np.array([len(a) for a in structures]),
        np.stack([a.cell[:] for a in structures]),
        np.stack([a.pbc for a in structures]),
    )


def test_predict_arrays_statistics_match_numpy() -> None:
    members = _members()
    numbers, positions, n_atoms, _, _ = _batch()
    graph = build_graph(numbers, positions, n_atoms, SPEC.cutoff)
    energies, forces = [], []
    for m in members:
        e, f = energy_and_forces(m, graph, torch.as_tensor(positions))
        energies.append(e.detach().numpy())
        forces.append(f.numpy())
    energies, forces = np.stack(energies), np.stack(forces)  # [3, S], [3, A, 3]

    pred = Committee(members).predict_arrays(numbers, positions, n_atoms)

    np.testing.assert_allclose(pred.energy_mean, energies.mean(0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(pred.energy_std, energies.std(0, ddof=1), rtol=1e-10)
    np.testing.assert_allclose(pred.forces_mean, forces.mean(0), rtol=0, atol=1e-10)
    forces_std = np.sqrt(forces.var(0, ddof=1).sum(-1))
    assert pred.forces_std.shape == (11,)
    np.testing.assert_allclose(pred.forces_std, forces_std, rtol=1e-10)
    assert (forces_std > 1e-3).all()  # the members really disagree
    starts = np.concatenate([[0], np.cumsum(n_atoms)])
    per_structure = [forces_std[starts[s] : starts[s + 1]] for s in range(3)]
    assert pred.forces_std_mean.shape == pred.forces_std_max.shape == (3,)
    np.testing.assert_allclose(pred.forces_std_mean, [x.mean() for x in per_structure], rtol=1e-10)
    np.testing.assert_allclose(pred.forces_std_max, [x.max() for x in per_structure], rtol=1e-10)


def test_predict_arrays_independent_of_batch_size() -> None:
    committee = Committee(_members())
    numbers, positions, n_atoms, cells, pbc = _batch(seed=1, periodic=True)
    results = [
        committee.predict_arrays(numbers, positions, n_atoms, cells, pbc, batch_size=b)
        for b in (1, 512)
    ]
    for name in (
        "energy_mean",
        "energy_std",
        "forces_mean",
        "forces_std",
        "forces_std_mean",
        "forces_std_max",
    ):
        np.testing.assert_allclose(
            getattr(results[1], name),
            getattr(results[0], name),
            rtol=1e-12,
            atol=1e-12,
            err_msg=name,
        )
    # the periodic cell's images matter: without pbc the Cu2 energies change
    open_cell = committee.predict_arrays(numbers, positions, n_atoms)
    assert abs(open_cell.energy_mean[1] - results[0].energy_mean[1]) > 1e-6
    np.testing.assert_allclose(
        open_cell.energy_mean[[0, 2, 3]], results[0].energy_mean[[0, 2, 3]], rtol=0, atol=1e-10
    )


def test_committee_rejects_bad_members() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        Committee(_members(1))
    schnet = _members(
        1, ModelSpec(architecture="schnet", n_atom_basis=16, n_interactions=2, n_rbf=10, cutoff=4.0)
    )
    with pytest.raises(ValueError, match="different model settings"):
        Committee(_members(2) + schnet)


def test_committee_from_checkpoints(tmp_path: Path) -> None:
    members = _members(2)
    paths = [save_member(m, tmp_path / f"member_{k}.pt") for k, m in enumerate(members)]
    loaded = Committee.from_checkpoints(paths, dtype=torch.float64)
    numbers, positions, n_atoms, _, _ = _batch()
    a = Committee(members).predict_arrays(numbers, positions, n_atoms)
    b = loaded.predict_arrays(numbers, positions, n_atoms)
    np.testing.assert_array_equal(b.energy_mean, a.energy_mean)
    np.testing.assert_array_equal(b.forces_std, a.forces_std)


def test_committee_checkpoints_latest_generation_in_numeric_order(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path / "run")
    with pytest.raises(FileNotFoundError):
        layout.committee_checkpoints()
    (tmp_path / "run" / "committee").mkdir(parents=True)
    with pytest.raises(FileNotFoundError):
        layout.committee_checkpoints()

    for gen, members in ((0, [0, 1]), (2, [10, 2, 0, 1])):
        for k in members:
            path = layout.member_checkpoint(gen, k)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
    (layout.committee_dir(2) / "member_3.pt.tmp").write_bytes(b"")  # an unfinished save
    layout.committee_dir(5).mkdir()  # a generation whose training never wrote a member

    assert layout.trained_generations() == [0, 2]
    assert [p.name for p in layout.committee_checkpoints()] == [
        "member_0.pt",
        "member_1.pt",
        "member_2.pt",
        "member_10.pt",
    ]
    assert all(p.parent == layout.committee_dir(2) for p in layout.committee_checkpoints())
    assert [p.name for p in layout.committee_checkpoints(0)] == ["member_0.pt", "member_1.pt"]
    with pytest.raises(FileNotFoundError, match="generation 1"):
        layout.committee_checkpoints(1)


def test_structure_features_are_learned_invariant_descriptors() -> None:
    """Per-element pooled atom features of every member: invariant under rotation,
    translation and permutation of like atoms; they tell apart geometries that differ."""
    committee = Committee(_members(3))
    nh3 = molecule("NH3")
    moved = nh3.copy()
    moved.rotate(37, "x")
    moved.rotate(-71, "z")
    moved.translate([1.0, -2.0, 0.5])
    swapped = nh3[[0, 2, 1, 3]]
    stretched = nh3.copy()
    stretched.positions[1] += 0.3 * (stretched.positions[1] - stretched.positions[0])
    frames = [nh3, moved, swapped, stretched]
    feats = committee.structure_features(
        np.concatenate([a.numbers for a in frames]),
        np.concatenate([a.positions for a in frames]),
        np.array([4, 4, 4, 4]),
    )
    assert feats.shape == (4, 2 * 3 * SPEC.n_atom_basis)  # elements H, N × members × width
    np.testing.assert_allclose(feats[1], feats[0], atol=1e-5)
    np.testing.assert_allclose(feats[2], feats[0], atol=1e-5)
    assert np.linalg.norm(feats[3] - feats[0]) > 100 * np.linalg.norm(feats[1] - feats[0])
    # an element a structure lacks is a block of zeros
    h2 = molecule("H2")
    with_n = committee.structure_features(
        h2.numbers, h2.positions, np.array([2]), elements=np.array([1, 7])
    )
    assert np.all(with_n[0, 3 * SPEC.n_atom_basis :] == 0)


def test_features_of_a_prediction_are_the_members_atom_features_pooled() -> None:
    """The features captured during predict_arrays' own forward passes equal each
    member's atom_features, pooled per element by hand."""
    committee = Committee(_members(2))
    nh3 = molecule("NH3")
    frames = [nh3, nh3.copy()]
    frames[1].positions[0, 2] += 0.2
    numbers = np.concatenate([a.numbers for a in frames])
    positions = np.concatenate([a.positions for a in frames])
    pred = committee.predict_arrays(numbers, positions, np.array([4, 4]), elements=np.array([1, 7]))
    plain = committee.predict_arrays(numbers, positions, np.array([4, 4]))
    np.testing.assert_allclose(pred.forces_std, plain.forces_std)  # same prediction
    graph = build_graph(numbers, positions, np.array([4, 4]), SPEC.cutoff)
    x = torch.as_tensor(positions, dtype=torch.float64)
    expected = []
    for s in range(2):
        rows = slice(4 * s, 4 * s + 4)
        blocks = []
        for element in (1, 7):
            mask = numbers[rows] == element
            per_member = [
                m.atom_features(graph, x).detach().double().numpy()[rows][mask].mean(0)
                for m in committee.members
            ]
            blocks.append(np.concatenate(per_member))
        expected.append(np.concatenate(blocks))
    np.testing.assert_allclose(pred.structure_features, np.array(expected), rtol=1e-5, atol=1e-6)
    assert plain.structure_features is None
