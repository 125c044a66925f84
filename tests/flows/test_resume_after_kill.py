"""A run killed with SIGKILL again and again, at every step boundary and inside steps, and
re-run after each kill, ends with what an uninterrupted run ends with: the same generation
records, dataset records (hashes, provenance, positions, energies, forces) and stop
reason, every label computed once; after every kill the HDF5 file opens and holds
exactly the records committed before it.

How each kill lands where it should: the run goes in its own process, started as
``advloop run`` starts it (Prefect's embedded server on its own PREFECT_HOME), and
:func:`run` wraps one function on the run's path so that, at that point, the process
SIGKILLs its whole process group (the run, its Prefect server and any workers), as a
batch scheduler does. Each kill point is told by the run folder's state, not by a count
of calls, so it lands alike in a fresh run and in a resumed one, and each kill after the
first falls in the re-run of the previous one (a job preempted again and again). Points
between steps are after a step returned and before the flow goes on; points inside steps
are before a file is renamed into place or a commit marker raised. A few more kills land
at random moments, from outside. Nothing else in the run is changed.

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

from advloop.flows.run_folder import RunLayout
from advloop.potentials.dataset import Dataset
from tests.flows.stand_in import N_INITIAL, ROOT, calls, subprocess_env, write_config

# In the order a run meets them; each is armed in the re-run after the previous kill.
KILL_POINTS = (
    "initial-label",  # inside the initial labels: 3 of 6 stored
    "initial-appended",  # between steps: the initial records committed, nothing trained
    "training",  # inside training: a member's third epoch, no checkpoint yet
    "member-saved",  # between members: one checkpoint of generation 0 written
    "exploring",  # inside exploration: candidates in their temporary file
    "explored",  # between steps: candidates published, nothing selected
    "selected",  # between steps: the selection kept, nothing labelled
    "labelled",  # inside labelling: one label of generation 0 stored
    "appending",  # inside the append: rows flushed, commit marker not raised
    "appended",  # between steps: generation 0's records committed, no record
    "appended",  # the same window again, in the re-run of that kill
    "evaluated",  # between steps: calibration done, no record
    "recorded",  # between generations: generation 0 recorded
    "final-training",  # inside the final generation's training
)
RANDOM_KILLS = 3


# Keys of a generation record that say how long a step took, where a label came from
# (computed or read back from the store) or which config ran it (the two runs' differ by
# name), not what was computed.
def _volatile(key: str) -> bool:
    return "seconds" in key or key in ("labels_cached", "config_sha256")


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


def _n_labels(layout: RunLayout) -> int:
    return sum(not p.name.endswith(".tmp.npz") for p in layout.labels.glob("*/*.npz"))


def _arm(point: str, layout: RunLayout) -> None:
    """Install the kill at ``point`` (see :data:`KILL_POINTS`) in this process, which runs
    the run of ``layout``."""
    from advloop.calculators.label_store import LabelStore
    from advloop.flows import active_learning, run_folder, steps
    from advloop.potentials import training

    def gen0_recorded() -> bool:
        return bool(run_folder.read_generations(layout.root))

    if point == "initial-label":
        _kill_after(LabelStore, "put", lambda *a, **k: _n_labels(layout) == 3)
    elif point == "initial-appended":
        _kill_after(active_learning, "append_initial", lambda *a, **k: True)
    elif point in ("training", "final-training"):
        real_itrain = training.itrain

        def itrain(*args, **kwargs):
            for record in real_itrain(*args, **kwargs):
                yield record
                if record.epoch == 2 and (point == "training") != gen0_recorded():
                    _kill()

        training.itrain = itrain
    elif point == "member-saved":
        _kill_after(steps, "save_member", lambda *a, **k: True)
    elif point == "exploring":
        # np.savez of the candidates' temporary file (.gen_000.<pid>-<thread>.tmp.npz)
        _kill_after(
            np,
            "savez",
            lambda path, *a, **k: "/.gen_" in str(path) and str(path).endswith(".tmp.npz"),
        )
    elif point in ("explored", "selected", "evaluated"):
        name = {"explored": "explore", "selected": "select", "evaluated": "evaluate"}[point]
        _kill_after(active_learning, name, lambda *a, **k: True)
    elif point == "labelled":
        _kill_after(LabelStore, "put", lambda *a, **k: len(Dataset(layout.dataset)) > 0)
    elif point == "appending":  # flushed rows past the commit marker, after the initial ones
        _kill_after(
            h5py.File,
            "flush",
            lambda f: 0 < f.attrs["n_structures"] < f["structures/hash"].shape[0],
        )
    elif point == "appended":
        _kill_after(active_learning, "append_labels", lambda *a, **k: True)
    elif point == "recorded":
        _kill_after(run_folder, "append_generation", lambda *a, **k: True)
    else:
        raise ValueError(f"no kill point {point!r}")


def run(config_path: str, kill_at: str = "") -> None:
    """The body of a run's process: ``advloop run`` of ``config_path``, killed at
    ``kill_at`` if one is named."""
    from advloop.flows import embedded_server
    from advloop.flows.active_learning import run_active_learning
    from advloop.flows.report import GenerationTable
    from advloop.flows.validation import validate_config

    config = validate_config(config_path)
    if kill_at:
        _arm(kill_at, RunLayout(config.run_dir()))
    embedded_server.start()
    run_active_learning(config, GenerationTable(sys.stdout))


def _start(config: Path, prefect_home: Path, kill_at: str = "") -> subprocess.Popen:
    code = f"from tests.flows.test_resume_after_kill import run; run({str(config)!r}, {kill_at!r})"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=subprocess_env(prefect_home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _run_process(
    config: Path, prefect_home: Path, kill_at: str = ""
) -> subprocess.CompletedProcess:
    process = _start(config, prefect_home, kill_at)
    out, err = process.communicate(timeout=500)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _kill_at_random(config: Path, prefect_home: Path, delay_s: float) -> int:
    """Start a run and SIGKILL its process group ``delay_s`` after it started; its exit
    status (0 if it finished first)."""
    process = _start(config, prefect_home)
    try:
        process.communicate(timeout=delay_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    return process.returncode


def comparable(records: list[dict]) -> list[dict]:
    """Generation records without the keys that say how long a step took or whether a
    label was read back from the store."""
    return [{k: v for k, v in r.items() if not _volatile(k)} for r in records]


def assert_same_dataset(layout: RunLayout, reference: RunLayout) -> None:
    """The run's dataset holds the reference run's records: hashes, provenance, positions,
    energies and forces."""
    data, ref = Dataset(layout.dataset), Dataset(reference.dataset)
    assert data.hashes() == ref.hashes()
    assert data.provenance() == ref.provenance()
    a, b = data.arrays(), ref.arrays()
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_allclose(a.energy, b.energy, rtol=0, atol=1e-10)
    np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=1e-10)


def _records(layout: RunLayout) -> list[dict]:
    from advloop.flows.run_folder import read_generations

    return [r.to_dict() for r in read_generations(layout.root)]


def _check_after_kill(layout: RunLayout, ref_data: Dataset, ref_records: list[dict]) -> None:
    """The run folder just after a kill: the dataset opens and holds a prefix of the
    reference's records; the generation records are a prefix of the reference's."""
    if layout.dataset.exists():
        data = Dataset(layout.dataset)
        n = len(data)
        assert data.hashes() == ref_data.hashes()[:n]
        assert data.provenance() == ref_data.provenance()[:n]
    records = comparable(_records(layout))
    assert records == comparable(ref_records)[: len(records)]


@pytest.mark.slow
@pytest.mark.system
def test_a_run_killed_again_and_again_anywhere_ends_as_an_uninterrupted_run(tmp_path):
    prefect_home = tmp_path / "prefect-home"  # shared: its database is migrated once
    done = _run_process(write_config(tmp_path, "nh3-reference"), prefect_home)
    assert done.returncode == 0, done.stderr[-4000:]
    reference = RunLayout(tmp_path / "runs" / "nh3-reference")
    ref_summary = json.loads(reference.summary.read_text())
    ref_data = Dataset(reference.dataset)
    ref_records = _records(reference)
    assert ref_summary["labels_explored"] >= 2  # else there is no "middle" of labelling

    config, name = write_config(tmp_path, "nh3-killed"), "nh3-killed"
    layout = RunLayout(tmp_path / "runs" / name)
    for point in KILL_POINTS:
        killed = _run_process(config, prefect_home, kill_at=point)
        assert killed.returncode == -signal.SIGKILL, f"{point}:\n{killed.stderr[-4000:]}"
        _check_after_kill(layout, ref_data, ref_records)
        if point == "appended":  # the defect window: labels appended, generation unrecorded
            assert len(Dataset(layout.dataset)) == N_INITIAL + ref_records[0]["labels_added"]
            assert not _records(layout)
    rng = np.random.default_rng(0)
    for delay in rng.uniform(8.0, 30.0, RANDOM_KILLS):
        _kill_at_random(config, prefect_home, float(delay))
        _check_after_kill(layout, ref_data, ref_records)

    # Re-running the same command once more finishes the run.
    done = _run_process(config, prefect_home)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(layout.summary.read_text())
    assert summary["stop_reason"] == ref_summary["stop_reason"] == "max_generations"
    assert summary["labels_explored"] == ref_summary["labels_explored"]
    assert comparable(_records(layout)) == comparable(ref_records)

    assert_same_dataset(layout, reference)

    computed = calls(tmp_path, name)
    assert len(computed) == len(set(computed)) == len(ref_data)  # no label computed twice
