"""Tests of training one committee member, its checkpoints and its settings."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.emt import EMT

from advloop.potentials.checkpoint import CheckpointError, load_member, save_member
from advloop.potentials.dataset import Arrays, split_indices
from advloop.potentials.model import EnergyModel, ModelSpec, build_graph, energy_and_forces
from advloop.potentials.training import (
    Batches,
    EpochRecord,
    TrainingSettings,
    evaluate_loss,
    itrain,
    train_member,
)
from tests.conftest import displaced, emt_arrays, make_member

SPEC = ModelSpec(n_atom_basis=16, n_interactions=2, n_rbf=10, cutoff=4.0)


def _new_model(seed: int, spec: ModelSpec = SPEC) -> EnergyModel:
    return EnergyModel(spec, torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def emt_nh3() -> tuple[Arrays, Arrays]:
    """(train, val): 20 randomly displaced NH3 labelled by EMT, split 15/5.

    EMT is a stand-in oracle: a cheap ASE calculator (it has parameters for H and N) in
    place of DFT, so that training has a smooth, learnable target.
    """
    rng = np.random.default_rng(0)
    structures, energies, forces = [], [], []
    for _ in range(20):
        atoms = molecule("NH3")
        atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
        atoms.calc = EMT()
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
        structures.append(atoms)
    data = Arrays(
        numbers=np.concatenate([a.numbers for a in structures]),
        positions=np.concatenate([a.positions for a in structures]),
        forces=np.concatenate(forces),
        energy=np.array(energies),
        n_atoms=np.full(20, 4),
        cell=np.zeros((20, 3, 3)),
        pbc=np.zeros((20, 3), dtype=bool),
    )
    train, val = split_indices(len(data), 0.25, np.random.default_rng(1))
    return data.subset(train), data.subset(val)


SETTINGS = TrainingSettings(
    max_epochs=30, batch_size=4, learning_rate=5e-3, patience=30, val_fraction=0.25
)


@pytest.fixture(scope="module")
def trained(emt_nh3) -> tuple[EnergyModel, float, object]:
    """(trained model, force MAE of the same model before training, TrainingResult)."""
    train, val = emt_nh3
    model = _new_model(seed=0)
    untrained = _new_model(seed=0)
    untrained.fit_normalisation(train.numbers, train.n_atoms, train.energy, train.forces)
    _, _, untrained_mae = evaluate_loss(untrained, Batches(val, SPEC.cutoff), SETTINGS)
    result = train_member(model, train, val, SETTINGS, np.random.default_rng(2))
    return model, untrained_mae, result


def test_train_member_reduces_validation_force_error(emt_nh3, trained) -> None:
    train, val = emt_nh3
    model, untrained_mae, result = trained
    assert untrained_mae > 1.0  # eV/Å: the untrained model is far off
    assert result.val_forces_mae < 0.25 * untrained_mae
    assert result.epochs == SETTINGS.max_epochs
    assert 0 <= result.best_epoch < result.epochs
    # the returned model holds the weights of the best epoch
    _, _, mae_now = evaluate_loss(model, Batches(val, SPEC.cutoff), SETTINGS)
    assert mae_now == pytest.approx(result.val_forces_mae, rel=1e-5)
    assert not model.training
    assert set(result.metrics()) >= {"epochs", "best_epoch", "val_forces_mae"}


def test_itrain_yields_records_and_stops_at_max_epochs(emt_nh3) -> None:
    train, val = emt_nh3
    settings = TrainingSettings(max_epochs=8, batch_size=4, learning_rate=5e-3)
    records = list(itrain(_new_model(seed=1), train, val, settings, np.random.default_rng(3)))
    assert [r.epoch for r in records] == list(range(8))
    assert all(isinstance(r, EpochRecord) for r in records)
    assert all(r.val_loss is not None and r.val_forces_mae is not None for r in records)
    assert records[-1].train_loss < 0.5 * records[0].train_loss
    assert records[-1].val_loss < records[0].val_loss
    assert records[0].learning_rate == settings.learning_rate

    # it is a generator: the caller may stop it early, and nothing runs ahead
    gen = itrain(_new_model(seed=1), train, None, settings, np.random.default_rng(3))
    first = next(gen)
    assert first.epoch == 0 and first.val_loss is None and first.val_forces_mae is None
    gen.close()


def test_itrain_warm_start_keeps_normalisation_and_epoch_budget(emt_nh3) -> None:
    train, _ = emt_nh3
    model = _new_model(seed=1)
    model.element_energy[7] = -3.0
    model.scale.fill_(2.0)
    settings = TrainingSettings(
        max_epochs=10,
        warm_start_epochs=3,
        batch_size=8,
        warm_start_learning_rate=1e-4,
        warm_start_warmup_epochs=2,
    )
    records = list(itrain(model, train, None, settings, np.random.default_rng(0), warm_start=True))
    assert len(records) == 3
    # the rate ramps up linearly over the warm-up epochs, then holds
    assert [r.learning_rate for r in records] == pytest.approx([0.5e-4, 1e-4, 1e-4])
    assert model.element_energy[7].item() == -3.0 and model.scale.item() == 2.0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_warm_start_reaches_scratch_validation_error_in_fewer_epochs(seed: int) -> None:
    """One active-learning step: 40 labelled structures grow to 48 (EMT stand-in oracle).

    The same initial member is trained from scratch on the 48 and, warm-started, from its
    weights after 100 epochs on the 40; the warm start must reach the scratch run's best
    validation loss (100 epochs) in fewer epochs than the scratch run needed for it.
    """
    pool = emt_arrays(displaced(molecule("NH3"), 48 + 16, 0.05, np.random.default_rng(seed)))
    grown, val = pool.subset(np.arange(48)), pool.subset(np.arange(48, 64))
    before = grown.subset(np.arange(40))
    settings = TrainingSettings(
        max_epochs=100,
        warm_start_epochs=100,
        batch_size=10,
        learning_rate=1e-3,
        warm_start_learning_rate=5e-4,
        warm_start_warmup_epochs=5,
    )

    def val_curve(model: EnergyModel, data: Arrays, warm: bool) -> np.ndarray:
        return np.array(
            [
                r.val_loss
                for r in itrain(
                    model, data, val, settings, np.random.default_rng(1), warm_start=warm
                )
            ]
        )

    scratch = val_curve(make_member(seed), grown, warm=False)
    previous = make_member(seed)
    val_curve(previous, before, warm=False)
    warm = val_curve(previous, grown, warm=True)

    target, scratch_epochs = scratch.min(), int(scratch.argmin()) + 1
    reached = np.nonzero(warm <= target)[0]
    assert len(reached), f"warm start never reached {target:.4g} (best {warm.min():.4g})"
    assert reached[0] + 1 < scratch_epochs


def test_itrain_rejects_empty_training_set(emt_nh3) -> None:
    train, _ = emt_nh3
    with pytest.raises(ValueError, match="empty"):
        next(itrain(_new_model(0), train.subset([]), None, SETTINGS, np.random.default_rng(0)))


def _energies(model: EnergyModel, data: Arrays) -> np.ndarray:
    graph = build_graph(data.numbers, data.positions, data.n_atoms, model.spec.cutoff)
    energy, forces = energy_and_forces(model, graph, torch.as_tensor(data.positions))
    return np.concatenate([energy.detach().numpy(), forces.numpy().ravel()])


def test_checkpoint_round_trip(tmp_path: Path, emt_nh3, trained) -> None:
    _, val = emt_nh3
    model = trained[0]
    path = save_member(model, tmp_path / "gen_000" / "member_0.pt", metrics={"mae": 0.1})
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    loaded = load_member(path, expected=SPEC)
    loaded.eval()
    assert loaded.spec == SPEC
    np.testing.assert_array_equal(_energies(loaded, val), _energies(model, val))
    assert loaded.element_energy[7].item() == model.element_energy[7].item() != 0.0
    assert loaded.scale.item() == model.scale.item() != 1.0

    as_f64 = load_member(path, dtype=torch.float64)
    assert next(as_f64.network.parameters()).dtype == torch.float64
    np.testing.assert_allclose(_energies(as_f64, val), _energies(model, val), rtol=1e-4, atol=1e-3)


def test_load_member_refuses_other_spec(tmp_path: Path) -> None:
    path = save_member(_new_model(0), tmp_path / "member_0.pt")
    other = ModelSpec(
        architecture="schnet", n_atom_basis=16, n_interactions=2, n_rbf=10, cutoff=4.0
    )
    with pytest.raises(CheckpointError) as info:
        load_member(path, expected=other)
    message = str(info.value)
    assert str(SPEC.to_dict()) in message
    assert str(other.to_dict()) in message


def test_unreadable_checkpoints_raise_checkpoint_error(tmp_path: Path) -> None:
    path = save_member(_new_model(0), tmp_path / "member_0.pt")
    data = path.read_bytes()

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    # bit rot inside the largest tensor's bytes (torch.load alone would not notice)
    with zipfile.ZipFile(path) as archive:
        members = sorted(archive.infolist(), key=lambda i: i.header_offset)
    k = max(range(len(members) - 1), key=lambda k: members[k].file_size)
    middle = members[k + 1].header_offset - members[k].file_size // 2
    flipped = bytearray(data)
    flipped[middle : middle + 8] = b"\xff" * 8
    corrupted = tmp_path / "corrupted.pt"
    corrupted.write_bytes(bytes(flipped))
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "something-else", "weights": torch.zeros(3)}, foreign)

    for bad in (truncated, garbage, corrupted, foreign, tmp_path / "missing.pt"):
        with pytest.raises(CheckpointError):
            load_member(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"val_fraction": 1.0},
        {"val_fraction": -0.1},
        {"learning_rate": -1e-3},
        {"learning_rate": 0.0},
        {"max_epochs": 0},
        {"energy_weight": 0.0, "forces_weight": 0.0},
        {"forces_weight": -1.0},
        {"lr_factor": 1.0},
    ],
)
def test_training_settings_reject_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        TrainingSettings(**kwargs)
