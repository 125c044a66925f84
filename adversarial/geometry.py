"""Geometry comparisons and sanity checks for candidate structures.

Adversarial attacks (Schwalbe-Koda, Tan & Gómez-Bombarelli, Nat. Commun. 12, 5104
(2021)) displace atoms to maximise committee disagreement; some of the structures they
produce are unphysical (atoms on top of each other, a molecule that has flown apart) or
are copies of each other. This module holds the pure-numpy tools that selection uses
to reject those before DFT labelling:

- :func:`kabsch_rmsd` and :func:`pairwise_kabsch_rmsd`: RMSD after optimal
  superposition (translation + proper rotation), W. Kabsch, Acta Cryst. A32, 922
  (1976); A34, 827 (1978).
- :func:`check_geometry`: close contacts and connectivity from covalent radii
  (``ase.data.covalent_radii``); for periodic cells, the bonds of the structure a
  candidate started from (:func:`bonded_pairs`) must hold.

Units: positions and distances in Å. RMSDs are for molecules; see
:func:`periodic_rmsd` for cells.
"""

from __future__ import annotations

import math

import numpy as np
from ase.data import covalent_radii
from ase.neighborlist import primitive_neighbor_list

__all__ = [
    "BONDED_FACTOR",
    "bonded_pairs",
    "bonds_per_seed",
    "check_geometry",
    "kabsch_rmsd",
    "pairwise_kabsch_rmsd",
    "pairwise_periodic_rmsd",
]

# Upper bound on the number of 3×3 covariance matrices held at once by
# pairwise_kabsch_rmsd (each block costs ~ 9 × 8 bytes × this, plus SVD workspace).
_MAX_MATRICES_PER_BLOCK = 1 << 18

# Pairs closer than this × their summed covalent radii are the bonds of a starting
# structure (Si-O in silica 0.91, N-H 1.0, C-C 1.0; the nearest non-bonded pair in a
# silicate framework, Si...Si, 1.38).
BONDED_FACTOR = 1.25

# Up to this many atoms, a molecule's distances are computed for every pair at once
# ([n, n, 3] float64, 6 MB at 512 atoms): the fastest way for the small molecules an attack
# checks at every step. Larger molecules are checked through a KD-tree of the pairs within
# reach of a clash or a bond (10,000 atoms: well under 100 MB, instead of 2.4 GB).
_DENSE_MAX_ATOMS = 512


def _as_structure(x: np.ndarray, name: str) -> np.ndarray:
    """Return ``x`` as a float64 array [n_atoms, 3], raising ValueError otherwise."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must have shape [n_atoms, 3], got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} has no atoms; RMSD needs at least one atom")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf coordinates")
    return arr


def _as_structures(x: np.ndarray, name: str) -> np.ndarray:
    """Return ``x`` as a float64 array [n_structures, n_atoms, 3], raising ValueError otherwise."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{name} must have shape [n_structures, n_atoms, 3], got {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has no atoms; RMSD needs at least one atom")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf coordinates")
    return arr


def kabsch_rmsd(a: np.ndarray, b: np.ndarray) -> float:
    """RMSD between two structures after optimal translation and proper rotation.

    Both structures are centred on their centroids, then ``a`` is rotated onto ``b``
    with the Kabsch rotation. Only proper rotations (det = +1) are allowed: if the
    optimal orthogonal matrix would be a reflection, the smallest singular direction
    is flipped, so a structure and its mirror image have RMSD > 0 unless achiral.

    Args:
        a: positions [n_atoms, 3], Å.
        b: positions [n_atoms, 3], Å, same atom ordering as ``a``.

    Returns:
        The minimum RMSD over rigid motions, Å, ``sqrt(mean_i |R a_i + t - b_i|^2)``.

    Raises:
        ValueError: if the shapes differ or are not [n_atoms, 3], if there are no
            atoms, or if any coordinate is NaN or inf.
    """
    a_arr = _as_structure(a, "a")
    b_arr = _as_structure(b, "b")
    if a_arr.shape != b_arr.shape:
        raise ValueError(
            f"a and b must have the same shape (same atoms, same order); got {a_arr.shape} and {b_arr.shape}"
        )
    p = a_arr - a_arr.mean(axis=0)
    q = b_arr - b_arr.mean(axis=0)
    # Covariance H = P^T Q = U S V^T; the optimal rotation applied to row vectors is
    # p @ R with R = U diag(1, 1, d) V^T, where d = sign(det(U V^T)) excludes reflections.
    u, _, vt = np.linalg.svd(p.T @ q)
    d = 1.0 if np.linalg.det(u @ vt) >= 0.0 else -1.0
    rotation = u @ np.diag([1.0, 1.0, d]) @ vt
    diff = p @ rotation - q
    return float(np.sqrt(np.mean(np.sum(diff * diff, axis=1))))


