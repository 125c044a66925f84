"""Content-addressed labels: every label computed is kept, and none is computed twice.

A label's key is the SHA-256 of the structure's content hash
(:func:`potentials.hashing.structure_hash`: atomic numbers, positions and cell rounded to
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

from potentials.hashing import structure_hash

__all__ = ["LabelStore", "StoredLabel", "label_key", "theory_json"]


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

    def get(self, key: str) -> StoredLabel | None:
        """The stored label, or None if there is none (or only an unreadable partial one)."""
        path = self._path(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                error = str(f["error"])
                if error:
                    return StoredLabel(None, None, error, float(f["seconds"]))
                return StoredLabel(float(f["energy"]), np.array(f["forces"]), None, float(f["seconds"]))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            return None  # a file that cannot be read is recomputed, never trusted

    def put(self, key: str, theory: Mapping, energy: float | None, forces: np.ndarray | None,
            error: str | None, seconds: float) -> None:
        """Store one label (or failure) atomically."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # unique per writer (process and thread), so concurrent writers of one key never
        # share a temporary file; the last rename wins with a complete file either way
        tmp = path.with_name(f"{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp.npz")
        np.savez(tmp, energy=np.float64(np.nan if energy is None else energy),
                 forces=np.zeros((0, 3)) if forces is None else np.asarray(forces, dtype=np.float64),
                 error=np.str_(error or ""), seconds=np.float64(seconds),
                 theory=np.str_(theory_json(theory)))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(path)

    def __len__(self) -> int:
        if not self.root.exists():
            return 0
        return sum(1 for p in self.root.glob("*/*.npz") if not p.name.endswith(".tmp.npz"))
