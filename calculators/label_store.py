"""Content-addressed labels: every label computed is kept, and none is computed twice.

A label's key is the SHA-256 of the structure's content hash
(:func:`advloop.potentials.hashing.structure_hash`: atomic numbers, positions and cell rounded to
1e-6 Å, pbc) and the full level-of-theory settings as canonical JSON (the calculator's
name and every setting that changes its numbers). Each label is one small ``.npz`` file,
``<root>/<key[:2]>/<key>.npz``, written atomically (a temporary file renamed into place)
the moment it is computed, so a run killed in the middle of a batch of DFT jobs loses
only the jobs still running. Failures are stored too (with their reason), so a structure
whose SCF failed with these settings is not retried on every re-run.

Layout of a label file (numpy ``.npz``): ``energy`` (eV, scalar, NaN for a failure),
``forces`` (eV/Å, [n_atoms, 3], empty for a failure), ``error`` (str, empty for
success), ``seconds`` (wall time of the original calculation), ``theory`` (the settings
JSON, for a human reading the store).

What a valid label is, is defined here once (:func:`check_label`): the labeller applies
it to what a calculator returns (a bad label becomes a stored failure with the reason),
and the store applies it to what it reads back, so a success that is not a valid label
(written by an older advloop, or damaged) is never returned: it is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms

from advloop.calculators.errors import InvalidLabelError
from advloop.potentials.hashing import structure_hash

__all__ = [
    "MAX_ABS_ENERGY_EV_PER_ATOM",
    "MAX_FORCE_EV_PER_A",
    "LabelStore",
    "StoredLabel",
    "check_label",
    "label_key",
    "theory_json",
]

#: eV/Å; a label with an atom's |F| at or above it is refused. Physical forces on the
#: structures a run labels stay far below: at half the summed covalent radii (the closest
#: approach the geometry checks allow by default) RHF/STO-3G gives max |F| of 114 (H2),
#: 213 (C2), 418 (Cl2) and 1204 eV/Å (F2, the stiffest pair). A force eight times that
#: comes from no structure worth training on but from a calculator's garbage (an overflow,
#: a diverged SCF reported as converged), and one such label ruins a dataset's force loss.
MAX_FORCE_EV_PER_A = 1e4
#: eV per atom; a label whose |energy| / n_atoms is above it is refused. All-electron
#: total energies reach about -7.5e5 eV per atom for uranium and, by the Thomas-Fermi
#: estimate (0.77 Z^(7/3) Hartree), -1.4e6 eV for the heaviest element (Z = 118); an
#: energy beyond 1e7 eV per atom is no level of theory's.
MAX_ABS_ENERGY_EV_PER_ATOM = 1e7


def check_label(
    energy: object, forces: object, n_atoms: int | None, *, structure_hash: str | None = None
) -> tuple[float, np.ndarray]:
    """Check a label as a calculator returned it; return it as (float, float64 array).

    A valid label has an energy (eV) that is one finite real number (a Python or numpy
    scalar, or an array of one element), with ``|energy| / n_atoms`` at most
    :data:`MAX_ABS_ENERGY_EV_PER_ATOM`, and forces (eV/Å) of real numbers with shape
    exactly ``[n_atoms, 3]``, all finite, each atom's ``|F|`` below
    :data:`MAX_FORCE_EV_PER_A`.

    Args:
        energy: the energy, eV.
        forces: the forces, eV/Å, ``[n_atoms, 3]``.
        n_atoms: the structure's number of atoms; None when unknown (then only
            ``[*, 3]`` is checked, and the per-atom energy uses the forces' rows).
        structure_hash: carried by the error, to trace it back to the structure.

    Returns:
        ``(energy, forces)``: a float and a new float64 array ``[n_atoms, 3]``.

    Raises:
        InvalidLabelError: saying every problem found, e.g. "energy is nan; forces have
            shape (3, 4), expected [4, 3]".
    """
    problems: list[str] = []
    value = _checked_energy(energy, problems)
    array = _checked_forces(forces, n_atoms, problems)
    rows = len(array) if array is not None else n_atoms
    if value is not None and rows is not None:
        per_atom = value / max(rows, 1)
        if abs(per_atom) > MAX_ABS_ENERGY_EV_PER_ATOM:
            problems.append(
                f"energy {value:.2g} eV ({per_atom:.2g} eV per atom) is beyond "
                f"the ±{MAX_ABS_ENERGY_EV_PER_ATOM:.0e} eV per atom limit"
            )
    # a None energy or forces comes with its problem
    if problems or value is None or array is None:
        raise InvalidLabelError("; ".join(problems), structure_hash=structure_hash)
    return value, array


def _checked_energy(energy: object, problems: list[str]) -> float | None:
    """``energy`` as a finite float, or None with the reason appended to ``problems``."""
    e = np.asarray(energy)
    if e.dtype.kind not in "iuf":
        what = "complex" if e.dtype.kind == "c" else "not a real number"
        problems.append(f"energy is {what} (got {type(energy).__name__} {str(energy)[:40]!r})")
        return None
    if e.size != 1:
        problems.append(f"energy has shape {e.shape}, expected a scalar")
        return None
    value = float(e.reshape(()))
    if not np.isfinite(value):
        problems.append(f"energy is {value}")
        return None
    return value


def _checked_forces(forces: object, n_atoms: int | None, problems: list[str]) -> np.ndarray | None:
    """``forces`` as a new float64 ``[n_atoms, 3]`` array, or None with the reason
    appended to ``problems``."""
    try:
        f = np.asarray(forces)
    except (TypeError, ValueError) as err:  # e.g. ragged rows
        problems.append(f"forces are not an array of numbers ({err})")
        return None
    if f.dtype.kind not in "iuf":
        problems.append(f"forces are not real numbers (dtype {f.dtype})")
        return None
    if f.ndim != 2 or f.shape[1] != 3 or (n_atoms is not None and f.shape[0] != n_atoms):
        problems.append(
            f"forces have shape {f.shape}, expected "
            f"[{'n_atoms' if n_atoms is None else n_atoms}, 3]"
        )
        return None
    f = np.array(f, dtype=np.float64)
    bad = int(np.count_nonzero(~np.isfinite(f)))
    if bad:
        problems.append(
            f"{bad} force component{'s are' if bad != 1 else ' is'} not finite (nan or inf)"
        )
        return None
    if len(f):
        norms = np.linalg.norm(f, axis=1)
        worst = int(np.argmax(norms))
        if norms[worst] >= MAX_FORCE_EV_PER_A:
            problems.append(
                f"max |F| {norms[worst]:.2g} eV/Å (atom {worst}) is above the "
                f"{MAX_FORCE_EV_PER_A:.0e} eV/Å limit"
            )
            return None
    return f


def theory_json(theory: Mapping) -> str:
    """Canonical JSON of level-of-theory settings (sorted keys, no whitespace)."""
    return json.dumps(theory, sort_keys=True, separators=(",", ":"), default=str)


def label_key(atoms: Atoms, theory: Mapping) -> str:
    """64 hex characters identifying the label of ``atoms`` at ``theory``."""
    digest = hashlib.sha256(b"advloop-label-v1")
    digest.update(structure_hash(atoms).encode())
    digest.update(theory_json(theory).encode())
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class StoredLabel:
    """energy eV (None on failure), forces [n_atoms, 3] eV/Å (None on failure), error
    (None on success), seconds of the original calculation."""

    energy: float | None
    forces: np.ndarray | None
    error: str | None
    seconds: float


class LabelStore:
    """Labels on disk under ``root``, keyed by :func:`label_key`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def __contains__(self, key: str) -> bool:
        return self._path(key).exists()

    def get(self, key: str, n_atoms: int | None = None) -> StoredLabel | None:
        """The stored label or failure; None if there is none, or only a file that is not
        one: unreadable (a partial write), or a success that is not a valid label
        (:func:`check_label`; written by an older advloop, which stored what a broken
        calculator returned). The caller recomputes, and :meth:`put` replaces, it.

        Args:
            key: the label's :func:`label_key`.
            n_atoms: the structure's number of atoms, when the caller knows it (the file
                does not hold it): a success whose forces are not ``[n_atoms, 3]`` is then
                missing too. Without it, forces are only checked to be ``[*, 3]``.
        """
        path = self._path(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                error, seconds = str(f["error"]), float(f["seconds"])
                if error:
                    return StoredLabel(None, None, error, seconds)
                energy, forces = check_label(f["energy"], f["forces"], n_atoms)
                return StoredLabel(energy, forces, None, seconds)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, InvalidLabelError):
            return None  # a file that is not a valid label is recomputed, never trusted

    def put(
        self,
        key: str,
        theory: Mapping,
        energy: float | None,
        forces: np.ndarray | None,
        error: str | None,
        seconds: float,
    ) -> None:
        """Store one label (or failure, with ``error`` set) atomically.

        Raises:
            ValueError: a success (``error`` None) that is not a valid label
                (:func:`check_label`); nothing is written.
        """
        if not error:
            try:
                energy, forces = check_label(energy, forces, None)
            except InvalidLabelError as err:
                raise ValueError(f"refusing to store an invalid label under {key}: {err}") from err
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # unique per writer (process and thread), so concurrent writers of one key never
        # share a temporary file; the last rename wins with a complete file either way
        tmp = path.with_name(f"{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp.npz")
        np.savez(
            tmp,
            energy=np.float64(np.nan if energy is None else energy),
            forces=np.zeros((0, 3)) if forces is None else np.asarray(forces, dtype=np.float64),
            error=np.str_(error or ""),
            seconds=np.float64(seconds),
            theory=np.str_(theory_json(theory)),
        )
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(path)

    def __len__(self) -> int:
        if not self.root.exists():
            return 0
        return sum(1 for p in self.root.glob("*/*.npz") if not p.name.endswith(".tmp.npz"))
