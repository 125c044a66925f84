"""Several processes writing one dataset file at once lose nothing and corrupt nothing.

Without the dataset's lock file, three processes appending to one HDF5 file at once were
seen here to lose two thirds of the records (HDF5's own file locking makes the others fail
with "unable to lock file") or, with that locking off as on many cluster filesystems
(``HDF5_USE_FILE_LOCKING=FALSE``), to leave a file whose hashes no longer read ("addr
overflow", "wrong B-tree signature"). Both settings are tested. The writers are real
processes started together at a barrier.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from advloop.potentials import dataset as dataset_module
from advloop.potentials.dataset import Dataset, DatasetError, Provenance, lock_path
from advloop.potentials.hashing import structure_hash
from tests.conftest import displaced
from tests.processes import clean_context, run_processes

ROOT = Path(__file__).resolve().parents[2]


def _records(writer: int, n: int) -> list[Atoms]:
    """``n`` displaced NH3 of one writer (distinct across writers)."""
    return displaced(molecule("NH3"), n, 0.05, np.random.default_rng(writer))


def _append_one_by_one(path: str, writer: int, n: int, skip_known: bool, barrier) -> None:
    """A writer process: create the dataset if it is not there, then append its records
    one per call; energy = the writer's number, forces = the record's index."""
    barrier.wait()
    dataset = Dataset.create(path, exist_ok=True)
    for k, atoms in enumerate(_records(writer, n)):
        dataset.append(
            [atoms],
            [float(writer)],
            [np.full((len(atoms), 3), float(k))],
            [Provenance(0, "initial", "test")],
            skip_known=skip_known,
        )


def _read_while_written(path: str, seconds: float, barrier) -> None:
    """A reader process: every read sees whole records (never fails, never a torn one)."""
    barrier.wait()
    end = time.time() + seconds
    while time.time() < end:
        if not Path(path).exists():
            continue
        arrays = Dataset(path).arrays()
        assert len(arrays.numbers) == arrays.n_atoms.sum() == 4 * len(arrays)


def _run_together(*jobs: tuple) -> None:
    """Run each ``(function, *args)`` in its own process, all released at once."""
    ctx = clean_context()
    barrier = ctx.Barrier(len(jobs))
    run_processes(ctx, [(fn, (*args, barrier)) for fn, *args in jobs])


@pytest.mark.parametrize("hdf5_locking", ["TRUE", "FALSE"])
def test_processes_appending_at_once_lose_and_corrupt_nothing(tmp_path, monkeypatch, hdf5_locking):
    monkeypatch.setenv("HDF5_USE_FILE_LOCKING", hdf5_locking)  # inherited by the processes
    path, n = str(tmp_path / "dataset.h5"), 40
    _run_together(
        *[(_append_one_by_one, path, w, n, False) for w in range(3)],
        (_read_while_written, path, 3.0),
    )

    dataset = Dataset(path)
    expected = {structure_hash(a): (w, k) for w in range(3) for k, a in enumerate(_records(w, n))}
    assert len(dataset) == 3 * n and set(dataset.hashes()) == set(expected)
    arrays = dataset.arrays()
    for i, h in enumerate(dataset.hashes()):  # each record's rows are its own
        writer, k = expected[h]
        record = arrays.subset([i])
        assert record.energy[0] == writer and (record.forces == k).all()
        assert structure_hash(dataset.to_atoms([i])[0]) == h


def test_two_writers_of_the_same_records_append_them_once(tmp_path):
    path, n = str(tmp_path / "dataset.h5"), 30
    _run_together(*[(_append_one_by_one, path, 7, n, True) for _ in range(2)])
    assert Dataset(path).hashes() == [structure_hash(a) for a in _records(7, n)]


def test_a_writer_waits_for_the_lock_and_says_why_it_gave_up(tmp_path, monkeypatch):
    dataset = Dataset.create(tmp_path / "dataset.h5")
    [atoms] = _records(0, 1)
    args = ([atoms], [0.0], [np.zeros((4, 3))], [Provenance(0, "initial", "test")])
    monkeypatch.setattr(dataset_module, "LOCK_TIMEOUT_S", 0.3)
    with open(lock_path(dataset.path), "rb") as held:  # as another process appending would
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(
            DatasetError,
            match="locked by another process for 0.3 s .waiting "
            "to write it.: is another advloop run",
        ):
            dataset.append(*args)
        with pytest.raises(DatasetError, match="waiting to read"):
            len(dataset)
    assert len(dataset) == 0
    np.testing.assert_array_equal(dataset.append(*args), [0])


def test_a_killed_lock_holder_does_not_block_the_next_writer(tmp_path):
    dataset = Dataset.create(tmp_path / "dataset.h5")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'rb'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(600)",
            str(lock_path(dataset.path)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        os.kill(holder.pid, signal.SIGKILL)
    finally:
        holder.kill()
        holder.wait()
    [atoms] = _records(0, 1)
    t0 = time.perf_counter()
    dataset.append([atoms], [0.0], [np.zeros((4, 3))], [Provenance(0, "initial", "test")])
    assert len(dataset) == 1 and time.perf_counter() - t0 < 5.0
