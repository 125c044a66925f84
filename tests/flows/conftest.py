"""A real Prefect backend for flow tests: Prefect's test harness (a temporary local server
on SQLite) with PREFECT_HOME in a temporary folder, so results and the database never leak
between test sessions."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_HOME = tempfile.mkdtemp(prefix="advloop-prefect-")
# Must be set before prefect is imported (tests import it lazily, inside fixtures/tests).
os.environ["PREFECT_HOME"] = _HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="session")
def prefect_backend():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
    shutil.rmtree(_HOME, ignore_errors=True)


TINY_CONFIG = """
system:
  name: {name}
  structures: {structures}
initial_data: {{n_structures: 6, displacement: 0.05, seed: 0}}
dft: {{method: RHF, basis: STO-3G}}
model: {{n_atom_basis: 16, n_interactions: 2, n_rbf: 10, cutoff: 4.0}}
committee: {{n_members: 2, seed: 0, bootstrap: true}}
training: {{max_epochs: 15, warm_start_epochs: 5, batch_size: 6}}
exploration: {{n_seeds: 4}}
attack: {{n_steps: 5, temperature: 1000.0}}
selection: {{percentile: 0, rmsd_threshold: 0.001, max_selected: 2}}
convergence: {{force_std_threshold: 1.0e-6}}
budget: {{max_generations: 1, max_labels: 10}}
output_dir: {output_dir}
"""


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG.format(name="nh3-tiny", structures=EXAMPLES / "structures" / "nh3.xyz",
                                       output_dir=tmp_path / "runs"))
    return path
