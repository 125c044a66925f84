"""Batched adversarial attack on atomic displacements.

Following Schwalbe-Koda, Tan & Gómez-Bombarelli (Nat. Commun. 12, 5104, 2021), each seed
geometry X gets a displacement δ, initialised with small Gaussian noise and optimised
with Adam to *maximise* the adversarial objective (see :mod:`advloop.adversarial.objective`).
All seeds are attacked together in one batch. :func:`iattack` yields the state after
every step (ASE ``irun`` style); :func:`run_attack` drains it and :func:`attack` returns
the attacked geometries as :class:`~advloop.adversarial.structures.Candidates`.

Periodic cells keep their cell by default. With ``strain=True`` each cell also gets a
symmetric strain ε (|ε_ij| ≤ ``max_strain``), applied to cell and positions alike,
X' = (X + δ)(1 + ε), h' = h(1 + ε) (rows are vectors), and attacked with δ; the paper's
code attacks the cell in the same way.

A seed whose geometry becomes unphysical (atoms too close, or fragments flying apart) or
whose objective stops being finite is frozen at its last sane geometry and reported;
no NaN leaves this module.

With ``pool_every = k`` the attack is also a sampler: every k-th step's geometry of each
seed still being attacked joins the candidates beside the endpoints, so that selection
chooses among the whole path from the well to the attacked geometry (the informative
geometries often lie on the way, not at the end). ``objective="target"`` aims the attack
at a calibrated target error instead of the largest σ (see
:mod:`advloop.adversarial.objective`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from advloop.adversarial.geometry import bonds_per_seed, check_geometry, validate_factors
from advloop.adversarial.objective import (
    EnergyForm,
    Uncertainty,
    adversarial_objective,
    kT_from_temperature,
    log_partition,
)
from advloop.adversarial.structures import Candidates, Seeds
from advloop.constraints import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    check_fields,
)
from advloop.potentials.committee import Committee
from advloop.potentials.model import build_graph

#: What the attack maximises: the paper's σ² (``max``) or σ² saturating at a target (``target``).
AttackObjective = Literal["max", "target"]


@dataclass(frozen=True)
class AttackSettings:
    """Settings of the attack. Lengths in Å, temperature in K.

    ``uncertainty`` picks σ² from the forces (default) or the energy and ``energy`` the
    total (default) or per-atom energy in the Boltzmann factor (see
    :mod:`advloop.adversarial.objective`). ``max_displacement`` caps |δ| per atom;
    ``strain``/``max_strain`` (dimensionless) attack the cell of periodic seeds.
    ``pool_every``: keep every k-th step's geometry as a candidate too (0: endpoints
    only). ``objective``: ``max`` (the paper's σ²) or ``target``, which aims at a
    calibrated force error of ``target_error`` eV/Å (σ_t = target_error / the run's
    calibration scale).
    """

    __pydantic_config__ = {"extra": "forbid", "allow_inf_nan": False}

    # kT of the Boltzmann factor exp(-E/kT) that keeps the attack at energies the training set
    # reaches
    temperature: PositiveFloat = field(default=1000.0, metadata={"unit": "K"})
    # gradient-ascent steps of the attack (Adam on the displacements)
    n_steps: PositiveInt = 60
    # Adam's step size on the displacements, Å per step
    learning_rate: PositiveFloat = 0.01
    # std of the random displacement each seed starts from
    initial_noise: NonNegativeFloat = field(default=0.01, metadata={"unit": "Å"})
    # cap on each atom's displacement from its seed
    max_displacement: PositiveFloat = field(default=0.6, metadata={"unit": "Å"})
    # steps between rebuilds of the neighbour list
    neighbor_refresh: PositiveInt = 5
    min_distance_factor: NonNegativeFloat = 0.5
    max_bond_factor: NonNegativeFloat = 2.0
    # σ² of the committee forces (mean over atoms and components) or of its energy
    uncertainty: Uncertainty = "forces"
    # Ē in exp(-Ē/kT): the total energy or the energy per atom (the paper's code)
    energy: EnergyForm = "total"
    # attack the cell of periodic seeds too
    strain: bool = False
    # cap on each component of the cell strain, dimensionless
    max_strain: PositiveFloat = 0.05
    # every k-th step's geometry is a candidate too, beside the endpoints (0: endpoints only)
    pool_every: NonNegativeInt = 0
    # max: the largest σ (the paper's); target: aim at the calibrated error target_error
    objective: AttackObjective = "max"
    # the calibrated force error a target attack aims at
    target_error: PositiveFloat | None = field(default=None, metadata={"unit": "eV/Å"})

    def __post_init__(self) -> None:
        check_fields(self, "attack")
        if self.objective == "target" and self.target_error is None:
            raise ValueError(
                "attack.objective 'target' needs attack.target_error (eV/Å), the calibrated "
                "force error the attack aims at"
            )
        try:
            validate_factors(self.min_distance_factor, self.max_bond_factor)
        except ValueError as err:
            raise ValueError(f"attack.{err}") from None


@dataclass
class AttackStep:
    """State after one step. positions [n_atoms, 3] Å (the current geometries, frozen
    seeds at their last sane geometry); cells [n_seeds, 3, 3] Å; objective and sigma
    [n_seeds] (σ = √σ², in eV/Å for the force variance, eV for the energy variance);
    stopped maps a seed index to why it was frozen."""

    step: int
    positions: np.ndarray
    cells: np.ndarray
    objective: np.ndarray
    sigma: np.ndarray
    stopped: dict[int, str] = field(default_factory=dict)


@dataclass
class AttackResult:
    """positions [n_atoms, 3] Å and cells [n_seeds, 3, 3] Å of the final geometries;
    objective and sigma trajectories [n_steps + 1, n_seeds] (row 0 is the initial,
    noised, geometry)."""

    positions: np.ndarray
    cells: np.ndarray
    objective: np.ndarray
    sigma: np.ndarray
    stopped: dict[int, str]
    pool: list[PoolFrame] = field(default_factory=list)


@dataclass(frozen=True)
class PoolFrame:
    """One geometry kept along an attack: seed index, step, positions [n_atoms_seed, 3] Å,
    cell [3, 3] Å and the objective there."""

    seed: int
    step: int
    positions: np.ndarray
    cell: np.ndarray
    objective: float


def _symmetric(e: torch.Tensor) -> torch.Tensor:
    return 0.5 * (e + e.transpose(-1, -2))


def iattack(
    committee: Committee,
    numbers: np.ndarray,
    positions: np.ndarray,
    n_atoms: np.ndarray,
    kT: float,
    log_q: float,
    settings: AttackSettings,
    generator: torch.Generator,
    cells: np.ndarray | None = None,
    pbc: np.ndarray | None = None,
    sigma_target: float | None = None,
) -> Iterator[AttackStep]:
    """Attack seeds given as flat arrays: numbers [n_atoms], positions [n_atoms, 3] Å,
    n_atoms [n_seeds], cells [n_seeds, 3, 3] Å and pbc [n_seeds, 3] (default: molecules).
    kT in eV; log_q from :func:`advloop.adversarial.objective.log_partition`, in the same energy
    form (total or per atom) as ``settings.energy``. ``sigma_target``: the σ at which the
    objective saturates (``settings.objective == "target"``), in the unit of σ.

    Yields step 0 (the noised start) and then one :class:`AttackStep` per Adam step.
    Raises ValueError for a strain attack on seeds without periodicity.
    """
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    numbers = np.asarray(numbers)
    n_seeds = len(n_atoms)
    starts = np.concatenate([[0], np.cumsum(n_atoms)])
    dev = committee.device
    cells0 = (
        torch.zeros(n_seeds, 3, 3, dtype=torch.float64, device=dev)
        if cells is None
        else torch.as_tensor(np.asarray(cells), dtype=torch.float64, device=dev)
    )
    pbc = np.zeros((n_seeds, 3), dtype=bool) if pbc is None else np.asarray(pbc, dtype=bool)
    if settings.strain and not pbc.any(axis=1).all():
        raise ValueError("attack.strain needs periodic seeds (a cell with pbc); these have none")
    x0 = torch.as_tensor(np.asarray(positions), dtype=torch.float64, device=dev)
    bonds = bonds_per_seed(numbers, np.asarray(positions), starts, cells0.cpu().numpy(), pbc)
    delta = (
        torch.randn(x0.shape, generator=generator, dtype=torch.float64) * settings.initial_noise
    ).to(dev)
    delta.requires_grad_(True)
    params = [delta]
    strain = torch.zeros(n_seeds, 3, 3, dtype=torch.float64, device=dev)
    if settings.strain:
        strain = (
            (
                torch.randn(strain.shape, generator=generator, dtype=torch.float64)
                * settings.initial_noise
                / 10.0
            )
            .to(dev)
            .requires_grad_(True)
        )
        params.append(strain)
    optimizer = torch.optim.Adam(params, lr=settings.learning_rate)
    idx_m = torch.as_tensor(np.repeat(np.arange(n_seeds), n_atoms), device=dev)
    eye = torch.eye(3, dtype=torch.float64, device=dev)
    active = torch.ones(n_seeds, dtype=torch.bool, device=dev)
    stopped: dict[int, str] = {}
    last_good = x0.clone()
    last_cells = cells0.clone()
    graph = None

    for step in range(settings.n_steps + 1):
        if settings.strain:
            deform = eye + _symmetric(strain)  # [n_seeds, 3, 3]
            x = torch.einsum("ni,nij->nj", x0 + delta, deform[idx_m])
            cell = cells0 @ deform
        else:
            x, cell = x0 + delta, cells0
        current, current_cells = x.detach().cpu().numpy(), cell.detach().cpu().numpy()
        # Freeze seeds that left physical space; they keep their last sane geometry.
        for s in np.flatnonzero(active.cpu().numpy()):
            rows = slice(starts[s], starts[s + 1])
            reason = check_geometry(
                numbers[rows],
                current[rows],
                settings.min_distance_factor,
                settings.max_bond_factor,
                current_cells[s],
                pbc[s],
                bonds[s],
            )
            if reason is not None:
                stopped[int(s)] = f"step {step}: {reason}"
                active[s] = False
        atom_active = active[idx_m]
        with torch.no_grad():
            last_good[atom_active] = x.detach()[atom_active]
            last_cells[active] = cell.detach()[active]
        if graph is None or step % settings.neighbor_refresh == 0:
            graph = build_graph(
                numbers,
                last_good.cpu().numpy(),
                n_atoms,
                committee.spec.cutoff,
                last_cells.cpu().numpy(),
                pbc,
            ).to(dev)
        x_eval = torch.where(atom_active[:, None], x, last_good)
        graph_eval = (
            replace(graph, cells=torch.where(active.clone()[:, None, None], cell, last_cells))
            if settings.strain
            else graph
        )
        energies, forces = committee.energies_forces(graph_eval, x_eval, create_graph=True)
        objective, var = adversarial_objective(
            energies, forces, idx_m, kT, log_q, settings.uncertainty, settings.energy, sigma_target
        )
        bad = ~torch.isfinite(objective.detach()) & active
        for s in np.flatnonzero(bad.cpu().numpy()):
            stopped[int(s)] = f"step {step}: objective not finite"
        active &= ~bad
        yield AttackStep(
            step=step,
            positions=last_good.cpu().numpy().copy(),
            cells=last_cells.cpu().numpy().copy(),
            objective=torch.nan_to_num(objective.detach(), nan=0.0).cpu().numpy().copy(),
            sigma=torch.nan_to_num(var.detach(), nan=0.0).clamp_min(0).sqrt().cpu().numpy().copy(),
            stopped=dict(stopped),
        )
        if step == settings.n_steps or not active.any():
            return
        optimizer.zero_grad(set_to_none=True)
        # Maximise: minimise the negative objective of the seeds still being attacked.
        (-objective[active].sum()).backward()
        # backward() fills both: the objective depends on the displacements and the strain
        if delta.grad is None or (settings.strain and strain.grad is None):
            raise RuntimeError("the attack objective has no gradient in its parameters")
        delta.grad[~active[idx_m]] = 0.0
        if settings.strain and strain.grad is not None:
            strain.grad[~active] = 0.0
        optimizer.step()
        with torch.no_grad():
            norm = delta.norm(dim=-1, keepdim=True)
            delta.mul_(torch.clamp(settings.max_displacement / (norm + 1e-12), max=1.0))
            if settings.strain:
                strain.clamp_(-settings.max_strain, settings.max_strain)


def run_attack(
    *args, progress: Callable[[AttackStep], None] | None = None, **kwargs
) -> AttackResult:
    """Run :func:`iattack` to the end (same arguments); keep the trajectories and, with
    ``settings.pool_every = k > 0``, every k-th step's geometry of each seed still
    attacked there. ``progress`` is called with every step (to report it)."""
    bound = inspect.signature(iattack).bind(*args, **kwargs).arguments
    pool_every = bound["settings"].pool_every
    n_atoms = np.asarray(bound["n_atoms"], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(n_atoms)])
    objective, sigma = [], []
    pool: list[PoolFrame] = []
    last: AttackStep | None = None
    for last in iattack(*args, **kwargs):
        if progress is not None:
            progress(last)
        objective.append(last.objective)
        sigma.append(last.sigma)
        if pool_every and last.step and last.step % pool_every == 0:
            pool.extend(
                PoolFrame(
                    s,
                    last.step,
                    last.positions[starts[s] : starts[s + 1]],
                    last.cells[s],
                    float(last.objective[s]),
                )
                for s in range(len(n_atoms))
                if s not in last.stopped
            )
    if last is None:  # iattack yields step 0 first
        raise RuntimeError("the attack yielded no step")
    return AttackResult(
        positions=last.positions,
        cells=last.cells,
        objective=np.array(objective),
        sigma=np.array(sigma),
        stopped=last.stopped,
        pool=pool,
    )


def attack(
    committee: Committee,
    seeds: Seeds,
    train_energies: np.ndarray,
    train_n_atoms: np.ndarray,
    settings: AttackSettings,
    generator: torch.Generator,
    calibration_scale: float = 1.0,
    progress: Callable[[AttackStep], None] | None = None,
) -> tuple[Candidates, AttackResult]:
    """Attack ``seeds`` and return the geometries it found as candidates, with the run.

    Q comes from the training energies [n_train] eV (with their sizes [n_train] for
    per-atom energies). The candidates are each seed's final geometry (in seed order)
    and, with ``settings.pool_every``, the geometries kept along the way (ordered by step,
    then seed); their score is the objective there, their σ_F statistics come from one
    committee pass over all of them. ``calibration_scale`` (observed error over σ on
    labels the committee had not seen; 1 without any) turns ``settings.target_error``
    into the σ the ``target`` objective aims at. ``progress`` is called with every step.
    """
    if not calibration_scale > 0:
        raise ValueError(f"calibration_scale must be positive, got {calibration_scale}")
    kT = kT_from_temperature(settings.temperature)
    log_q = log_partition(
        train_energies, kT, train_n_atoms if settings.energy == "per_atom" else None
    )
    sigma_target = (
        settings.target_error / calibration_scale
        if settings.objective == "target" and settings.target_error is not None
        else None
    )
    result = run_attack(
        committee,
        seeds.numbers,
        seeds.positions,
        seeds.n_atoms,
        kT,
        log_q,
        settings,
        generator,
        seeds.cells,
        seeds.pbc,
        sigma_target,
        progress=progress,
    )
    final_step = len(result.objective) - 1
    pool = [f for f in result.pool if f.step != final_step]  # the endpoints come first
    starts = seeds.starts
    positions = np.concatenate(
        [result.positions] + [f.positions for f in pool], axis=0
    )  # [n_atoms_total, 3]
    parent = np.concatenate([np.arange(len(seeds)), [f.seed for f in pool]]).astype(np.int64)
    numbers = np.concatenate(
        [seeds.numbers] + [seeds.numbers[starts[f.seed] : starts[f.seed + 1]] for f in pool]
    )
    cells = np.concatenate([result.cells, np.array([f.cell for f in pool]).reshape(-1, 3, 3)])
    n_atoms = seeds.n_atoms[parent]
    pbc = seeds.pbc[parent]
    pred = committee.predict_arrays(numbers, positions, n_atoms, cells, pbc)
    candidates = Candidates(
        numbers=numbers,
        positions=positions,
        n_atoms=n_atoms.copy(),
        cells=cells,
        pbc=pbc.copy(),
        parent=parent,
        sigma_f_mean=pred.forces_std_mean,
        sigma_f_max=pred.forces_std_max,
        score=np.concatenate([result.objective[-1], [f.objective for f in pool]]),
        stopped=result.stopped,
    )
    return candidates, result
