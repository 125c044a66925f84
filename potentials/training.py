"""Training one committee member on energies and forces.

:func:`itrain` yields one :class:`EpochRecord` per epoch (ASE ``irun`` style) so the caller
can log, trace or stop; :func:`train_member` drains it with early stopping on the
validation split and returns the model at its best validation loss.

Loss per batch: ``w_E · mean((ΔE / n_atoms)²) + w_F · mean(ΔF²)`` in eV² and (eV/Å)².

A member whose training diverges (a non-finite loss or weight, detected before the
optimizer steps on it) is retried from its starting weights at half the learning rate,
at most :data:`DIVERGENCE_RETRIES` times; after that :class:`TrainingDivergedError` says
which member and what to change. A diverged model is never handed back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from advloop.constraints import (
    NonNegativeFloat,
    NonNegativeInt,
    OpenFraction,
    PositiveFloat,
    PositiveInt,
    UnitInterval,
    check_fields,
)
from advloop.potentials.checkpoint import non_finite
from advloop.potentials.dataset import Arrays
from advloop.potentials.model import EnergyModel, Graph, build_graph, energy_and_forces

_log = logging.getLogger(__name__)

#: How often a member whose training diverged is retried (from its starting weights, each
#: time at half the previous learning rate) before :func:`train_member` gives up.
DIVERGENCE_RETRIES = 2


class TrainingDivergedError(FloatingPointError):
    """Training produced a non-finite loss or non-finite weights."""


@dataclass(frozen=True)
class TrainingSettings:
    """How to train one member. Learning rates are for Adam; epochs are full passes."""

    __pydantic_config__ = {"extra": "forbid", "allow_inf_nan": False}

    # epochs of a member trained from scratch
    max_epochs: PositiveInt = 300
    # epochs of a member started from its previous generation's weights
    warm_start_epochs: PositiveInt = 120
    # structures per batch
    batch_size: PositiveInt = 16
    # Adam's learning rate from scratch
    learning_rate: PositiveFloat = 1e-3
    # Adam's learning rate at a warm start
    warm_start_learning_rate: PositiveFloat = 5e-4
    # epochs of linear learning-rate ramp at a warm start
    warm_start_warmup_epochs: NonNegativeInt = 5
    # weight of the energy term of the loss (per-atom energy MSE)
    energy_weight: NonNegativeFloat = 0.2
    # weight of the force term of the loss
    forces_weight: NonNegativeFloat = 1.0
    # share of the labels held out for validation and early stopping
    val_fraction: UnitInterval = 0.2
    # epochs without a better validation loss before training stops
    patience: PositiveInt = 60
    # epochs without a better validation loss before the learning rate drops
    lr_patience: PositiveInt = 20
    # the learning rate is multiplied by this when it drops
    lr_factor: OpenFraction = 0.5
    # the learning rate never drops below this
    min_learning_rate: PositiveFloat = 1e-5

    def __post_init__(self) -> None:
        check_fields(self, "training")
        if self.energy_weight + self.forces_weight == 0:
            raise ValueError(
                "training.energy_weight and forces_weight are both 0: nothing "
                "would be fitted; give at least one a positive weight"
            )


def resolve_device(choice: Literal["auto", "cpu", "cuda"]) -> torch.device:
    """The device to train on: ``auto`` is CUDA where this process sees a GPU, else CPU.

    Raises RuntimeError for ``cuda`` where no GPU is visible (checked here, in the process
    that trains, which on a cluster is not the one that read the config).
    """
    if choice not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {choice!r}")
    if choice == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if choice == "cuda":
        raise RuntimeError(
            "compute.device is 'cuda' but torch sees no GPU on this machine "
            "(torch.cuda.is_available() is False); train on a GPU node, or set "
            "compute.device: auto"
        )
    return torch.device("cpu")


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float | None
    val_energy_mae: float | None  # eV per atom
    val_forces_mae: float | None  # eV/Å
    learning_rate: float


class Batches:
    """Labelled structures with their neighbour lists built once, collated on demand."""

    def __init__(self, data: Arrays, cutoff: float, dtype: torch.dtype = torch.float32):
        self.data = data
        self.dtype = dtype
        self._graph = build_graph(
            data.numbers, data.positions, data.n_atoms, cutoff, data.cell, data.pbc
        )
        start = data.atom_start
        # pairs grouped by structure, for collation
        pair_struct = self._graph.idx_m[self._graph.idx_i].numpy()
        self._pair_start = np.searchsorted(pair_struct, np.arange(len(data) + 1))
        self._atom_start = np.concatenate([start, [len(data.numbers)]])

    def __len__(self) -> int:
        return len(self.data)

    def collate(
        self, indices: np.ndarray
    ) -> tuple[Graph, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(graph, positions [n_atoms,3] Å, energy [n_structures] eV, forces [n_atoms,3] eV/Å)."""
        g, d = self._graph, self.data
        atom_rows = np.concatenate(
            [np.arange(self._atom_start[s], self._atom_start[s + 1]) for s in indices]
        )
        pair_rows = np.concatenate(
            [np.arange(self._pair_start[s], self._pair_start[s + 1]) for s in indices]
        )
        new_index = np.full(len(d.numbers), -1, dtype=np.int64)
        new_index[atom_rows] = np.arange(len(atom_rows))
        remap = torch.as_tensor(new_index)
        n_atoms = d.n_atoms[indices]
        graph = Graph(
            numbers=g.numbers[atom_rows],
            idx_m=torch.as_tensor(np.repeat(np.arange(len(indices)), n_atoms)),
            n_atoms=torch.as_tensor(n_atoms),
            idx_i=remap[g.idx_i[pair_rows]],
            idx_j=remap[g.idx_j[pair_rows]],
            shifts=g.shifts[pair_rows],
            cells=g.cells[indices],
        )
        positions = torch.as_tensor(d.positions[atom_rows], dtype=self.dtype)
        energy = torch.as_tensor(d.energy[indices], dtype=torch.float64)
        forces = torch.as_tensor(d.forces[atom_rows], dtype=self.dtype)
        return graph, positions, energy, forces


