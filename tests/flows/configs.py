"""The tiny run config of the flow tests, with no side effect on import (a run's own
process imports it through the stand-in calculator, tests/flows/stand_in.py, and must keep
the PREFECT_HOME it was given; tests/conftest.py sets the test session's)."""

from __future__ import annotations

from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

TINY_CONFIG = """
system:
  name: {name}
  structures: {structures}
initial_data: {{n_structures: 6, displacement: 0.05, seed: 0}}
labels: {{kind: pyscf, method: RHF, basis: STO-3G}}
model: {{n_atom_basis: 16, n_interactions: 2, n_rbf: 10, cutoff: 4.0}}
committee: {{n_members: 2, seed: 0, bootstrap: true}}
training: {{max_epochs: 15, warm_start_epochs: 5, batch_size: 6}}
exploration: {{kind: adversarial, n_seeds: 4, n_steps: 5, temperature: 1000.0}}
selection: {{percentile: 0, rmsd_threshold: 0.001, max_selected: 2}}
convergence: {{force_std_threshold: 1.0e-6}}
budget: {{max_generations: 1, max_labels: 10}}
output_dir: {output_dir}
"""