def pairwise_kabsch_rmsd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kabsch RMSD between every structure of ``a`` and every structure of ``b``.

    Vectorised: all 3×3 covariance matrices are formed with one tensor contraction
    and their singular values come from one batched ``np.linalg.svd``. The RMSD follows
    from the singular values without forming rotations,
    ``msd = (|P|^2 + |Q|^2 - 2 (s1 + s2 + d s3)) / n_atoms`` with
    ``d = sign(det(P^T Q))`` (proper rotations only). Work is split into blocks of
    rows of ``a`` to bound memory; there is no per-pair Python loop.

    Args:
        a: positions [n_a, n_atoms, 3], Å.
        b: positions [n_b, n_atoms, 3], Å, same atoms in the same order as ``a``.

    Returns:
        RMSD matrix [n_a, n_b], Å; entry ``[i, j]`` equals ``kabsch_rmsd(a[i], b[j])``.

    Raises:
        ValueError: if the arrays are not [n, n_atoms, 3], have different n_atoms,
            have no atoms, or contain NaN or inf.
    """
    a_arr = _as_structures(a, "a")
    b_arr = _as_structures(b, "b")
    if a_arr.shape[1] != b_arr.shape[1]:
        raise ValueError(
            f"a and b must have the same number of atoms in the same order; "
            f"got {a_arr.shape[1]} and {b_arr.shape[1]}"
        )
    n_a, n_atoms, _ = a_arr.shape
    n_b = b_arr.shape[0]
    out = np.empty((n_a, n_b), dtype=np.float64)
    if n_a == 0 or n_b == 0:
        return out

    p = a_arr - a_arr.mean(axis=1, keepdims=True)  # [n_a, n_atoms, 3]
    q = b_arr - b_arr.mean(axis=1, keepdims=True)  # [n_b, n_atoms, 3]
    p_sq = np.einsum("aik,aik->a", p, p)  # [n_a]
    q_sq = np.einsum("bik,bik->b", q, q)  # [n_b]

    block = max(1, _MAX_MATRICES_PER_BLOCK // n_b)
    for start in range(0, n_a, block):
        stop = min(start + block, n_a)
        # H[i, j] = P_i^T Q_j, [rows, n_b, 3, 3]
        h = np.tensordot(p[start:stop], q, axes=([1], [1])).transpose(0, 2, 1, 3)
        s = np.linalg.svd(h, compute_uv=False)  # [rows, n_b, 3], descending
        # det(H) = det(U) det(V^T) prod(s): its sign is the sign of det(U V^T). When
        # det(H) ~ 0 the smallest singular value is ~ 0, so the choice of d is moot.
        d = np.where(np.linalg.det(h) < 0.0, -1.0, 1.0)
        trace = s[..., 0] + s[..., 1] + d * s[..., 2]
        msd = (p_sq[start:stop, None] + q_sq[None, :] - 2.0 * trace) / n_atoms
        out[start:stop] = np.sqrt(np.clip(msd, 0.0, None))
    return out


def validate_factors(min_distance_factor: float, max_bond_factor: float) -> None:
    """Raise ValueError unless 0 <= min_distance_factor < max_bond_factor, both finite."""
    for name, value in (
        ("min_distance_factor", min_distance_factor),
        ("max_bond_factor", max_bond_factor),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(float(value)) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if max_bond_factor <= min_distance_factor:
        raise ValueError(
            f"max_bond_factor ({max_bond_factor}) must be larger than min_distance_factor "
            f"({min_distance_factor}); otherwise every multi-atom molecule is rejected"
        )


def _count_fragments(adjacency: np.ndarray) -> int:
    """Number of connected components of a boolean adjacency matrix [n, n]."""
    n = adjacency.shape[0]
    unvisited = np.ones(n, dtype=bool)
    n_fragments = 0
    while unvisited.any():
        n_fragments += 1
        reached = np.zeros(n, dtype=bool)
        reached[np.argmax(unvisited)] = True
        while True:
            grown = reached | adjacency[reached].any(axis=0)
            if np.array_equal(grown, reached):
                break
            reached = grown
        unvisited &= ~reached
    return n_fragments


def check_geometry(
    numbers: np.ndarray,
    positions: np.ndarray,
    min_distance_factor: float = 0.5,
    max_bond_factor: float = 2.0,
    cell: np.ndarray | None = None,
    pbc: np.ndarray | None = None,
    bonds: np.ndarray | None = None,
) -> str | None:
    """Check that a structure is physically sane: no clashes and, for a molecule, in one piece.

    With ``r_ij = r_cov(Z_i) + r_cov(Z_j)`` from ``ase.data.covalent_radii`` (Å):

    - clash: some pair is closer than ``min_distance_factor * r_ij``; the reason names
      the pair with the smallest ratio ``distance / r_ij``, e.g.
      ``"atoms 0 and 2 at 0.31 Å (limit 0.37 Å)"``.
    - fragmented: the graph with an edge wherever the distance is below
      ``max_bond_factor * r_ij`` is not connected, e.g. ``"fragmented (2 fragments)"``.
      A single atom is connected.

    With a ``cell`` [3, 3] Å and ``pbc`` [3] that is periodic in some direction, clashes
    are looked for between periodic images too (minimum-image distances) and the
    connectivity test is replaced: a framework is bonded through its images and a guest
    molecule in it is a fragment of its own, so fragments say nothing. Instead, given the
    ``bonds`` of the structure the candidate started from (:func:`bonded_pairs`), each
    must still be shorter than ``max_bond_factor * r_ij`` (through any image): a torn
    framework or a dissociated guest is
    ``"bond broken: atoms 3 and 17 more than 3.54 Å apart"``.

    Args:
        numbers: atomic numbers [n_atoms].
        positions: Cartesian positions [n_atoms, 3], Å.
        min_distance_factor: fraction of the summed covalent radii below which two
            atoms clash, dimensionless, >= 0.
        max_bond_factor: multiple of the summed covalent radii below which two atoms
            count as connected, dimensionless, > ``min_distance_factor``.
        cell, pbc: the periodic cell [3, 3] Å (rows are lattice vectors) and its
            periodic directions [3]; None: a molecule.
        bonds: pairs [n_bonds, 2] that must stay bonded (periodic cells only).

    A molecule of more than 512 atoms is checked through a KD-tree of the pairs within
    reach of a clash or a bond, with the same result as comparing every pair (memory grows
    with the atoms, not with their pairs); a cell through ASE's neighbour list.

    Returns:
        None if the geometry is sane, else a short reason. Reasons start with
        ``"not finite"``, ``"atoms "``, ``"fragmented"`` or ``"bond broken"``.

    Raises:
        ValueError: if the shapes are inconsistent, there are no atoms, an atomic
            number is not a known element, or the factors are invalid.
    """
    validate_factors(min_distance_factor, max_bond_factor)
    z = np.asarray(numbers)
    if z.ndim != 1:
        raise ValueError(f"numbers must have shape [n_atoms], got {z.shape}")
    if z.size and not np.issubdtype(z.dtype, np.integer):
        if not np.all(np.mod(z, 1) == 0):
            raise ValueError(f"numbers must be integer atomic numbers, got {z!r}")
        z = z.astype(np.int64)
    if np.any(z < 1) or np.any(z >= len(covalent_radii)):
        raise ValueError(
            f"numbers must be atomic numbers in 1..{len(covalent_radii) - 1}, got {z!r}"
        )
    pos = np.asarray(positions, dtype=np.float64)
    if pos.shape != (z.shape[0], 3):
        raise ValueError(
            f"positions must have shape [n_atoms, 3] = ({z.shape[0]}, 3), got {pos.shape}"
        )
    n_atoms = z.shape[0]
    if n_atoms == 0:
        raise ValueError("the structure has no atoms")
    if not np.all(np.isfinite(pos)):
        return "not finite (positions contain NaN or inf)"
    if n_atoms == 1:
        return None

    radii = covalent_radii[z]  # [n_atoms], Å
    if pbc is not None and np.any(pbc):
        cell, pbc = np.asarray(cell, dtype=np.float64), np.asarray(pbc, dtype=bool)
        return _periodic_clash(z, pos, cell, pbc, radii, min_distance_factor) or _broken_bond(
            pos, cell, pbc, radii, max_bond_factor, bonds
        )
    if n_atoms <= _DENSE_MAX_ATOMS:
        return _molecule_dense(pos, radii, min_distance_factor, max_bond_factor)
    return _molecule_sparse(pos, radii, min_distance_factor, max_bond_factor)


def _clash_reason(i: int, j: int, distance: float, limit: float) -> str:
    return f"atoms {i} and {j} at {distance:.2f} Å (limit {limit:.2f} Å)"


def _molecule_dense(
    pos: np.ndarray, radii: np.ndarray, min_distance_factor: float, max_bond_factor: float
) -> str | None:
    """:func:`check_geometry` of a molecule from all its distances at once."""
    n_atoms = len(pos)
    r_sum = radii[:, None] + radii[None, :]  # [n_atoms, n_atoms], Å
    distances = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)  # [n_atoms, n_atoms], Å
    iu, ju = np.triu_indices(n_atoms, k=1)
    ratio = distances[iu, ju] / r_sum[iu, ju]
    worst = int(np.argmin(ratio))
    if ratio[worst] < min_distance_factor:
        i, j = int(iu[worst]), int(ju[worst])
        return _clash_reason(i, j, distances[i, j], min_distance_factor * r_sum[i, j])

    adjacency = distances < max_bond_factor * r_sum
    n_fragments = _count_fragments(adjacency)
    if n_fragments > 1:
        return f"fragmented ({n_fragments} fragments)"
    return None


def _molecule_sparse(
    pos: np.ndarray, radii: np.ndarray, min_distance_factor: float, max_bond_factor: float
) -> str | None:
    """:func:`check_geometry` of a large molecule from the pairs within reach of a clash or
    a bond only (a KD-tree), with the same result as :func:`_molecule_dense`: the same
    distance and ratio arithmetic on each pair, ties broken in the same (i, j) order."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n_atoms = len(pos)
    tree = cKDTree(pos)
    if min_distance_factor > 0:
        i, j = _pairs_in_reach(tree, min_distance_factor * 2.0 * float(radii.max()))
        r_sum = radii[i] + radii[j]
        distance = np.linalg.norm(pos[i] - pos[j], axis=-1)
        ratio = distance / r_sum
        clash = np.flatnonzero(ratio < min_distance_factor)
        if len(clash):
            worst = int(clash[np.argmin(ratio[clash])])
            return _clash_reason(
                int(i[worst]), int(j[worst]), distance[worst], min_distance_factor * r_sum[worst]
            )
    # Every pair is bonded where even the closest-bonding pair reaches across the whole
    # molecule (a margin covers rounding): one fragment, without listing n² pairs.
    extent = float(np.linalg.norm(pos.max(axis=0) - pos.min(axis=0)))
    if extent * (1.0 + 1e-9) < max_bond_factor * 2.0 * float(radii.min()):
        return None
    i, j = _pairs_in_reach(tree, max_bond_factor * 2.0 * float(radii.max()))
    bonded = np.linalg.norm(pos[i] - pos[j], axis=-1) < max_bond_factor * (radii[i] + radii[j])
    graph = coo_matrix(
        (np.ones(int(bonded.sum()), dtype=bool), (i[bonded], j[bonded])), shape=(n_atoms, n_atoms)
    )
    n_fragments = int(connected_components(graph, directed=False)[0])
    if n_fragments > 1:
        return f"fragmented ({n_fragments} fragments)"
    return None


