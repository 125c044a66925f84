"""A run killed with SIGKILL at each stage in turn (training, exploration, labelling,
appending) and re-run after each kill ends with the dataset of an uninterrupted run, and
no label is computed twice; after every kill the HDF5 file opens and holds every record
committed before it.

How each kill lands in its stage: the run goes in its own process, started as
``advloop run`` starts it (Prefect's embedded server on its own PREFECT_HOME, in the
run's process group), and :func:`run` wraps one function on the stage's path so that,
at that point, the process SIGKILLs its whole process group, the run and its Prefect
server, as a batch scheduler does:

- training: after the third epoch of a member (no checkpoint of it written yet);
- exploration: once the candidates are in their temporary file, before the rename that
  publishes them;
- labelling: once the first label of generation 0 is stored;
- appending: once the records' rows are written into the HDF5 file and flushed, before
  the commit marker that makes them visible (``potentials.dataset``).

Polling the run folder from outside catches exploration and appending (milliseconds
each) only by luck; a kill from inside lands at the same point in every run and is as
abrupt (no cleanup, no ``finally``, nothing more written). Nothing else in the run is
changed. Each kill after the first falls in the re-run of the previous one, as for a job
preempted again and again: every resumption is exercised, with one process per stage.
Labels come from ASE's EMT (tests/flows/stand_in.py), a stand-in for DFT: the test is
about resumption, not about the numbers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from potentials.dataset import Dataset
from potentials.run_layout import RunLayout
from tests.flows.stand_in import N_INITIAL, ROOT, calls, subprocess_env, write_config

STAGES = ("training", "exploration", "labelling", "appending")


def _kill() -> None:
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _kill_after(owner, name: str, when) -> None:
    """Make ``owner.<name>`` SIGKILL the process group right after a call for which
    ``when(*args, **kwargs)`` holds."""
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        if when(*args, **kwargs):
            _kill()
        return result

    setattr(owner, name, wrapper)


def _arm(stage: str, layout: RunLayout) -> None:
    """Install the kill of ``stage`` (see the module docstring) in this process, which
    runs the run of ``layout``. Each kill point is told by the run's state, not by a
    count of calls, so that it lands alike in a fresh run and in a resumed one."""
    from calculators.label_store import LabelStore
    from flows import steps
    from potentials import training

    if stage == "training":
        real_itrain = training.itrain

        def itrain(*args, **kwargs):
            for record in real_itrain(*args, **kwargs):
                yield record
                if record.epoch == 2:
                    _kill()

        training.itrain = itrain
    elif stage == "exploration":
        _kill_after(steps, "write", lambda path, *a, **k: str(path).endswith(".extxyz.tmp"))
    elif stage == "labelling":  # initial labels are stored before the dataset has records
        _kill_after(LabelStore, "put", lambda *a, **k: len(Dataset(layout.dataset)) > 0)
    elif stage == "appending":  # flushed rows past the commit marker, after the initial ones
        _kill_after(h5py.File, "flush",
                    lambda f: 0 < f.attrs["n_structures"] < f["structures/hash"].shape[0])
    else:
        raise ValueError(f"no kill point for stage {stage!r}")


def run(config_path: str, kill_at: str = "") -> None:
    """The body of a run's process: ``advloop run`` of ``config_path``, killed at stage
    ``kill_at`` if one is named."""
    from flows.active_learning import run_active_learning
    from flows.config import validate_config
    from flows.report import GenerationTable

    config = validate_config(config_path)
    if kill_at:
        _arm(kill_at, RunLayout(config.run_dir()))
    run_active_learning(config, GenerationTable(sys.stdout))


def _run_process(config: Path, prefect_home: Path, kill_at: str = "") -> subprocess.CompletedProcess:
    code = f"from tests.flows.test_resume_after_kill import run; run({str(config)!r}, {kill_at!r})"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(prefect_home),
                          capture_output=True, text=True, timeout=500, start_new_session=True)


def _check_killed_at(stage: str, layout: RunLayout, ref_data: Dataset) -> None:
    """The run folder just after the kill: the dataset opens and holds the records
    committed before it, and the kill fell in ``stage``."""
    data = Dataset(layout.dataset)
    n = len(data)
    assert data.hashes() == ref_data.hashes()[:n]
    assert data.provenance() == ref_data.provenance()[:n]
    assert n == N_INITIAL  # killed before the generation's records were committed
    trained = list(layout.committee_dir(0).glob("member_*.pt"))
    n_labels = sum(not p.name.endswith(".tmp.npz") for p in layout.labels.glob("*/*.npz"))
    if stage == "training":
        assert len(trained) < 2 and not layout.candidates(0).exists()
    elif stage == "exploration":
        assert len(trained) == 2 and not layout.candidates(0).exists()
        assert layout.candidates(0).with_name("gen_000.extxyz.tmp").exists()
    elif stage == "labelling":
        assert n_labels == N_INITIAL + 1
    elif stage == "appending":
        assert n_labels == len(ref_data)
        with h5py.File(layout.dataset, "r") as f:  # the killed append's rows, uncommitted
            assert f["structures/hash"].shape[0] == len(ref_data) > n
    assert not layout.generations.exists()


@pytest.mark.slow
def test_a_run_killed_at_each_stage_in_turn_resumes_to_the_same_dataset(tmp_path):
    prefect_home = tmp_path / "prefect-home"  # shared: its database is migrated once
    done = _run_process(write_config(tmp_path, "nh3-reference"), prefect_home)
    assert done.returncode == 0, done.stderr[-4000:]
    reference = RunLayout(tmp_path / "runs" / "nh3-reference")
    ref_summary = json.loads(reference.summary.read_text())
    ref_data = Dataset(reference.dataset)
    assert ref_summary["labels_explored"] >= 2  # else there is no "middle" of labelling

    config, name = write_config(tmp_path, "nh3-killed"), "nh3-killed"
    layout = RunLayout(tmp_path / "runs" / name)
    for stage in STAGES:
        killed = _run_process(config, prefect_home, kill_at=stage)
        assert killed.returncode == -signal.SIGKILL, f"{stage}:\n{killed.stderr[-4000:]}"
        _check_killed_at(stage, layout, ref_data)

    # Re-running the same command once more finishes the run.
    done = _run_process(config, prefect_home)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(layout.summary.read_text())
    assert summary["stop_reason"] == ref_summary["stop_reason"] == "max_generations"
    assert summary["labels_explored"] == ref_summary["labels_explored"]

    data = Dataset(layout.dataset)
    assert data.hashes() == ref_data.hashes()
    assert data.provenance() == ref_data.provenance()
    a, b = data.arrays(), ref_data.arrays()
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_allclose(a.energy, b.energy, rtol=0, atol=1e-10)
    np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=1e-10)

    computed = calls(tmp_path, name)
    assert len(computed) == len(set(computed)) == len(ref_data)  # no label computed twice
