"""Batched adversarial attack on atomic displacements.

Following Schwalbe-Koda, Tan & Gómez-Bombarelli (Nat. Commun. 12, 5104, 2021), each seed
geometry X gets a displacement δ, initialised with small Gaussian noise and optimised
with Adam to *maximise* the adversarial objective (see :mod:`adversarial.objective`).
All seeds are attacked together in one batch. :func:`iattack` yields the state after
every step (ASE ``irun`` style); :func:`run_attack` drains it.

A seed whose geometry becomes unphysical (atoms too close, or fragments flying apart) or
whose objective stops being finite is frozen at its last sane geometry and reported;
no NaN leaves this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from adversarial.geometry import check_geometry
from adversarial.objective import adversarial_objective
from potentials.committee import Committee
from potentials.model import build_graph


@dataclass(frozen=True)
class AttackSettings:
    """Settings of the attack. Lengths in Å, temperature in K."""

    __pydantic_config__ = {"extra": "forbid"}

    temperature: float = 1000.0
    n_steps: int = 60
    learning_rate: float = 0.01
    initial_noise: float = 0.01
    max_displacement: float = 0.6
    n_seeds: int = 16
    neighbor_refresh: int = 5
    min_distance_factor: float = 0.5
    max_bond_factor: float = 2.0

    def __post_init__(self) -> None:
        for name in ("temperature", "learning_rate", "max_displacement"):
            if not getattr(self, name) > 0:
                raise ValueError(f"attack.{name} must be positive, got {getattr(self, name)}")
        for name in ("n_steps", "n_seeds", "neighbor_refresh"):
            if getattr(self, name) < 1:
                raise ValueError(f"attack.{name} must be at least 1, got {getattr(self, name)}")
        if self.initial_noise < 0:
            raise ValueError(f"attack.initial_noise must be >= 0 Å, got {self.initial_noise}")


@dataclass
class AttackStep:
    """State after one step. positions [n_atoms, 3] Å (the current geometries, frozen
    seeds at their last sane geometry); objective and sigma_f [n_seeds] (σ_F = √σ²_F in
    eV/Å); stopped maps a seed index to why it was frozen."""

    step: int
    positions: np.ndarray
    objective: np.ndarray
    sigma_f: np.ndarray
    stopped: dict[int, str] = field(default_factory=dict)


@dataclass
class AttackResult:
    """positions [n_atoms, 3] Å of the final geometries; objective and sigma_f
    trajectories [n_steps + 1, n_seeds] (row 0 is the initial, noised, geometry)."""

    positions: np.ndarray
    objective: np.ndarray
    sigma_f: np.ndarray
    stopped: dict[int, str]


def iattack(committee: Committee, numbers: np.ndarray, positions: np.ndarray,
            n_atoms: np.ndarray, kT: float, log_q: float, settings: AttackSettings,
            generator: torch.Generator, cells: np.ndarray | None = None,
            pbc: np.ndarray | None = None) -> Iterator[AttackStep]:
    """Attack seeds given as flat arrays: numbers [n_atoms], positions [n_atoms, 3] Å,
    n_atoms [n_seeds]. kT in eV, log_q from :func:`adversarial.objective.log_partition`.

    Yields step 0 (the noised start) and then one :class:`AttackStep` per Adam step.
    """
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    numbers = np.asarray(numbers)
    starts = np.concatenate([[0], np.cumsum(n_atoms)])
    x0 = torch.as_tensor(np.asarray(positions), dtype=torch.float64)
    delta = torch.randn(x0.shape, generator=generator, dtype=torch.float64) * settings.initial_noise
    delta.requires_grad_(True)
    optimizer = torch.optim.Adam([delta], lr=settings.learning_rate)
    idx_m = torch.as_tensor(np.repeat(np.arange(len(n_atoms)), n_atoms))
    active = torch.ones(len(n_atoms), dtype=torch.bool)
    stopped: dict[int, str] = {}
    last_good = x0.clone()
    graph = None

    for step in range(settings.n_steps + 1):
        x = x0 + delta
        current = x.detach().numpy()
        # Freeze seeds that left physical space; they keep their last sane geometry.
        for s in np.flatnonzero(active.numpy()):
            reason = check_geometry(numbers[starts[s]:starts[s + 1]], current[starts[s]:starts[s + 1]],
                                    settings.min_distance_factor, settings.max_bond_factor)
            if reason is not None:
                stopped[int(s)] = f"step {step}: {reason}"
                active[s] = False
        atom_active = active[idx_m]
        with torch.no_grad():
            last_good[atom_active] = x.detach()[atom_active]
        if graph is None or step % settings.neighbor_refresh == 0:
            graph = build_graph(numbers, last_good.numpy(), n_atoms, committee.spec.cutoff, cells, pbc)
        x_eval = torch.where(atom_active[:, None], x, last_good)
        energies, forces = committee.energies_forces(graph, x_eval, create_graph=True)
        objective, var_f = adversarial_objective(energies, forces, idx_m, kT, log_q)
        bad = ~torch.isfinite(objective.detach()) & active
        for s in np.flatnonzero(bad.numpy()):
            stopped[int(s)] = f"step {step}: objective not finite"
        active &= ~bad
        yield AttackStep(
            step=step,
            positions=last_good.numpy().copy(),
            objective=torch.nan_to_num(objective.detach(), nan=0.0).numpy().copy(),
            sigma_f=torch.nan_to_num(var_f.detach(), nan=0.0).clamp_min(0).sqrt().numpy().copy(),
            stopped=dict(stopped),
        )
        if step == settings.n_steps or not active.any():
            return
        optimizer.zero_grad(set_to_none=True)
        # Maximise: minimise the negative objective of the seeds still being attacked.
        (-objective[active].sum()).backward()
        delta.grad[~active[idx_m]] = 0.0
        optimizer.step()
        with torch.no_grad():
            norm = delta.norm(dim=-1, keepdim=True)
            delta.mul_(torch.clamp(settings.max_displacement / (norm + 1e-12), max=1.0))


def run_attack(*args, **kwargs) -> AttackResult:
    """Run :func:`iattack` to the end (same arguments); keep the trajectories."""
    objective, sigma = [], []
    last = None
    for last in iattack(*args, **kwargs):
        objective.append(last.objective)
        sigma.append(last.sigma_f)
    return AttackResult(positions=last.positions, objective=np.array(objective),
                        sigma_f=np.array(sigma), stopped=last.stopped)