def _pairs_in_reach(tree, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``i < j`` of the KD-tree's points at most ``reach`` Å apart (slightly more:
    a margin for rounding, the caller tests each pair exactly), in (i, j) order."""
    pairs = tree.query_pairs(reach * (1.0 + 1e-9) + 1e-12, output_type="ndarray")  # [n_pairs, 2]
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    return pairs[order, 0].astype(np.int64), pairs[order, 1].astype(np.int64)


def _periodic_clash(
    z: np.ndarray,
    pos: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    radii: np.ndarray,
    min_distance_factor: float,
) -> str | None:
    """The closest clash between atoms of a periodic cell (images included), or None."""
    if min_distance_factor == 0:
        return None
    cutoff = 2.0 * float(radii.max()) * min_distance_factor
    i, j, d = primitive_neighbor_list("ijd", pbc, cell, pos, cutoff, self_interaction=False)
    if len(d) == 0:
        return None
    limit = min_distance_factor * (radii[i] + radii[j])
    ratio = d / limit
    worst = int(np.argmin(ratio))
    if ratio[worst] >= 1.0:
        return None
    return (
        f"atoms {int(i[worst])} and {int(j[worst])} at {d[worst]:.2f} Å "
        f"(limit {limit[worst]:.2f} Å, periodic images included)"
    )


def bonded_pairs(
    numbers: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray | None = None,
    pbc: np.ndarray | None = None,
    factor: float = BONDED_FACTOR,
) -> np.ndarray:
    """The bonds of a structure: pairs ``i < j`` closer than ``factor`` × their summed
    covalent radii, through any periodic image. Returns int64 [n_bonds, 2], sorted."""
    z = np.asarray(numbers, dtype=np.int64)
    pos = np.asarray(positions, dtype=np.float64)
    periodic = pbc is not None and bool(np.any(pbc))
    i, j = _pairs_within(
        pos,
        np.asarray(cell if periodic else np.zeros((3, 3)), dtype=np.float64),
        np.asarray(pbc if periodic else np.zeros(3, bool), dtype=bool),
        factor * covalent_radii[z],
    )
    return np.unique(np.stack([i, j], axis=1), axis=0).reshape(-1, 2)


def bonds_per_seed(
    numbers: np.ndarray,
    positions: np.ndarray,
    starts: np.ndarray,
    cells: np.ndarray,
    pbc: np.ndarray,
) -> list[np.ndarray | None]:
    """:func:`bonded_pairs` of each periodic seed of a flat batch (None for a molecule,
    whose check is connectivity): the ``bonds`` its moved geometries must keep. Seed
    ``s`` is rows ``starts[s]:starts[s + 1]``, with cell ``cells[s]`` and ``pbc[s]``."""
    return [
        bonded_pairs(
            numbers[starts[s] : starts[s + 1]],
            positions[starts[s] : starts[s + 1]],
            cells[s],
            pbc[s],
        )
        if np.any(pbc[s])
        else None
        for s in range(len(starts) - 1)
    ]


def _pairs_within(
    pos: np.ndarray, cell: np.ndarray, pbc: np.ndarray, radii: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``i < j`` closer than ``radii[i] + radii[j]`` Å (any image where periodic)."""
    i, j = primitive_neighbor_list("ij", pbc, cell, pos, radii, self_interaction=False)
    keep = i < j
    return i[keep].astype(np.int64), j[keep].astype(np.int64)


