"""Tests of the append-only HDF5 dataset, its crash safety, splits and hashes."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.io import read

from advloop.potentials.dataset import (
    Arrays,
    Dataset,
    DatasetError,
    Provenance,
    split_indices,
    structure_hash,
)


def _records(n: int, seed: int) -> tuple[list[Atoms], list[float], list[np.ndarray]]:
    """``n`` structures alternating NH3 / H2O / periodic Cu2, with made-up labels."""
    rng = np.random.default_rng(seed)
    structures, energies, forces = [], [], []
    for k in range(n):
        if k % 3 == 0:
            atoms = molecule("NH3")
        elif k % 3 == 1:
            atoms = molecule("H2O")
        else:
            atoms = bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1))
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        structures.append(atoms)
        energies.append(float(rng.normal(-10.0, 1.0)))
        forces.append(rng.normal(size=(len(atoms), 3)))
    return structures, energies, forces


def _provenance(n: int, generation: int, first_index: int) -> list[Provenance]:
    return [
        Provenance(
            generation=generation,
            strategy="adversarial" if k % 2 else "initial",
            level_of_theory="RKS/PBE/6-31G*",
            parent=first_index - 1 if k % 2 else -1,
        )
        for k in range(n)
    ]


def _filled(tmp_path: Path, n: int = 4, seed: int = 0):
    ds = Dataset.create(tmp_path / "dataset.h5")
    structures, energies, forces = _records(n, seed)
    prov = [Provenance(0, "initial", "RKS/PBE/6-31G*", -1) for _ in range(n)]
    ds.append(structures, energies, forces, prov)
    return ds, structures, energies, forces


def test_create_append_read_round_trip(tmp_path: Path) -> None:
    ds = Dataset.create(tmp_path / "dataset.h5")
    assert len(ds) == 0
    s1, e1, f1 = _records(4, seed=1)
    s2, e2, f2 = _records(3, seed=2)
    p1 = [Provenance(0, "initial", "RKS/PBE/6-31G*", -1) for _ in s1]
    p2 = _provenance(3, generation=1, first_index=len(s1))

    idx1 = ds.append(s1, e1, f1, p1)
    idx2 = ds.append(s2, e2, f2, p2)

    np.testing.assert_array_equal(idx1, [0, 1, 2, 3])
    np.testing.assert_array_equal(idx2, [4, 5, 6])
    reopened = Dataset(tmp_path / "dataset.h5")
    assert len(reopened) == 7
    structures, energies, forces = s1 + s2, e1 + e2, f1 + f2
    arr = reopened.arrays()
    assert len(arr) == 7
    np.testing.assert_array_equal(arr.n_atoms, [len(a) for a in structures])
    np.testing.assert_array_equal(arr.numbers, np.concatenate([a.numbers for a in structures]))
    np.testing.assert_array_equal(arr.positions, np.concatenate([a.positions for a in structures]))
    np.testing.assert_array_equal(arr.forces, np.concatenate(forces))
    np.testing.assert_array_equal(arr.energy, energies)
    np.testing.assert_array_equal(arr.cell, np.stack([a.cell[:] for a in structures]))
    np.testing.assert_array_equal(arr.pbc, np.stack([a.pbc for a in structures]))
    assert arr.pbc[2].all() and not arr.pbc[0].any()  # the Cu cell is periodic
    assert reopened.provenance() == p1 + p2
    assert reopened.hashes() == [structure_hash(a) for a in structures]


def test_to_atoms_carries_labels_and_provenance(tmp_path: Path) -> None:
    ds, structures, energies, forces = _filled(tmp_path, n=3)
    images = ds.to_atoms([2, 0])
    for atoms, i in zip(images, [2, 0]):
        np.testing.assert_array_equal(atoms.numbers, structures[i].numbers)
        np.testing.assert_array_equal(atoms.positions, structures[i].positions)
        np.testing.assert_array_equal(atoms.cell[:], structures[i].cell[:])
        np.testing.assert_array_equal(atoms.pbc, structures[i].pbc)
        assert atoms.get_potential_energy() == energies[i]
        np.testing.assert_array_equal(atoms.get_forces(), forces[i])
        assert atoms.info == {
            "index": i,
            "generation": 0,
            "strategy": "initial",
            "parent": -1,
            "level_of_theory": "RKS/PBE/6-31G*",
        }


def test_export_extxyz_round_trip(tmp_path: Path) -> None:
    ds, structures, energies, forces = _filled(tmp_path, n=4)
    path = tmp_path / "all.extxyz"
    assert ds.export_extxyz(path) == 4
    images = read(str(path), ":")
    assert len(images) == 4
    for atoms, ref, e, f in zip(images, structures, energies, forces):
        np.testing.assert_array_equal(atoms.numbers, ref.numbers)
        np.testing.assert_allclose(atoms.positions, ref.positions, atol=1e-7)
        assert atoms.get_potential_energy() == pytest.approx(e, abs=1e-8)
        np.testing.assert_allclose(atoms.get_forces(), f, atol=1e-7)
        assert atoms.info["strategy"] == "initial"


_INVALID_APPEND_MESSAGES = {
    "lengths": "they must match",
    "force_shape": r"forces of structure 1 have shape \(2, 3\), expected \(3, 3\)",
    "force_columns": r"forces of structure 1 have shape \(3, 4\), expected \(3, 3\)",
    "nan_energy": "the energy of structure 1 is nan",
    "vector_energy": r"the energy of structure 1 has shape \(2,\), expected a scalar",
    "text_energy": "the energy of structure 1 is not a real number",
    "nan_force": "1 force component of structure 0 is not finite",
    "nan_position": "1 position component of structure 1 is not finite",
    "inf_cell": "the cell of structure 0 is not finite",
    "parent_forward": "provenance parent",
    "parent_self": "provenance parent",
    "parent_below_minus_one": "provenance parent",
}


@pytest.mark.parametrize(
    "bad",
    [
        "lengths",
        "force_shape",
        "force_columns",
        "nan_energy",
        "vector_energy",
        "text_energy",
        "nan_force",
        "nan_position",
        "inf_cell",
        "parent_forward",
        "parent_self",
        "parent_below_minus_one",
    ],
)
def test_invalid_append_raises_and_leaves_file_unchanged(tmp_path: Path, bad: str) -> None:
    ds, *_ = _filled(tmp_path, n=2)
    before = Path(ds.path).read_bytes()
    arr_before = ds.arrays()
    structures, energies, forces = _records(2, seed=5)
    prov = [Provenance(1, "adversarial", "RKS/PBE/6-31G*", 0) for _ in structures]
    if bad == "lengths":
        energies = energies[:1]
    elif bad == "force_shape":
        forces[1] = forces[1][:-1]
    elif bad == "force_columns":
        forces[1] = np.zeros((len(structures[1]), 4))
    elif bad == "nan_energy":
        energies[1] = float("nan")
    elif bad == "vector_energy":
        energies[1] = np.array([-1.0, -2.0])
    elif bad == "text_energy":
        energies[1] = "-1.0"
    elif bad == "nan_force":
        forces[0][0, 0] = np.inf
    elif bad == "nan_position":
        structures[1].positions[2, 1] = np.nan
    elif bad == "inf_cell":
        structures[0].cell[0, 0] = np.inf
    elif bad == "parent_forward":
        # record 3 (the second new one) may point at 2 (the first new one) but not at 3
        prov[0] = Provenance(1, "adversarial", "RKS/PBE/6-31G*", 3)
    elif bad == "parent_self":
        prov[1] = Provenance(1, "adversarial", "RKS/PBE/6-31G*", 3)
    elif bad == "parent_below_minus_one":
        prov[1] = Provenance(1, "adversarial", "RKS/PBE/6-31G*", -2)

    with pytest.raises(ValueError, match=_INVALID_APPEND_MESSAGES[bad]):
        ds.append(structures, energies, forces, prov)

    assert len(Dataset(ds.path)) == 2
    arr_after = ds.arrays()
    np.testing.assert_array_equal(arr_after.positions, arr_before.positions)
    np.testing.assert_array_equal(arr_after.energy, arr_before.energy)
    assert Path(ds.path).read_bytes() == before


def test_parent_may_point_to_earlier_record_of_same_append(tmp_path: Path) -> None:
    ds, *_ = _filled(tmp_path, n=2)
    structures, energies, forces = _records(2, seed=5)
    prov = [Provenance(1, "adversarial", "x", 1), Provenance(1, "adversarial", "x", 2)]
    np.testing.assert_array_equal(ds.append(structures, energies, forces, prov), [2, 3])
    assert [p.parent for p in ds.provenance()] == [-1, -1, 1, 2]


def _write_garbage_past_commit(path: Path, n_rows: int, n_atom_rows: int) -> None:
    """What a process killed mid-append leaves: rows written, commit marker not raised."""
    with h5py.File(path, "a") as f:
        for ds in f["atoms"].values():
            old = ds.shape[0]
            ds.resize(old + n_atom_rows, axis=0)
            if ds.dtype.kind in "fi":
                ds[old:] = 99
        for name, ds in f["structures"].items():
            old = ds.shape[0]
            ds.resize(old + n_rows, axis=0)
            if name in ("strategy", "level_of_theory", "hash"):
                ds[old:] = ["garbage"] * n_rows
            elif ds.dtype.kind in "fi":
                ds[old:] = 7


def test_rows_past_commit_marker_are_ignored_and_overwritten(tmp_path: Path) -> None:
    ds, structures, energies, forces = _filled(tmp_path, n=3)
    committed = ds.arrays()
    _write_garbage_past_commit(ds.path, n_rows=2, n_atom_rows=7)

    reopened = Dataset(ds.path)
    assert len(reopened) == 3
    arr = reopened.arrays()
    for name in ("numbers", "positions", "forces", "energy", "n_atoms", "cell", "pbc"):
        np.testing.assert_array_equal(getattr(arr, name), getattr(committed, name))
    assert len(reopened.provenance()) == 3 and len(reopened.hashes()) == 3
    assert len(reopened.to_atoms()) == 3

    s2, e2, f2 = _records(2, seed=9)
    p2 = [Provenance(1, "adversarial", "RKS/PBE/6-31G*", 0) for _ in s2]
    np.testing.assert_array_equal(reopened.append(s2, e2, f2, p2), [3, 4])
    arr = Dataset(ds.path).arrays()
    assert len(arr) == 5
    all_structures = structures + s2
    np.testing.assert_array_equal(arr.numbers, np.concatenate([a.numbers for a in all_structures]))
    np.testing.assert_array_equal(
        arr.positions, np.concatenate([a.positions for a in all_structures])
    )
    np.testing.assert_array_equal(arr.forces, np.concatenate(forces + f2))
    np.testing.assert_array_equal(arr.energy, energies + e2)
    assert [p.strategy for p in reopened.provenance()] == ["initial"] * 3 + ["adversarial"] * 2
    assert reopened.hashes()[3:] == [structure_hash(a) for a in s2]
    for atoms, ref in zip(reopened.to_atoms([3, 4]), s2):
        np.testing.assert_array_equal(atoms.positions, ref.positions)


def test_failure_mid_append_commits_nothing(tmp_path: Path, monkeypatch) -> None:
    # The append dies after the atom rows are written (disk full, a kill): no record of
    # it may become visible, and the next append must work.
    import advloop.potentials.dataset as dataset_module

    ds, structures, energies, forces = _filled(tmp_path, n=3)
    real_write_rows = dataset_module._write_rows

    def write_atoms_then_fail(group, rows, start):
        if group.name == "/structures":
            raise OSError("simulated crash")
        real_write_rows(group, rows, start)

    monkeypatch.setattr(dataset_module, "_write_rows", write_atoms_then_fail)
    s2, e2, f2 = _records(2, seed=9)
    p2 = [Provenance(1, "adversarial", "x", -1) for _ in s2]
    with pytest.raises(OSError, match="simulated crash"):
        ds.append(s2, e2, f2, p2)
    monkeypatch.undo()

    assert len(Dataset(ds.path)) == 3
    arr = ds.arrays()
    np.testing.assert_array_equal(arr.numbers, np.concatenate([a.numbers for a in structures]))
    np.testing.assert_array_equal(ds.append(s2, e2, f2, p2), [3, 4])
    np.testing.assert_array_equal(ds.arrays().subset([3, 4]).forces, np.concatenate(f2))


def test_uncommitted_atom_rows_are_neither_read_nor_built_on(tmp_path: Path) -> None:
    # A kill after a record's rows were written but before n_structures was raised: the
    # atom count comes from committed structure rows, so neither reading nor the next
    # append may see the uncommitted atoms.
    ds, structures, energies, forces = _filled(tmp_path, n=3)
    committed = ds.arrays()
    _write_garbage_past_commit(ds.path, n_rows=1, n_atom_rows=4)

    arr = Dataset(ds.path).arrays()
    np.testing.assert_array_equal(arr.numbers, committed.numbers)
    np.testing.assert_array_equal(arr.positions, committed.positions)
    s2, e2, f2 = _records(1, seed=9)
    ds.append(s2, e2, f2, [Provenance(1, "adversarial", "x", -1)])
    arr = ds.arrays()
    assert arr.n_atoms.sum() == len(arr.numbers)
    np.testing.assert_array_equal(arr.subset([3]).positions, s2[0].positions)
    np.testing.assert_array_equal(ds.to_atoms([3])[0].get_forces(), f2[0])


def test_non_dataset_files_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.arange(3))
    with pytest.raises(DatasetError, match="not an advloop dataset"):
        Dataset(other)
    with pytest.raises(DatasetError, match="no dataset"):
        Dataset(tmp_path / "missing.h5")
    Dataset.create(tmp_path / "d.h5")
    with pytest.raises(DatasetError, match="already exists"):
        Dataset.create(tmp_path / "d.h5")
    assert len(Dataset.create(tmp_path / "d.h5", exist_ok=True)) == 0


def test_split_indices_reproducible_disjoint_complete() -> None:
    for n, frac in [(10, 0.2), (7, 0.5), (1, 0.5), (2, 0.9), (3, 0.0)]:
        train, val = split_indices(n, frac, np.random.default_rng(42))
        train2, val2 = split_indices(n, frac, np.random.default_rng(42))
        np.testing.assert_array_equal(train, train2)
        np.testing.assert_array_equal(val, val2)
        assert len(np.intersect1d(train, val)) == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(n))
        assert len(train) >= 1
    train, val = split_indices(10, 0.2, np.random.default_rng(42))
    assert len(val) == 2
    others = [tuple(split_indices(20, 0.5, np.random.default_rng(s))[1]) for s in range(5)]
    assert len(set(others)) > 1  # the seed matters
    with pytest.raises(ValueError):
        split_indices(10, 1.0, np.random.default_rng(0))


def test_arrays_subset_picks_atoms_of_mixed_sizes() -> None:
    nh3, h2o = molecule("NH3"), molecule("H2O")
    mols = [nh3, h2o, nh3.copy(), h2o.copy()]
    for k, m in enumerate(mols):
        m.positions += 10.0 * k  # every atom row unique
    rng = np.random.default_rng(3)
    forces = [rng.normal(size=(len(m), 3)) for m in mols]
    arr = Arrays(
        numbers=np.concatenate([m.numbers for m in mols]),
        positions=np.concatenate([m.positions for m in mols]),
        forces=np.concatenate(forces),
        energy=np.array([0.0, 1.0, 2.0, 3.0]),
        n_atoms=np.array([len(m) for m in mols]),
        cell=np.zeros((4, 3, 3)),
        pbc=np.zeros((4, 3), dtype=bool),
    )
    np.testing.assert_array_equal(arr.atom_start, [0, 4, 7, 11])
    sub = arr.subset([3, 0, 1])
    assert len(sub) == 3
    np.testing.assert_array_equal(sub.energy, [3.0, 0.0, 1.0])
    np.testing.assert_array_equal(sub.n_atoms, [3, 4, 3])
    for name in ("numbers", "positions"):
        np.testing.assert_array_equal(
            getattr(sub, name), np.concatenate([getattr(mols[i], name) for i in (3, 0, 1)])
        )
    np.testing.assert_array_equal(sub.forces, np.concatenate([forces[i] for i in (3, 0, 1)]))
    np.testing.assert_array_equal(sub.subset([1]).numbers, nh3.numbers)
    empty = arr.subset([])
    assert len(empty) == 0 and empty.positions.shape == (0, 3)


def test_structure_hash_resolution() -> None:
    atoms = molecule("NH3")
    atoms.positions += 0.123456  # away from rounding boundaries at 1e-6 Å
    moved = atoms.copy()
    moved.positions[1, 2] += 1e-3
    noisy = atoms.copy()
    noisy.positions += np.random.default_rng(0).uniform(-1e-9, 1e-9, size=(4, 3))
    assert structure_hash(moved) != structure_hash(atoms)
    assert structure_hash(noisy) == structure_hash(atoms)
    assert structure_hash(atoms.copy()) == structure_hash(atoms)
    swapped = atoms.copy()
    swapped.numbers[0] = 6
    assert structure_hash(swapped) != structure_hash(atoms)
    periodic = atoms.copy()
    periodic.cell = np.eye(3) * 10.0
    periodic.pbc = True
    assert structure_hash(periodic) != structure_hash(atoms)
