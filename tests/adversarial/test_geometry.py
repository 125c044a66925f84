"""Tests for advloop.adversarial.geometry: Kabsch RMSD and geometry sanity checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule

from advloop.adversarial.geometry import check_geometry, kabsch_rmsd, pairwise_kabsch_rmsd


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random proper rotation [3, 3] from the QR decomposition of a Gaussian matrix."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def plain_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum((a - b) ** 2, axis=1))))


# A chiral tetrahedron: four distinct vertices, not related to its mirror image by a rotation.
CHIRAL = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])


def test_kabsch_rmsd_rotated_translated_copy_is_zero() -> None:
    rng = np.random.default_rng(0)
    a = molecule("CH3CH2OH").positions
    rot = random_rotation(rng)
    b = a @ rot.T + rng.normal(size=3) * 5.0
    assert plain_rmsd(a, b) > 1.0
    assert kabsch_rmsd(a, b) == pytest.approx(0.0, abs=1e-10)


def test_kabsch_rmsd_never_exceeds_plain_rmsd_and_is_symmetric() -> None:
    rng = np.random.default_rng(1)
    a = molecule("NH3").positions
    for _ in range(20):
        b = a + rng.normal(scale=0.2, size=a.shape)
        r = kabsch_rmsd(a, b)
        assert 0.0 < r <= plain_rmsd(a, b) + 1e-12
        assert kabsch_rmsd(b, a) == pytest.approx(r, abs=1e-10)


def test_kabsch_rmsd_equals_brute_force_minimum_over_rotations() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(5, 3))
    b = a @ random_rotation(rng).T + rng.normal(scale=0.3, size=a.shape)
    ac, bc = a - a.mean(0), b - b.mean(0)
    brute = min(plain_rmsd(ac @ random_rotation(rng).T, bc) for _ in range(20000))
    r = kabsch_rmsd(a, b)
    assert r <= brute + 1e-12
    assert r == pytest.approx(brute, abs=0.05)


def test_kabsch_rmsd_mirror_image_of_chiral_structure_is_positive() -> None:
    rng = np.random.default_rng(3)
    mirror = CHIRAL * np.array([-1.0, 1.0, 1.0])
    b = mirror @ random_rotation(rng).T + 1.0
    # An improper superposition would make it 0; only proper rotations are allowed.
    assert kabsch_rmsd(CHIRAL, b) > 0.1
    # A planar structure, by contrast, is superimposable on its mirror image.
    planar = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [3.0, 1.0, 0.0]])
    assert kabsch_rmsd(planar, planar * np.array([1.0, 1.0, -1.0])) == pytest.approx(0.0, abs=1e-10)
    assert kabsch_rmsd(planar, planar * np.array([-1.0, 1.0, 1.0])) == pytest.approx(0.0, abs=1e-10)


def test_kabsch_rmsd_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="same shape"):
        kabsch_rmsd(np.zeros((3, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\[n_atoms, 3\]"):
        kabsch_rmsd(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        kabsch_rmsd(np.full((3, 3), np.nan), np.zeros((3, 3)))


def test_pairwise_kabsch_rmsd_matches_scalar() -> None:
    rng = np.random.default_rng(4)
    base = molecule("CH4").positions
    a = np.stack(
        [base @ random_rotation(rng).T + rng.normal(scale=0.15, size=base.shape) for _ in range(4)]
    )
    b = np.stack(
        [base @ random_rotation(rng).T + rng.normal(scale=0.15, size=base.shape) for _ in range(3)]
    )
    # include the mirror image of a chiral, distorted structure to exercise the reflection branch
    b = np.concatenate([b, (a[0] * np.array([1.0, 1.0, -1.0]))[None]])
    pair = pairwise_kabsch_rmsd(a, b)
    assert pair.shape == (4, 4)
    expected = np.array([[kabsch_rmsd(x, y) for y in b] for x in a])
    np.testing.assert_allclose(pair, expected, atol=1e-7)
    assert pair[0, 3] > 1e-3
    # self-distances are zero
    np.testing.assert_allclose(np.diag(pairwise_kabsch_rmsd(a, a)), 0.0, atol=1e-7)


def test_pairwise_kabsch_rmsd_validates_shapes() -> None:
    with pytest.raises(ValueError, match="same number of atoms"):
        pairwise_kabsch_rmsd(np.zeros((2, 3, 3)), np.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match="n_structures"):
        pairwise_kabsch_rmsd(np.zeros((3, 3)), np.zeros((2, 3, 3)))
    assert pairwise_kabsch_rmsd(np.zeros((0, 3, 3)), np.zeros((2, 3, 3))).shape == (0, 2)


def test_check_geometry_nh3_equilibrium_is_sane() -> None:
    nh3 = molecule("NH3")
    assert check_geometry(nh3.numbers, nh3.positions) is None


def test_check_geometry_single_atom_is_sane() -> None:
    assert check_geometry(np.array([8]), np.zeros((1, 3))) is None


def test_check_geometry_close_contact_names_both_atoms() -> None:
    nh3 = molecule("NH3")
    pos = nh3.positions.copy()
    # NH3 from ase: N is atom 0, H atoms 1..3. Put H 2 at 0.3 Å from H 1.
    direction = np.array([0.0, 0.0, 1.0])
    pos[2] = pos[1] + 0.3 * direction
    reason = check_geometry(nh3.numbers, pos)
    assert reason is not None
    assert reason.startswith("atoms 1 and 2")
    assert "0.30 Å" in reason


def test_check_geometry_detached_atom_is_fragmented() -> None:
    nh3 = molecule("NH3")
    pos = nh3.positions.copy()
    pos[3] += np.array([5.0, 0.0, 0.0])
    reason = check_geometry(nh3.numbers, pos)
    assert reason is not None and reason.startswith("fragmented")
    # the same structure is connected if the bond cutoff is generous enough
    assert check_geometry(nh3.numbers, pos, max_bond_factor=10.0) is None


def test_check_geometry_chain_is_connected_through_neighbours() -> None:
    # H-H-H-H chain at 0.74 Å spacing: ends are far apart but the chain is one piece.
    pos = np.array([[0.74 * i, 0.0, 0.0] for i in range(4)])
    assert check_geometry(np.ones(4, dtype=int), pos) is None
    pos[2:] += np.array([3.0, 0.0, 0.0])
    assert check_geometry(np.ones(4, dtype=int), pos) == "fragmented (2 fragments)"


def test_check_geometry_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="positions"):
        check_geometry(np.array([1, 1]), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="max_bond_factor"):
        check_geometry(
            np.array([1, 1]), np.zeros((2, 3)), min_distance_factor=1.0, max_bond_factor=0.5
        )
    with pytest.raises(ValueError, match="min_distance_factor"):
        check_geometry(np.array([1, 1]), np.zeros((2, 3)), min_distance_factor=-0.1)
    with pytest.raises(ValueError, match="atomic numbers"):
        check_geometry(np.array([0, 1]), np.zeros((2, 3)))
    assert check_geometry(np.array([1, 1]), np.full((2, 3), np.nan)).startswith("not finite")


# --- periodic cells --------------------------------------------------------------------


def _cu_cell(rng: np.random.Generator, rattle: float = 0.05):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.positions += rng.normal(0, rattle, atoms.positions.shape)
    return atoms


def test_periodic_rmsd_ignores_translations_and_lattice_shifts():
    from advloop.adversarial.geometry import pairwise_periodic_rmsd

    rng = np.random.default_rng(0)
    a = _cu_cell(rng)
    cell = a.cell.array
    moved = a.positions + np.array([0.3, -1.1, 2.0])  # rigid translation
    moved[1] += cell[0] - cell[2]  # one atom shifted by a lattice vector
    d = pairwise_periodic_rmsd(
        a.positions[None], cell[None], moved[None], cell[None], np.ones(3, dtype=bool)
    )
    assert d[0, 0] == pytest.approx(0.0, abs=1e-10)
    # a real displacement of one atom by 0.2 Å: RMSD over 4 atoms after removing the mean
    other = a.positions.copy()
    other[2, 0] += 0.2
    step = np.zeros((4, 3))
    step[2, 0] = 0.2
    expected = np.sqrt(np.mean(np.sum((step - step.mean(0)) ** 2, axis=1)))
    d = pairwise_periodic_rmsd(
        a.positions[None], cell[None], other[None], cell[None], np.ones(3, dtype=bool)
    )
    assert d[0, 0] == pytest.approx(expected, rel=1e-10)


def test_periodic_clash_sees_images_and_skips_connectivity():
    cell = np.eye(3) * 6.0
    # atoms 0.2 Å apart only through the periodic boundary (limit 0.5 × 0.62 Å)
    z = np.array([1, 1])
    pos = np.array([[0.1, 0.0, 0.0], [5.9, 0.0, 0.0]])
    assert check_geometry(z, pos) is not None and "fragmented" in check_geometry(z, pos)
    reason = check_geometry(z, pos, cell=cell, pbc=np.ones(3, dtype=bool))
    assert reason is not None and reason.startswith("atoms 0 and 1") and "periodic" in reason
    # far apart with images: no clash, and no fragment test for a periodic cell
    pos[1] = [3.0, 3.0, 3.0]
    assert check_geometry(z, pos, cell=cell, pbc=np.ones(3, dtype=bool)) is None


def _sodalite_nh3():
    from ase.io import read

    return read(Path(__file__).resolve().parents[2] / "examples" / "structures" / "sod_nh3.cif")


def test_bonded_pairs_of_a_zeolite_with_a_guest():
    from advloop.adversarial.geometry import bonded_pairs

    atoms = _sodalite_nh3()  # Si12O24 + NH3: every Si bonded to 4 O, every O to 2 Si
    bonds = bonded_pairs(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    symbols = np.array(atoms.get_chemical_symbols())
    pairs = sorted("".join(sorted(symbols[list(b)])) for b in bonds)
    assert pairs.count("OSi") == 48 and pairs.count("HN") == 3 and len(pairs) == 51
    assert np.all(bonds[:, 0] < bonds[:, 1])
    # the same bonds with every atom wrapped into the cell, or one shifted by a lattice vector
    moved = atoms.positions.copy()
    moved[5] += atoms.cell.array[1]
    np.testing.assert_array_equal(
        bonded_pairs(atoms.numbers, moved, atoms.cell.array, atoms.pbc), bonds
    )


def test_periodic_check_finds_broken_bonds_of_the_seed():
    from advloop.adversarial.geometry import bonded_pairs

    atoms = _sodalite_nh3()
    z, cell, pbc = atoms.numbers, atoms.cell.array, atoms.pbc
    bonds = bonded_pairs(z, atoms.positions, cell, pbc)
    rng = np.random.default_rng(0)
    thermal = atoms.positions + rng.normal(0, 0.1, atoms.positions.shape)
    assert check_geometry(z, thermal, 0.5, 2.0, cell, pbc, bonds) is None
    n, h = 36, 37  # an N-H bond of the guest (summed radii 1.02 Å) stretched to 2.2 Å
    assert "".join(atoms.get_chemical_symbols()[k] for k in (n, h)) == "NH"
    unit = (atoms.positions[h] - atoms.positions[n]) / np.linalg.norm(
        atoms.positions[h] - atoms.positions[n]
    )
    torn = atoms.positions.copy()
    torn[h] = atoms.positions[n] + 2.2 * unit
    assert (
        check_geometry(z, torn, 0.5, 2.0, cell, pbc, bonds)
        == f"bond broken: atoms {n} and {h} more than 2.04 Å apart"
    )
    assert (
        check_geometry(z, torn, 0.5, 2.0, cell, pbc) is None
    )  # without the seed's bonds: clashes only
    torn[h] = (
        atoms.positions[n] + 1.9 * unit
    )  # within the limit: a stretched bond, not a broken one
    assert check_geometry(z, torn, 0.5, 2.0, cell, pbc, bonds) is None


def test_selection_deduplicates_periodic_images():
    from advloop.adversarial.selection import SelectionSettings, select_candidates

    rng = np.random.default_rng(1)
    a = _cu_cell(rng)
    cell = a.cell.array
    train = a.positions[None]
    shifted = a.positions + cell[0]  # the same structure, one lattice vector away
    new = a.positions + rng.normal(0, 0.2, a.positions.shape)
    cands = np.stack([shifted, new])
    settings = SelectionSettings(
        method="threshold", percentile=0, rmsd_threshold=0.05, max_selected=5
    )
    result = select_candidates(
        a.numbers,
        cands,
        np.array([1.0, 1.0]),
        train,
        np.array([0.1]),
        settings,
        cells=np.stack([cell, cell]),
        train_cells=cell[None],
        pbc=np.ones(3, dtype=bool),
    )
    assert list(result.selected) == [1]
    assert result.rejected[0].detail.startswith("near-duplicate of training structure")


def _dense_check(
    z: np.ndarray, pos: np.ndarray, min_distance_factor: float, max_bond_factor: float
) -> str | None:
    """check_geometry of a molecule as every pair at once, the reference for the large
    molecules that check_geometry checks through a KD-tree of nearby pairs."""
    import advloop.adversarial.geometry as geometry

    return geometry._molecule_dense(
        pos, geometry.covalent_radii[z], min_distance_factor, max_bond_factor
    )


def test_large_molecules_are_checked_like_small_ones(monkeypatch):
    """The KD-tree check of large molecules gives the same reason as comparing every pair,
    clashes (ties included: atoms listed twice), fragments and sane structures alike, on
    random molecules of 2-80 atoms checked as if they were large."""
    import advloop.adversarial.geometry as geometry

    monkeypatch.setattr(geometry, "_DENSE_MAX_ATOMS", 0)
    rng = np.random.default_rng(7)
    kinds: dict[str, int] = {}
    for trial in range(300):
        n = int(rng.integers(2, 80))
        z = rng.choice([1, 6, 7, 8, 16, 53], size=n)
        pos = rng.uniform(0.0, rng.choice([0.8, 1.5, 3.0, 6.0]) * n ** (1 / 3), size=(n, 3))
        if trial % 3 == 0:
            pos = np.round(pos, 1)  # equal distances: ties broken in the same order
        if trial % 7 == 0:
            pos[n // 2] = pos[0]
        for factors in [(0.5, 2.0), (0.0, 1.2), (0.9, 1.0), (0.3, 1e9), (0.5, 4.0)]:
            expected = _dense_check(z, pos, *factors)
            assert check_geometry(z, pos, *factors) == expected, (trial, factors)
            kind = (expected or "sane").split()[0]
            kinds[kind] = kinds.get(kind, 0) + 1
    assert set(kinds) == {"atoms", "fragmented", "sane"} and min(kinds.values()) > 100, kinds


@pytest.mark.parametrize("factors", [(0.5, 2.0), (0.5, 1e9)])
def test_a_molecule_of_10000_atoms_is_checked_in_little_memory(factors):
    """10,125 atoms (a box of 3375 water molecules, no cell) with the exploration factors
    (each molecule a fragment) and with the validation ones (bonds unbounded: one piece): a
    few MB at peak where all pairs took 2.4 GB (measured: 0.01-0.1 s). A clash is found."""
    import tracemalloc

    water = molecule("H2O")
    grid = np.stack(np.meshgrid(*[np.arange(15) * 3.1] * 3, indexing="ij"), -1).reshape(-1, 3)
    z = np.tile(water.numbers, len(grid))
    pos = (water.positions[None] + grid[:, None]).reshape(-1, 3)
    tracemalloc.start()
    try:
        sane = check_geometry(z, pos, *factors)
        pos[5000] = pos[4000] + 0.1
        clash = check_geometry(z, pos, *factors)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sane == (None if factors[1] > 100 else "fragmented (3375 fragments)")
    assert clash is not None and clash.startswith("atoms 4000 and 5000 at 0.17 Å")
    assert peak < 100e6, f"{peak / 1e6:.0f} MB at peak"
    far = np.vstack([pos[:3], pos[:3] + 50.0])
    assert check_geometry(z[:6], far, *factors) == (
        None if factors[1] > 100 else "fragmented (2 fragments)"
    )
