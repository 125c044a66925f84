"""A stable content hash of an atomic structure, used as its identity in provenance."""

from __future__ import annotations

import hashlib

import numpy as np
from ase import Atoms

__all__ = ["structure_hash"]

_HASH_VERSION = b"advloop-structure-hash-v1"


def structure_hash(atoms: Atoms, decimals: int = 6) -> str:
    """Return the SHA-256 hex digest of a structure's atomic numbers, positions, cell and pbc.

    Positions (Å) and cell vectors (Å) are rounded to ``decimals`` decimal places and
    hashed as integers (multiples of ``10**-decimals`` Å), so noise well below that
    resolution (e.g. 1e-9 Å from a round trip through a file) gives the same hash,
    ``-0.0`` and ``0.0`` hash alike, and a move of ``10**-decimals`` Å or more gives a
    different one. As with any rounding, two coordinates that straddle a rounding
    boundary hash differently however close they are.

    Atom order matters (a permuted structure hashes differently). Charges, magnetic
    moments, tags and the attached calculator are not part of the hash.

    Args:
        atoms: the structure.
        decimals: number of decimal places (in Å) kept before hashing, 0 to 12.

    Returns:
        64 lowercase hexadecimal characters.

    Raises:
        ValueError: if ``decimals`` is not an integer in [0, 12].
    """
    if isinstance(decimals, bool) or not isinstance(decimals, (int, np.integer)):
        raise ValueError(f"decimals must be an integer, got {decimals!r}")
    if not 0 <= decimals <= 12:
        raise ValueError(f"decimals must be in [0, 12] (Å resolution 1 to 1e-12), got {decimals}")

    scale = 10.0 ** int(decimals)
    numbers = np.asarray(atoms.numbers, dtype="<i8")
    positions = np.rint(np.asarray(atoms.positions, dtype=float) * scale).astype("<i8")
    cell = np.rint(np.asarray(atoms.cell[:], dtype=float) * scale).astype("<i8")
    pbc = np.asarray(atoms.pbc, dtype=np.uint8)

    digest = hashlib.sha256()
    digest.update(_HASH_VERSION)
    digest.update(np.asarray([len(numbers), int(decimals)], dtype="<i8").tobytes())
    for part in (numbers, positions, cell, pbc):
        digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()
