"""A run killed with SIGKILL in the middle of labelling resumes to the same dataset as an
uninterrupted run, and no label is computed twice.

Labels come from ASE's EMT, a stand-in for DFT (the test is about resumption, not about
the numbers): :func:`counting_emt` wraps it to sleep before returning (so the run can be
caught mid-labelling) and to append the hash of every structure it computed to a
counter file. The killed run and its resumption are separate processes, each with
Prefect's embedded server on its own PREFECT_HOME, killed as a whole process group as a
batch scheduler would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT

from potentials.dataset import Dataset
from potentials.hashing import structure_hash
from potentials.run_layout import RunLayout

ROOT = Path(__file__).resolve().parents[2]
N_INITIAL = 6  # initial_data.n_structures of the tiny config

_RUN = """
import sys
from flows.active_learning import run_active_learning
from flows.config import validate_config
from flows.report import GenerationTable
run_active_learning(validate_config(sys.argv[1]), GenerationTable(sys.stdout))
"""


class CountingEMT(EMT):
    """EMT that sleeps ``delay`` s per calculation, then appends the structure's hash to
    the file ``counter``."""

    def __init__(self, counter: str, delay: float = 0.0):
        super().__init__()
        self.counter, self.delay = Path(counter), delay

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        time.sleep(self.delay)
        with open(self.counter, "a") as f:
            f.write(structure_hash(self.atoms) + "\n")


def counting_emt(counter: str, delay: float = 0.0) -> CountingEMT:
    """``labels.python`` factory of :class:`CountingEMT`."""
    return CountingEMT(counter, delay)


def _config(tmp_path: Path, name: str, delay: float) -> Path:
    from tests.flows.conftest import EXAMPLES, TINY_CONFIG

    text = TINY_CONFIG.format(name=name, structures=EXAMPLES / "structures" / "nh3.xyz",
                              output_dir=tmp_path / "runs").replace("max_selected: 2", "max_selected: 3")
    counter = tmp_path / f"{name}-calls.txt"
    text += ("labels: {calculator: python, python: 'tests.flows.test_resume_after_kill:counting_emt', "
             f"options: {{counter: '{counter}', delay: {delay}}}}}\n")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env


def _n_labels(run_dir: Path) -> int:
    """Labels committed to the store (not the temporary files renamed into place)."""
    return sum(not p.name.endswith(".tmp.npz") for p in RunLayout(run_dir).labels.glob("*/*.npz"))


def _calls(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.slow
def test_run_killed_mid_labelling_resumes_to_the_same_dataset(prefect_backend, tmp_path):
    from flows.active_learning import run_active_learning
    from flows.config import validate_config
    from flows.report import GenerationTable

    # The uninterrupted reference, in this process.
    reference = validate_config(_config(tmp_path, "nh3-reference", delay=0.0))
    ref_summary = run_active_learning(reference, GenerationTable(open(os.devnull, "w")))
    ref_data = Dataset(RunLayout(reference.run_dir()).dataset)
    assert ref_summary["labels_explored"] >= 2  # else there is no "middle" of labelling

    # The same run in a subprocess, killed once one of generation 0's labels is stored.
    config = validate_config(_config(tmp_path, "nh3-killed", delay=0.6))
    run_dir, log = config.run_dir(), tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", _RUN, str(tmp_path / "nh3-killed.yaml")],
                                cwd=ROOT, env=_env(tmp_path), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.time() + 300
        while _n_labels(run_dir) < N_INITIAL + 1:
            assert proc.poll() is None, f"the run ended before it was killed:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, f"no generation-0 label in 300 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its embedded Prefect server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    layout = RunLayout(run_dir)
    counter = tmp_path / "nh3-killed-calls.txt"
    assert len(Dataset(layout.dataset)) == N_INITIAL  # killed before the generation's append
    assert not layout.generations.exists()
    assert len(_calls(counter)) == N_INITIAL + 1

    # Re-running the same command finishes the run.
    done = subprocess.run([sys.executable, "-c", _RUN, str(tmp_path / "nh3-killed.yaml")],
                          cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(layout.summary.read_text())
    assert summary["stop_reason"] == ref_summary["stop_reason"] == "max_generations"

    data = Dataset(layout.dataset)
    assert data.hashes() == ref_data.hashes()
    assert data.provenance() == ref_data.provenance()
    a, b = data.arrays(), ref_data.arrays()
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_allclose(a.energy, b.energy, rtol=0, atol=1e-10)
    np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=1e-10)

    calls = _calls(counter)
    assert len(calls) == len(set(calls)) == N_INITIAL + summary["labels_explored"]  # none twice
    [record] = [r for r in map(json.loads, layout.generations.read_text().splitlines())
                if r["generation"] == 0]
    assert record["labels_cached"] >= 1  # the label stored before the kill was read back
