"""A member whose training diverges is retried at a lower learning rate, or fails with a
message naming it and the setting to change; NaN weights never reach a checkpoint or the
committee.

Training really diverges here: a real schnetpack model (the project's PaiNN) trained with
Adam at learning rates far too large for it (0.25 and 1e6; a sane one is 1e-3) on NH3
labelled by ASE's EMT, a stand-in oracle (the test is about the numerics of training,
not about the labels).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest
import torch
from ase.build import molecule

from advloop.flows import steps
from advloop.flows.config import RunConfig
from advloop.flows.run_folder import RunLayout
from advloop.potentials.checkpoint import CheckpointError, load_member, non_finite, save_member
from advloop.potentials.committee import Committee
from advloop.potentials.dataset import Arrays, Dataset, Provenance
from advloop.potentials.model import EnergyModel
from advloop.potentials.training import (
    DIVERGENCE_RETRIES,
    TrainingDivergedError,
    TrainingSettings,
    itrain,
    train_member,
)
from tests.conftest import TINY_SPEC, displaced, emt_arrays

SETTINGS = TrainingSettings(max_epochs=10, batch_size=4)


@pytest.fixture(scope="module")
def nh3() -> tuple[list, Arrays]:
    """12 displaced NH3 and their EMT labels."""
    structures = displaced(molecule("NH3"), 12, 0.05, np.random.default_rng(7))
    return structures, emt_arrays(structures)


def _model(seed: int = 0) -> EnergyModel:
    return EnergyModel(TINY_SPEC, torch.Generator().manual_seed(seed))


def test_a_diverging_member_is_retried_from_its_start_at_half_the_rate(nh3, caplog, tmp_path):
    _, data = nh3
    train, val = data.subset(range(9)), data.subset(range(9, 12))
    settings = replace(SETTINGS, learning_rate=0.25)
    with pytest.raises(TrainingDivergedError, match="loss became"):  # it really diverges
        list(itrain(_model(), train, val, settings, np.random.default_rng(0)))

    model = _model()
    with caplog.at_level(logging.WARNING, logger="advloop.potentials.training"):
        result = train_member(
            model, train, val, settings, np.random.default_rng(0), name="member 3"
        )
    assert 1 <= result.divergence_retries <= DIVERGENCE_RETRIES
    assert result.learning_rate == 0.25 / 2**result.divergence_retries
    retries = [r.getMessage() for r in caplog.records if r.name == "advloop.potentials.training"]
    assert len(retries) == result.divergence_retries
    assert retries[0].startswith(
        "member 3: training diverged at learning rate 0.25 (the training loss became"
    ) and retries[0].endswith("at 0.125")
    assert np.isfinite(result.train_loss) and np.isfinite(result.best_val_loss)

    # The retried member is an ordinary one: saved, loaded, in a committee, finite.
    assert not non_finite(model.state_dict())
    path = save_member(model, tmp_path / "member_3.pt", result.metrics())
    committee = Committee([load_member(path), load_member(path)])
    prediction = committee.predict_arrays(val.numbers, val.positions, val.n_atoms)
    assert np.isfinite(prediction.energy_mean).all() and np.isfinite(prediction.forces_mean).all()


def test_a_member_diverging_at_every_rate_fails_naming_it_and_the_setting(nh3, tmp_path):
    structures, data = nh3
    config = RunConfig.model_validate(
        {
            "system": {"name": "nh3-diverging", "structures": "nh3.xyz"},
            "model": TINY_SPEC.to_dict(),
            "output_dir": str(tmp_path),
            "training": {"learning_rate": 1e6, "max_epochs": 5, "batch_size": 4},
        }
    )
    layout = RunLayout(config.run_dir())
    Dataset.create(layout.dataset).append(
        structures,
        data.energy,
        np.split(data.forces, len(structures)),
        [Provenance(0, "initial", "EMT")] * len(structures),
    )
    with pytest.raises(TrainingDivergedError) as info:
        steps.train_step(config, 0, 1)
    assert str(info.value).startswith(
        "generation 0 member 1: training diverged at every learning rate tried (1e+06, 500000, "
        "250000); the last attempt: the training loss became nan at epoch 0. Lower "
        "training.learning_rate (now 1e+06), and check the dataset for absurd labels"
    )
    assert not layout.committee_dir(0).exists()  # no checkpoint, not even a partial one


def test_non_finite_weights_reach_no_checkpoint_and_no_committee(tmp_path):
    broken = _model()
    with torch.no_grad():
        next(broken.network.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match="refusing to write .* hold NaN or infinite"):
        save_member(broken, tmp_path / "gen_000" / "member_0.pt")
    assert not (tmp_path / "gen_000").exists()
    with pytest.raises(ValueError, match="committee member 1 has NaN or infinite weights"):
        Committee([_model(), broken])

    # a checkpoint damaged elsewhere (written without save_member)
    path = save_member(_model(), tmp_path / "member_1.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = broken.state_dict()
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="holds NaN or infinite weights"):
        load_member(path)