def _broken_bond(
    pos: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    radii: np.ndarray,
    max_bond_factor: float,
    bonds: np.ndarray | None,
) -> str | None:
    """The first of ``bonds`` no longer within ``max_bond_factor`` × summed radii, or None."""
    if bonds is None or len(bonds) == 0:
        return None
    bonds = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    n = len(pos)
    i, j = _pairs_within(pos, cell, pbc, max_bond_factor * radii)
    broken = ~np.isin(bonds[:, 0] * n + bonds[:, 1], i * n + j)
    if not broken.any():
        return None
    a, b = (int(x) for x in bonds[np.argmax(broken)])
    return (
        f"bond broken: atoms {a} and {b} more than "
        f"{max_bond_factor * (radii[a] + radii[b]):.2f} Å apart"
    )


def pairwise_periodic_rmsd(
    a: np.ndarray, cells_a: np.ndarray, b: np.ndarray, cells_b: np.ndarray, pbc: np.ndarray
) -> np.ndarray:
    """RMSD between periodic structures, up to a rigid translation, with minimum images.

    A periodic cell has no rotational symmetry to remove, but a translation of every atom
    by one vector and a shift of any atom by a lattice vector leave it unchanged. Each
    atom's displacement is taken in fractional coordinates, wrapped to the nearest image
    along periodic directions, turned into Å with the mean of the two cells, and the mean
    displacement is removed before the root-mean-square.

    Args:
        a: positions [n_a, n_atoms, 3] Å; cells_a [n_a, 3, 3] Å (rows are lattice vectors).
        b: positions [n_b, n_atoms, 3] Å; cells_b [n_b, 3, 3] Å.
        pbc: [3] periodic directions, shared by all structures.

    Returns:
        RMSDs [n_a, n_b], Å.
    """
    a = _as_structures(a, "a")
    b = _as_structures(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same atoms; got {a.shape[1]} and {b.shape[1]}")
    cells_a = np.asarray(cells_a, dtype=np.float64).reshape(len(a), 3, 3)
    cells_b = np.asarray(cells_b, dtype=np.float64).reshape(len(b), 3, 3)
    periodic = np.asarray(pbc, dtype=bool).reshape(3)
    frac_a = np.einsum("kni,kij->knj", a, np.linalg.inv(cells_a))  # [n_a, n_atoms, 3]
    frac_b = np.einsum("kni,kij->knj", b, np.linalg.inv(cells_b))
    out = np.empty((len(a), len(b)))
    for k in range(len(a)):
        d_frac = frac_a[k][None] - frac_b  # [n_b, n_atoms, 3]
        d_frac[..., periodic] -= np.round(d_frac[..., periodic])
        mean_cell = 0.5 * (cells_a[k][None] + cells_b)  # [n_b, 3, 3]
        d = np.einsum("bni,bij->bnj", d_frac, mean_cell)
        d -= d.mean(axis=1, keepdims=True)
        out[k] = np.sqrt(np.mean(np.sum(d * d, axis=-1), axis=1))
    return out