def _on(batch: tuple[Graph, torch.Tensor, torch.Tensor, torch.Tensor], device: torch.device):
    graph, positions, energy, forces = batch
    if device.type == "cpu":
        return batch
    return graph.to(device), positions.to(device), energy.to(device), forces.to(device)


def _loss(model: EnergyModel, batch, settings: TrainingSettings, create_graph: bool):
    graph, positions, energy, forces = batch
    e_pred, f_pred = energy_and_forces(model, graph, positions, create_graph=create_graph)
    n = graph.n_atoms.to(torch.float64)
    de = (e_pred - energy) / n
    df = f_pred - forces
    loss = settings.energy_weight * de.square().mean() + settings.forces_weight * df.square().mean()
    return loss, de.detach(), df.detach()


def itrain(
    model: EnergyModel,
    train: Arrays,
    val: Arrays | None,
    settings: TrainingSettings,
    rng: np.random.Generator,
    warm_start: bool = False,
    device: torch.device | str = "cpu",
) -> Iterator[EpochRecord]:
    """Train ``model`` in place on ``device`` (the model is moved there), yielding one
    record per epoch.

    A fresh model gets its per-element energies and force scale fitted to ``train``
    first; a warm-started one keeps them (so its learned part stays meaningful) and runs
    at the warm-start learning rate, reached by a linear ramp over
    ``warm_start_warmup_epochs``, for at most ``warm_start_epochs``.
    """
    if len(train) == 0:
        raise ValueError("cannot train on an empty training set")
    device = torch.device(device)
    model.to(device)
    if not warm_start:
        model.fit_normalisation(train.numbers, train.n_atoms, train.energy, train.forces)
    dtype = next(model.network.parameters()).dtype
    cutoff = model.spec.cutoff
    train_batches = Batches(train, cutoff, dtype)
    val_batches = Batches(val, cutoff, dtype) if val is not None and len(val) else None
    lr = settings.warm_start_learning_rate if warm_start else settings.learning_rate
    epochs = settings.warm_start_epochs if warm_start else settings.max_epochs
    optimizer = torch.optim.Adam(model.network.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        factor=settings.lr_factor,
        patience=settings.lr_patience,
        min_lr=settings.min_learning_rate,
    )
    n_batches = -(-len(train_batches) // settings.batch_size)
    warmup_steps = settings.warm_start_warmup_epochs * n_batches if warm_start else 0
    step = 0
    for epoch in range(epochs):
        model.train()
        order = rng.permutation(len(train_batches))
        total, count = 0.0, 0
        for start in range(0, len(order), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            if step < warmup_steps:
                # A fresh Adam takes steps of about ±lr in every parameter until its
                # moment estimates settle, which throws a trained model far from its
                # minimum; ramping the rate up linearly keeps the warm start warm.
                optimizer.param_groups[0]["lr"] = lr * (step + 1) / warmup_steps
            step += 1
            loss, _, _ = _loss(
                model, _on(train_batches.collate(idx), device), settings, create_graph=True
            )
            if not torch.isfinite(loss):  # before the step, which would spread it to every weight
                raise TrainingDivergedError(
                    f"the training loss became {loss.item()} at epoch {epoch}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)
        train_loss = total / count
        if bad := non_finite(model.state_dict()):
            raise TrainingDivergedError(
                f"the weights {', '.join(bad[:3])} became non-finite at epoch {epoch}"
            )
        val_loss = e_mae = f_mae = None
        if val_batches is not None:
            val_loss, e_mae, f_mae = evaluate_loss(model, val_batches, settings)
            if not np.isfinite(val_loss):  # early stopping would choose on a meaningless score
                raise TrainingDivergedError(
                    f"the validation loss became {val_loss} at epoch {epoch}"
                )
        scheduler.step(val_loss if val_loss is not None else train_loss)
        yield EpochRecord(
            epoch, train_loss, val_loss, e_mae, f_mae, optimizer.param_groups[0]["lr"]
        )


def evaluate_loss(
    model: EnergyModel, batches: Batches, settings: TrainingSettings, batch_size: int = 256
) -> tuple[float, float, float]:
    """(loss, energy MAE in eV/atom, force MAE in eV/Å) over every structure of ``batches``,
    computed where ``model``'s weights are."""
    model.eval()
    device = next(model.network.parameters()).device
    losses, de_all, df_all = [], [], []
    for start in range(0, len(batches), batch_size):
        idx = np.arange(start, min(start + batch_size, len(batches)))
        loss, de, df = _loss(model, _on(batches.collate(idx), device), settings, create_graph=False)
        losses.append(loss.item() * len(idx))
        de_all.append(de)
        df_all.append(df)
    de = torch.cat(de_all)
    df = torch.cat(df_all)
    return (sum(losses) / len(batches), float(de.abs().mean()), float(df.abs().mean()))


@dataclass(frozen=True)
class TrainingResult:
    epochs: int
    best_epoch: int
    best_val_loss: float | None
    val_energy_mae: float | None  # eV/atom
    val_forces_mae: float | None  # eV/Å
    train_loss: float
    learning_rate: float = float("nan")  # the (initial) rate of the attempt that converged
    divergence_retries: int = 0  # attempts that diverged before it

    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in vars(self).items() if v is not None}


def train_member(
    model: EnergyModel,
    train: Arrays,
    val: Arrays | None,
    settings: TrainingSettings,
    rng: np.random.Generator,
    warm_start: bool = False,
    device: torch.device | str = "cpu",
    name: str = "member",
    progress: Callable[[EpochRecord], None] | None = None,
) -> TrainingResult:
    """Train with early stopping on ``device``; ``model`` ends with the weights of its best
    epoch, on ``device``. ``progress`` is called with every epoch (to report it).

    If training diverges, ``model`` is reset to the weights it came with and trained
    again at half the learning rate (warm start: half the warm-start rate), at most
    :data:`DIVERGENCE_RETRIES` times, each retry logged as a warning naming ``name``.

    Raises :class:`TrainingDivergedError` naming ``name``, the rates tried and what to
    change when every attempt diverged (``model`` then holds its starting weights).
    """
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    key = "warm_start_learning_rate" if warm_start else "learning_rate"
    rates = [getattr(settings, key)]
    while True:
        try:
            result = _train_once(model, train, val, settings, rng, warm_start, device, progress)
        except TrainingDivergedError as err:
            model.load_state_dict(start)
            if len(rates) > DIVERGENCE_RETRIES:
                raise TrainingDivergedError(
                    f"{name}: training diverged at every learning rate tried "
                    f"({', '.join(f'{r:g}' for r in rates)}); the last attempt: {err}. Lower "
                    f"training.{key} (now {rates[0]:g}), and check the dataset for absurd "
                    "labels (its largest force component is "
                    f"{np.abs(train.forces).max():.3g} eV/Å)"
                ) from err
            _log.warning(
                "%s: training diverged at learning rate %g (%s); retrying from its "
                "starting weights at %g",
                name,
                rates[-1],
                err,
                rates[-1] / 2,
            )
            rates.append(rates[-1] / 2)
            settings = replace(settings, **{key: rates[-1]})
        else:
            return replace(result, learning_rate=rates[-1], divergence_retries=len(rates) - 1)


def _train_once(
    model: EnergyModel,
    train: Arrays,
    val: Arrays | None,
    settings: TrainingSettings,
    rng: np.random.Generator,
    warm_start: bool,
    device: torch.device | str,
    progress: Callable[[EpochRecord], None] | None = None,
) -> TrainingResult:
    """One attempt of :func:`train_member`; raises :class:`TrainingDivergedError`."""
    best: tuple[float, EpochRecord] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    last: EpochRecord | None = None
    for record in itrain(model, train, val, settings, rng, warm_start=warm_start, device=device):
        last = record
        if progress is not None:
            progress(record)
        score = record.val_loss if record.val_loss is not None else record.train_loss
        if best is None or score < best[0]:
            best = (score, record)
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif record.epoch - best[1].epoch >= settings.patience:
            break
    if best is None or best_state is None or last is None:
        # settings.max_epochs and warm_start_epochs are positive: itrain yields an epoch
        raise RuntimeError("training ran no epoch")
    model.load_state_dict(best_state)
    model.eval()
    _log.info(
        "trained %d epoch(s)%s; best epoch %d, validation force MAE %s eV/Å",
        last.epoch + 1,
        " (warm start)" if warm_start else "",
        best[1].epoch,
        "-" if best[1].val_forces_mae is None else f"{best[1].val_forces_mae:.4f}",
    )
    rec = best[1]
    return TrainingResult(
        epochs=last.epoch + 1,
        best_epoch=rec.epoch,
        best_val_loss=rec.val_loss,
        val_energy_mae=rec.val_energy_mae,
        val_forces_mae=rec.val_forces_mae,
        train_loss=rec.train_loss,
    )
