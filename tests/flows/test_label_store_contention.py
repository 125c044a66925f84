"""Labelling tasks that finish together lose no label and never corrupt the dataset.

The flow's own steps under contention: four processes of four threads each run
:func:`advloop.flows.steps.label_one` on every candidate of a generation (each starting at another
candidate, so every label is computed and stored by several writers at the same moment),
then all four run :func:`advloop.flows.steps.append_labels` at once, as a re-run started while an
old run is still alive would. Labels come from ASE's EMT, a stand-in for DFT: the test is
about storage, not about the numbers.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from ase.build import molecule
from ase.calculators.emt import EMT

from advloop.adversarial.structures import Candidates
from advloop.calculators.label_store import LabelStore
from advloop.flows import steps
from advloop.flows.config import RunConfig
from advloop.flows.run_folder import RunLayout, write_candidates
from advloop.potentials.dataset import Dataset, Provenance
from advloop.potentials.hashing import structure_hash
from tests.processes import clean_context, run_processes

N_CANDIDATES, N_PROCESSES, N_THREADS = 24, 4, 4


def _candidates(n: int) -> list:
    rng = np.random.default_rng(3)
    out = []
    for _ in range(n):
        atoms = molecule("NH3")
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        atoms.info["parent"] = 0
        out.append(atoms)
    return out


def _label_then_append(config: RunConfig, process: int, labelled, barrier) -> None:
    """One process: its threads label every candidate, then (once every process has
    labelled) it appends the generation's labels."""
    barrier.wait()
    every = list(range(N_CANDIDATES))

    def label_all(thread: int) -> None:
        start = (process * N_THREADS + thread) % N_CANDIDATES
        for index in every[start:] + every[:start]:
            steps.label_one(config, 0, index)

    with ThreadPoolExecutor(N_THREADS) as pool:
        list(pool.map(label_all, range(N_THREADS)))
    labelled.wait()
    steps.append_labels(config, 0, every)


def test_labels_stored_and_appended_at_once_by_many_writers_are_all_there(tmp_path):
    config = RunConfig.model_validate(
        {
            "system": {"name": "nh3-contention", "structures": "nh3.xyz"},
            "labels": {"kind": "emt"},
            "output_dir": str(tmp_path),
        }
    )
    layout = RunLayout(config.run_dir())
    seed = molecule("NH3")
    Dataset.create(layout.dataset).append(
        [seed], [0.0], [np.zeros((4, 3))], [Provenance(0, "initial", "EMT")]
    )
    candidates = _candidates(N_CANDIDATES)
    n = len(candidates)
    write_candidates(
        layout,
        0,
        Candidates.from_atoms(
            candidates, np.zeros(n), np.full(n, 0.1), np.full(n, 0.2), np.ones(n)
        ),
        {},
    )

    ctx = clean_context()
    start, labelled = ctx.Barrier(N_PROCESSES), ctx.Barrier(N_PROCESSES)
    run_processes(
        ctx, [(_label_then_append, (config, p, labelled, start)) for p in range(N_PROCESSES)]
    )

    candidates = steps.selected_structures(config, 0, list(range(N_CANDIDATES)))
    reference = []
    for atoms in candidates:
        atoms.calc = EMT()
        reference.append((atoms.get_potential_energy(), atoms.get_forces()))

    store = LabelStore(layout.labels)
    assert len(store) == N_CANDIDATES and not list(layout.labels.rglob("*.tmp*"))
    for index, (energy, forces) in enumerate(reference):
        label = steps.label_one(config, 0, index)  # read back, not recomputed
        assert label.ok and label.cached
        stored = store.get(label.key)
        assert stored.energy == energy and np.array_equal(stored.forces, forces)

    # every label once, none lost, in candidate order (whichever process appended first)
    dataset = Dataset(layout.dataset)
    assert dataset.hashes() == [structure_hash(a) for a in [seed, *candidates]]
    data = dataset.arrays()
    for i, (energy, forces) in enumerate(reference, start=1):
        assert data.energy[i] == energy
        np.testing.assert_array_equal(data.subset([i]).forces, forces)
