"""Shared fixtures: tiny NH3 data labelled by a stand-in oracle, tiny committees, and a
real Prefect backend for flow and benchmark tests: Prefect's test harness (a temporary
local server on SQLite) with PREFECT_HOME in a temporary folder, so results and the
database never leak between test sessions."""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.emt import EMT

from advloop.potentials.dataset import Arrays
from advloop.potentials.model import EnergyModel, ModelSpec
from advloop.potentials.training import TrainingSettings, train_member

_HOME = tempfile.mkdtemp(prefix="advloop-prefect-")
# Must be set before prefect is imported (tests import it lazily, inside fixtures/tests).
os.environ["PREFECT_HOME"] = _HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

TINY_SPEC = ModelSpec(n_atom_basis=16, n_interactions=2, n_rbf=10, cutoff=4.0)


def displaced(base: Atoms, n: int, std: float, rng: np.random.Generator) -> list[Atoms]:
    out = []
    for _ in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(0.0, std, atoms.positions.shape)
        out.append(atoms)
    return out


def emt_arrays(structures: list[Atoms]) -> Arrays:
    """Labels from ASE's EMT: a stand-in oracle for tests about learning, not about DFT."""
    energies, forces = [], []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = EMT()
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    return Arrays(
        numbers=np.concatenate([a.numbers for a in structures]).astype(np.int64),
        positions=np.concatenate([a.positions for a in structures]),
        forces=np.concatenate(forces),
        energy=np.array(energies),
        n_atoms=np.array([len(a) for a in structures]),
        cell=np.zeros((len(structures), 3, 3)),
        pbc=np.zeros((len(structures), 3), dtype=bool),
    )


def make_member(seed: int, spec: ModelSpec = TINY_SPEC, dtype=torch.float64) -> EnergyModel:
    model = EnergyModel(spec, torch.Generator().manual_seed(seed))
    model.network.to(dtype)
    return model


@pytest.fixture(scope="session")
def nh3_emt_data() -> Arrays:
    """Twenty displaced NH3 labelled by EMT (stand-in oracle)."""
    rng = np.random.default_rng(7)
    return emt_arrays(displaced(molecule("NH3"), 20, 0.05, rng))


@pytest.fixture(scope="session")
def trained_members(nh3_emt_data) -> list[EnergyModel]:
    """Four members trained briefly on the EMT-labelled NH3 set, differing by seed."""
    settings = TrainingSettings(max_epochs=40, batch_size=10, learning_rate=3e-3)
    members = []
    for seed in range(4):
        model = make_member(seed, dtype=torch.float64)
        train_member(model, nh3_emt_data, None, settings, np.random.default_rng(seed))
        members.append(model)
    return members


@pytest.fixture(scope="session")
def prefect_backend():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
    shutil.rmtree(_HOME, ignore_errors=True)
