"""The labelled dataset: an append-only HDF5 store with provenance.

This is the one module that opens dataset files. Layout of ``dataset.h5`` (readable with
plain h5py; every array is resizable along its first axis)::

    /                       attrs: format="advloop-dataset", version=1,
                                   n_structures (the commit marker, see below)
    /atoms/numbers          int32    [n_atoms_total]          atomic numbers
    /atoms/positions        float64  [n_atoms_total, 3]       Å
    /atoms/forces           float64  [n_atoms_total, 3]       eV/Å (DFT labels)
    /structures/atom_start  int64    [n_structures]           first row in /atoms/*
    /structures/n_atoms     int32    [n_structures]
    /structures/energy      float64  [n_structures]           eV (DFT label)
    /structures/cell        float64  [n_structures, 3, 3]     Å (zeros when not periodic)
    /structures/pbc         bool     [n_structures, 3]
    /structures/generation  int32    [n_structures]           active-learning generation
    /structures/parent      int64    [n_structures]           index of the structure it came
                                                              from, -1 if none
    /structures/strategy    str      [n_structures]           e.g. "initial", "adversarial"
    /structures/level_of_theory str  [n_structures]           e.g. "RKS/PBE/6-31G*"
    /structures/hash        str      [n_structures]           content hash of the structure

Records are appended atom rows first, then structure rows, and only then is the root
attribute ``n_structures`` raised and the file flushed. A reader trusts the first
``n_structures`` rows of every array and nothing after them, so a process killed
mid-append leaves a file that opens and holds every committed record.

Processes share a dataset through the lock file ``<dataset>.lock`` beside it
(``fcntl.flock``): a writer holds it exclusively, readers shared. HDF5 alone does not
make that safe: with its own file locking on, a second process opening the file while
one appends fails (``unable to lock file``), so a record is lost; with it off
(``HDF5_USE_FILE_LOCKING=FALSE``, common on cluster filesystems) two appenders write
over each other and the file no longer reads. A lock is released when its process dies,
so a killed writer never blocks the next one. Where the lock file cannot be created (a
read-only folder, which nobody can append to either) a reader reads without it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from advloop.potentials.hashing import structure_hash

FORMAT = "advloop-dataset"
VERSION = 1
#: s a reader or writer waits for another process's lock on the dataset before giving up
LOCK_TIMEOUT_S = 600.0

_STR = h5py.string_dtype("utf-8")
_ATOM_FIELDS = {
    "numbers": (np.int32, ()),
    "positions": (np.float64, (3,)),
    "forces": (np.float64, (3,)),
}
_STRUCTURE_FIELDS = {
    "atom_start": (np.int64, ()),
    "n_atoms": (np.int32, ()),
    "energy": (np.float64, ()),
    "cell": (np.float64, (3, 3)),
    "pbc": (np.bool_, (3,)),
    "generation": (np.int32, ()),
    "parent": (np.int64, ()),
    "strategy": (_STR, ()),
    "level_of_theory": (_STR, ()),
    "hash": (_STR, ()),
}


class DatasetError(Exception):
    """A dataset file is missing, of another format, or inconsistent."""


@dataclass(frozen=True)
class Provenance:
    """Where a labelled structure came from."""

    generation: int
    strategy: str
    level_of_theory: str
    parent: int = -1


@dataclass(frozen=True)
class Arrays:
    """Committed records as flat arrays (what training consumes).

    ``numbers`` [n_atoms_total], ``positions`` and ``forces`` [n_atoms_total, 3],
    ``energy`` [n_structures], ``n_atoms`` [n_structures], ``cell`` [n_structures, 3, 3],
    ``pbc`` [n_structures, 3].
    """

    numbers: np.ndarray
    positions: np.ndarray
    forces: np.ndarray
    energy: np.ndarray
    n_atoms: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray

    @property
    def atom_start(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.n_atoms)[:-1]]).astype(np.int64)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Arrays:
        """The records ``indices`` (in that order) as a new :class:`Arrays`."""
        idx = np.asarray(indices, dtype=np.int64)
        start = self.atom_start
        rows = (
            np.concatenate([np.arange(start[i], start[i] + self.n_atoms[i]) for i in idx])
            if len(idx)
            else np.zeros(0, dtype=np.int64)
        )
        return Arrays(
            numbers=self.numbers[rows],
            positions=self.positions[rows],
            forces=self.forces[rows],
            energy=self.energy[idx],
            n_atoms=self.n_atoms[idx],
            cell=self.cell[idx],
            pbc=self.pbc[idx],
        )

    def __len__(self) -> int:
        return len(self.energy)


def lock_path(path: str | Path) -> Path:
    """The lock file of the dataset at ``path``."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def _locked(path: Path, exclusive: bool) -> Iterator[None]:
    """Hold the lock of the dataset at ``path``: exclusive to write, shared to read.

    Waits up to :data:`LOCK_TIMEOUT_S` for another process's lock, then raises
    :class:`DatasetError`.
    """
    try:
        fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        if exclusive or err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        yield  # a read-only folder: no one can append here either
        return
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DatasetError(
                        f"{path} stayed locked by another process for {LOCK_TIMEOUT_S:g} s "
                        f"(waiting to {'write' if exclusive else 'read'} it): is another "
                        "advloop run writing this run folder? Wait for it or stop it"
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # releases the lock


class Dataset:
    """Append-only labelled dataset in one HDF5 file (see module docstring for layout)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise DatasetError(f"no dataset at {self.path}; create one with Dataset.create()")
        with self._open("r") as f:
            if f.attrs.get("format") != FORMAT:
                raise DatasetError(f"{self.path} is not an advloop dataset")
            if int(f.attrs["version"]) > VERSION:
                raise DatasetError(
                    f"{self.path} has dataset version {f.attrs['version']}, newer than this "
                    f"advloop understands ({VERSION}); upgrade advloop"
                )

    @contextlib.contextmanager
    def _open(self, mode: str) -> Iterator[h5py.File]:
        """The HDF5 file under the dataset's lock (exclusive unless ``mode`` is "r")."""
        with _locked(self.path, exclusive=mode != "r"), h5py.File(self.path, mode) as f:
            yield f

    @classmethod
    def create(cls, path: str | Path, exist_ok: bool = False) -> Dataset:
        """Create an empty dataset file (or open the existing one if ``exist_ok``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path, exclusive=True):  # another process may be creating it too
            if path.exists():
                if not exist_ok:
                    raise DatasetError(f"{path} already exists")
            else:
                tmp = path.with_suffix(".h5.tmp")
                with h5py.File(tmp, "w") as f:
                    f.attrs["format"] = FORMAT
                    f.attrs["version"] = VERSION
                    f.attrs["n_structures"] = 0
                    for group, fields in (
                        ("atoms", _ATOM_FIELDS),
                        ("structures", _STRUCTURE_FIELDS),
                    ):
                        g = f.create_group(group)
                        for name, (dtype, shape) in fields.items():
                            g.create_dataset(
                                name,
                                shape=(0, *shape),
                                maxshape=(None, *shape),
                                dtype=dtype,
                                chunks=(1024, *shape),
                            )
                tmp.replace(path)
        return cls(path)

    def __len__(self) -> int:
        with self._open("r") as f:
            return int(f.attrs["n_structures"])

    def append(
        self,
        structures: Sequence[Atoms],
        energies: Sequence[float],
        forces: Sequence[np.ndarray],
        provenance: Sequence[Provenance],
        skip_known: bool = False,
    ) -> np.ndarray:
        """Append labelled structures; returns their indices in the dataset.

        energies in eV, forces [n_atoms, 3] in eV/Å per structure. Inputs are validated
        in full before anything is written: the dataset never holds a non-finite number.
        With ``skip_known``, a structure whose hash is already in the dataset (or earlier
        in this call) is left out, checked under the same lock as the write, so two
        writers of the same records append them once; the indices returned are then those
        of the records appended, and a provenance parent must be a record already in the
        dataset.

        Raises:
            ValueError: lengths that differ; an energy that is not one finite real number;
                forces that are not ``[n_atoms, 3]`` finite real numbers; non-finite
                positions or cell; a provenance parent that is not an earlier record.
        """
        n = len(structures)
        if not (len(energies) == len(forces) == len(provenance) == n):
            raise ValueError(
                f"append got {n} structures, {len(energies)} energies, {len(forces)} force "
                f"arrays and {len(provenance)} provenance records; they must match"
            )
        energies = [_checked_energy(k, e) for k, e in enumerate(energies)]
        forces = [
            _checked_rows(k, "force", fr, len(atoms))
            for k, (atoms, fr) in enumerate(zip(structures, forces))
        ]
        for k, atoms in enumerate(structures):
            _checked_rows(k, "position", atoms.positions, len(atoms))
            if not np.isfinite(atoms.cell[:]).all():
                raise ValueError(
                    f"the cell of structure {k} is not finite: {atoms.cell[:].tolist()}"
                )
        if n == 0:
            return np.zeros(0, dtype=np.int64)

        hashes = [structure_hash(a) for a in structures]
        with self._open("a") as f:
            n0 = int(f.attrs["n_structures"])
            if skip_known:
                if any(p.parent >= n0 for p in provenance):
                    raise ValueError(
                        "with skip_known, a provenance parent must be -1 or a "
                        "record already in the dataset"
                    )
                seen = {h.decode() for h in f["structures"]["hash"][:n0]}
                keep = []
                for k, h in enumerate(hashes):
                    if h not in seen:
                        seen.add(h)
                        keep.append(k)
                structures = [structures[k] for k in keep]
                energies = [energies[k] for k in keep]
                forces = [forces[k] for k in keep]
                provenance = [provenance[k] for k in keep]
                hashes = [hashes[k] for k in keep]
                n = len(keep)
                if n == 0:
                    return np.zeros(0, dtype=np.int64)
            n_atoms = np.array([len(a) for a in structures], dtype=np.int64)
            a0 = _committed_atoms(f, n0)
            parents = np.array([p.parent for p in provenance], dtype=np.int64)
            if (parents >= n0 + np.arange(n)).any() or (parents < -1).any():
                raise ValueError("a provenance parent must be -1 or an earlier record")
            atom_rows = {
                "numbers": np.concatenate([a.numbers for a in structures]),
                "positions": np.concatenate([a.positions for a in structures]),
                "forces": np.concatenate(forces),
            }
            structure_rows = {
                "atom_start": a0 + np.concatenate([[0], np.cumsum(n_atoms)[:-1]]),
                "n_atoms": n_atoms,
                "energy": np.asarray(energies, dtype=np.float64),
                "cell": np.stack([a.cell[:] for a in structures]),
                "pbc": np.stack([a.pbc for a in structures]),
                "generation": [p.generation for p in provenance],
                "parent": parents,
                "strategy": [p.strategy for p in provenance],
                "level_of_theory": [p.level_of_theory for p in provenance],
                "hash": hashes,
            }
            _write_rows(f["atoms"], atom_rows, a0)
            _write_rows(f["structures"], structure_rows, n0)
            f.flush()
            # The commit: readers see the new records only from here on.
            f.attrs["n_structures"] = n0 + n
            f.flush()
        return np.arange(n0, n0 + n)

    def arrays(self) -> Arrays:
        """All committed records as flat arrays."""
        with self._open("r") as f:
            n = int(f.attrs["n_structures"])
            na = _committed_atoms(f, n)
            a, s = f["atoms"], f["structures"]
            return Arrays(
                numbers=a["numbers"][:na].astype(np.int64),
                positions=a["positions"][:na],
                forces=a["forces"][:na],
                energy=s["energy"][:n],
                n_atoms=s["n_atoms"][:n].astype(np.int64),
                cell=s["cell"][:n],
                pbc=s["pbc"][:n],
            )

    def provenance(self) -> list[Provenance]:
        """Provenance of every committed record, in dataset order."""
        with self._open("r") as f:
            n = int(f.attrs["n_structures"])
            s = f["structures"]
            return [
                Provenance(int(g), st.decode(), lot.decode(), int(p))
                for g, st, lot, p in zip(
                    s["generation"][:n],
                    s["strategy"][:n],
                    s["level_of_theory"][:n],
                    s["parent"][:n],
                )
            ]

    def hashes(self) -> list[str]:
        with self._open("r") as f:
            n = int(f.attrs["n_structures"])
            return [h.decode() for h in f["structures"]["hash"][:n]]

    def to_atoms(self, indices: Sequence[int] | None = None) -> list[Atoms]:
        """Records as ``ase.Atoms`` with the DFT energy and forces attached and the
        provenance in ``atoms.info``."""
        arr = self.arrays()
        prov = self.provenance()
        if indices is None:
            indices = range(len(arr))
        start = arr.atom_start
        out = []
        for i in indices:
            rows = slice(start[i], start[i] + arr.n_atoms[i])
            atoms = Atoms(
                numbers=arr.numbers[rows],
                positions=arr.positions[rows],
                cell=arr.cell[i],
                pbc=arr.pbc[i],
            )
            atoms.calc = SinglePointCalculator(
                atoms, energy=float(arr.energy[i]), forces=arr.forces[rows].copy()
            )
            p = prov[i]
            atoms.info.update(
                index=int(i),
                generation=p.generation,
                strategy=p.strategy,
                parent=p.parent,
                level_of_theory=p.level_of_theory,
            )
            out.append(atoms)
        return out

    def export_extxyz(self, path: str | Path) -> int:
        """Write every record to extended XYZ; returns the number written."""
        from ase.io import write

        images = self.to_atoms()
        write(str(path), images, format="extxyz")
        return len(images)


def _checked_energy(k: int, energy: object) -> float:
    """The energy of structure ``k`` (eV) as a finite float, or ValueError saying why not."""
    e = np.asarray(energy)
    if e.dtype.kind not in "iuf":
        raise ValueError(f"the energy of structure {k} is not a real number: {str(energy)[:40]!r}")
    if e.shape != ():
        raise ValueError(f"the energy of structure {k} has shape {e.shape}, expected a scalar")
    if not np.isfinite(e):
        raise ValueError(f"the energy of structure {k} is {float(e)}")
    return float(e)


def _checked_rows(k: int, what: str, values: object, n_atoms: int) -> np.ndarray:
    """``values`` (forces or positions of structure ``k``) as a float64 ``[n_atoms, 3]``
    array of finite numbers, or ValueError saying why not."""
    a = np.asarray(values)
    if a.dtype.kind not in "iuf":
        raise ValueError(f"{what}s of structure {k} are not real numbers (dtype {a.dtype})")
    if a.shape != (n_atoms, 3):
        raise ValueError(f"{what}s of structure {k} have shape {a.shape}, expected {(n_atoms, 3)}")
    bad = int(np.count_nonzero(~np.isfinite(a)))
    if bad:
        raise ValueError(
            f"{bad} {what} component{'s' if bad != 1 else ''} of structure {k} "
            f"{'are' if bad != 1 else 'is'} not finite"
        )
    return a.astype(np.float64)


def _committed_atoms(f: h5py.File, n_structures: int) -> int:
    """Atom rows owned by the first ``n_structures`` (committed) records.

    Derived from the committed structure rows, so atom rows of a record whose append was
    killed before its commit are neither read nor built on.
    """
    if n_structures == 0:
        return 0
    s = f["structures"]
    return int(s["atom_start"][n_structures - 1]) + int(s["n_atoms"][n_structures - 1])


def _write_rows(group: h5py.Group, rows: dict, start: int) -> None:
    for name, values in rows.items():
        values = np.asarray(values, dtype=object if group[name].dtype == _STR else None)
        ds = group[name]
        ds.resize(start + len(values), axis=0)
        ds[start : start + len(values)] = values


def split_indices(
    n: int, val_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation split of ``range(n)``; at least one training record.

    With ``n * val_fraction < 1`` the validation set is empty.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = rng.permutation(n)
    n_val = min(int(round(n * val_fraction)), n - 1)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
