"""Sample efficiency on the 2D double well: adversarial attack vs committee MD vs random.

Run ``python -m benchmarks.double_well [--quick] [--output PATH]``; writes
``benchmarks/results/double_well.json`` and prints a summary table.

The toy example of Schwalbe-Koda, Tan & Gómez-Bombarelli (Nat. Commun. 12, 5104, 2021,
Fig. 2; their notebook ``examples/2D_DoubleWell.ipynb``): the asymmetric double well

    E(x, y) = a x⁴ − b x² + c x + k y²,    a = b = 10, c = 2, k = 4,

in arbitrary energy units (length units likewise arbitrary; forces are energy/length).
Its minima are at x ≈ −0.753 (E ≈ −3.96, the "seen" well) and x ≈ 0.650 (E ≈ −1.14,
the "unseen" well), with the saddle at x ≈ 0.102 (E ≈ 0.10, a barrier of 4.06 from the
seen well). The notebook states ``4 y²``; its code (``robust/potentials.py``, a double
well in y with b_y = 0) evaluates ``4 y⁴``; this benchmark uses the stated harmonic
``4 y²``. As in the notebook, the initial training set is drawn uniformly from
[−1.2, 1.2]² and keeps only points with E < −2, which all lie in the left well.

Everything is evaluated at one temperature, kT = 1.5 (the barrier is 2.7 kT; 15 % of the
Boltzmann weight of the evaluation grid lies in the unseen well): the accuracy metric, the
Boltzmann factor of the attack and the committee MD. (The paper attacks at kT = 5.)

Each strategy runs the same loop from the same initial data and committee seeds: train
a committee from scratch → explore (``adversarial``, ``md``, ``random``) → keep the
``labels_per_generation`` most uncertain candidates (committee force deviation σ_F =
√Σ_xy var_members(F), ddof=1), skipping any within ``min_distance`` of a training point
or of another selection → label them with the exact potential → append. After every
generation: the Boltzmann-weighted force RMSE of the committee mean against the exact
forces on a grid, √(Σ_g w_g |F̄_g − F_g|²) with w_g = exp(−E_g/kT)/Z over the grid, also
restricted to each side of the saddle, and how many labels lie in the unseen well
(x > x_saddle).

Seeds (attack, random) and MD starts are drawn from the whole training set, earlier
selections included, as ``exploration.seeds: random`` does in the project.

- ``adversarial``: Adam on displacements δ of seed points,
  maximising the project's objective (:func:`advloop.adversarial.objective.adversarial_objective`,
  each point a one-"atom" structure with its forces padded with z = 0), |δ| clamped; as
  :mod:`advloop.adversarial.attack`, which is written for atoms and neighbour lists.
- ``random``: Gaussian displacements of seed points (std a quarter of the well
  separation), as :func:`advloop.adversarial.random_displacement.random_displacement`.
- ``md``: Langevin (BAOAB) walkers on the committee-mean potential started from
  training points, DP-GEN frame selection (trust_lower ≤ σ_F < trust_upper; a walker
  stops at trust_upper), as :func:`advloop.adversarial.baselines.committee_md`.

No schnetpack model is used (a point in 2D has no atoms, neighbours or elements; the
package is only imported, through ``adversarial`` and ``benchmarks.committee``). The
committee is a batch of small MLPs (2→64→64→1, SiLU) trained together with full-batch
Adam on energies and forces (members differ only by initialisation); since Adam is
elementwise and the loss a sum over members, this equals training each member alone.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from advloop.adversarial.objective import adversarial_objective, log_partition
from benchmarks.committee import machine_info, write_record

Strategy = Literal["adversarial", "md", "random"]
STRATEGIES: tuple[Strategy, ...] = ("adversarial", "md", "random")
RESULTS = Path(__file__).parent / "results" / "double_well.json"
F64 = torch.float64


@dataclass(frozen=True)
class DoubleWell:
    """E(x, y) = a x⁴ − b x² + c x + k y² (energy units; x, y in length units)."""

    a: float = 10.0
    b: float = 10.0
    c: float = 2.0
    k: float = 4.0

    def energy(self, xy: np.ndarray) -> np.ndarray:
        """Energies [n] of points xy [n, 2]."""
        x, y = xy[..., 0], xy[..., 1]
        return self.a * x**4 - self.b * x**2 + self.c * x + self.k * y**2

    def forces(self, xy: np.ndarray) -> np.ndarray:
        """Exact forces −∇E [n, 2] of points xy [n, 2]."""
        x, y = xy[..., 0], xy[..., 1]
        return np.stack([-(4 * self.a * x**3 - 2 * self.b * x + self.c), -2 * self.k * y], axis=-1)

    def stationary_x(self) -> tuple[float, float, float]:
        """x of the left minimum, the saddle and the right minimum (y = 0)."""
        roots = np.roots([4 * self.a, 0.0, -2 * self.b, self.c])
        if np.abs(roots.imag).max() > 1e-12:
            raise ValueError(f"{self} is not a double well in x")
        left, saddle, right = np.sort(roots.real)
        return float(left), float(saddle), float(right)


@dataclass(frozen=True)
class CommitteeSettings:
    """n_members MLPs 2→hidden→hidden→1 (SiLU), full-batch Adam for ``epochs`` at
    ``learning_rate`` on mean (ΔE)² + force_weight · mean (ΔF)² per member."""

    n_members: int = 4
    hidden: int = 64
    epochs: int = 600
    learning_rate: float = 5e-3
    force_weight: float = 1.0


@dataclass(frozen=True)
class ExplorationSettings:
    """Candidates per generation and each strategy's settings (lengths in length units,
    kT and trust levels in energy and force units).

    Attack: ``attack_steps`` Adam steps at ``attack_lr`` from δ ~ N(0, attack_noise²),
    |δ| ≤ max_displacement (half the well separation). Random: std ``random_std`` per
    coordinate (a quarter of the well separation). MD: ``md_walkers`` walkers for
    ``md_steps`` steps of ``md_timestep`` (unit mass; the seen well's x period is 0.9)
    with friction ``md_friction``, a frame every ``md_sample_interval`` steps; trust
    levels are 5 % and 25 % of the Boltzmann RMS force on the grid (8.2), in the spirit of DP-GEN's
    levels relative to typical forces.
    """

    n_candidates: int = 64
    attack_steps: int = 100
    attack_lr: float = 0.02
    attack_noise: float = 0.01
    max_displacement: float = 0.7
    random_std: float = 0.35
    md_walkers: int = 8
    md_steps: int = 200
    md_timestep: float = 0.02
    md_friction: float = 1.0
    md_sample_interval: int = 25
    trust_lower: float = 0.4
    trust_upper: float = 2.0
    min_distance: float = 0.02


@dataclass(frozen=True)
class BenchmarkSettings:
    """The system, the data and the metric: kT (energy units), the initial set (n_initial
    points uniform in [−initial_box, initial_box]² with E < initial_energy_max) and the
    evaluation grid (grid_points² points on [−grid_half_width, grid_half_width]²)."""

    potential: DoubleWell = DoubleWell()
    kT: float = 1.5
    n_initial: int = 24
    initial_box: float = 1.2
    initial_energy_max: float = -2.0
    grid_half_width: float = 1.5
    grid_points: int = 61
    committee: CommitteeSettings = CommitteeSettings()
    exploration: ExplorationSettings = ExplorationSettings()


class MLPCommittee(torch.nn.Module):
    """Members as one batched MLP: weights [n_members, fan_in, fan_out]. Member m is
    initialised like ``torch.nn.Linear`` from its own generator seed ``seeds[m]``."""

    def __init__(self, hidden: int, seeds: list[int], energy_shift: float) -> None:
        super().__init__()
        sizes = [2, hidden, hidden, 1]
        self.weights, self.biases = torch.nn.ParameterList(), torch.nn.ParameterList()
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(fan_in)
            for shape, params in (((fan_in, fan_out), self.weights), ((1, fan_out), self.biases)):
                params.append(
                    torch.nn.Parameter(
                        torch.stack(
                            [
                                torch.empty(shape, dtype=F64).uniform_(-bound, bound, generator=g)
                                for g in gens
                            ]
                        )
                    )
                )
        self.energy_shift = energy_shift

    @property
    def n_members(self) -> int:
        return self.weights[0].shape[0]

    def energies(self, xy: torch.Tensor) -> torch.Tensor:
        """Member energies [n_members, n] of per-member points xy [n_members, n, 2]."""
        h = xy
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.weights) - 1:
                h = torch.nn.functional.silu(h)
        return h[..., 0] + self.energy_shift

    def energies_forces(
        self, xy: torch.Tensor, create_graph: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies [n_members, n] and forces [n_members, n, 2] of points xy [n, 2];
        with ``create_graph`` both stay differentiable with respect to xy and weights."""
        if not xy.requires_grad:
            xy = xy.detach().requires_grad_(True)
        per_member = xy.unsqueeze(0).repeat(self.n_members, 1, 1)
        energies = self.energies(per_member)
        (grad,) = torch.autograd.grad(energies.sum(), per_member, create_graph=create_graph)
        return energies, -grad


def force_deviation(forces: torch.Tensor) -> torch.Tensor:
    """σ_F [n] = √(Σ_xy var_members F), ddof=1, of member forces [n_members, n, 2]."""
    return forces.var(dim=0).sum(dim=-1).sqrt()


def member_seeds(seed: int, generation: int, n_members: int) -> list[int]:
    """Initialisation seeds of a committee: the same for every strategy."""
    return [int(s) for s in np.random.SeedSequence([seed, generation]).generate_state(n_members)]


def train_committee(
    xy: np.ndarray,
    energy: np.ndarray,
    forces: np.ndarray,
    settings: CommitteeSettings,
    seeds: list[int],
) -> MLPCommittee:
    """Train a committee from scratch on points xy [n, 2], energies [n], forces [n, 2]."""
    model = MLPCommittee(settings.hidden, seeds, float(np.mean(energy)))
    x, e, f = (torch.as_tensor(a, dtype=F64) for a in (xy, energy, forces))
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    for _ in range(settings.epochs):
        optimizer.zero_grad(set_to_none=True)
        e_pred, f_pred = model.energies_forces(x, create_graph=True)
        loss = ((e_pred - e) ** 2).mean(dim=1) + settings.force_weight * ((f_pred - f) ** 2).mean(
            dim=(1, 2)
        )
        loss.sum().backward()  # a sum over members: each member gets its own gradient
        optimizer.step()
    return model


def predict(model: MLPCommittee, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Committee-mean energies [n], mean forces [n, 2] and σ_F [n] at xy [n, 2]."""
    e, f = model.energies_forces(torch.as_tensor(xy, dtype=F64))
    return (
        e.mean(0).detach().numpy(),
        f.mean(0).detach().numpy(),
        force_deviation(f).detach().numpy(),
    )


def attack(
    model: MLPCommittee,
    seeds_xy: np.ndarray,
    kT: float,
    log_q: float,
    ex: ExplorationSettings,
    generator: torch.Generator,
) -> np.ndarray:
    """Adversarial points [n, 2]: Adam ascent of the objective on δ from seeds [n, 2].
    A seed whose objective stops being finite is frozen at its last finite point."""
    x0 = torch.as_tensor(seeds_xy, dtype=F64)
    n = len(x0)
    delta = torch.randn(x0.shape, generator=generator, dtype=F64) * ex.attack_noise
    delta.requires_grad_(True)
    optimizer = torch.optim.Adam([delta], lr=ex.attack_lr)
    idx_m = torch.arange(n)
    active = torch.ones(n, dtype=torch.bool)
    last = x0.clone()
    for step in range(ex.attack_steps + 1):
        x = x0 + delta
        energies, forces = model.energies_forces(x, create_graph=True)
        forces3 = torch.cat([forces, torch.zeros_like(forces[..., :1])], dim=-1)  # z = 0
        objective, _ = adversarial_objective(energies, forces3, idx_m, kT, log_q)
        active &= torch.isfinite(objective.detach())
        last[active] = x.detach()[active]
        if step == ex.attack_steps or not active.any():
            break
        # Maximise: descend on the negative objective of the seeds still attacked (the
        # committee's weights get no gradient).
        (grad,) = torch.autograd.grad(-objective[active].sum(), delta)
        delta.grad = torch.where(active[:, None], grad, 0.0)
        optimizer.step()
        with torch.no_grad():
            norm = delta.norm(dim=-1, keepdim=True)
            delta.mul_(torch.clamp(ex.max_displacement / (norm + 1e-12), max=1.0))
    return last.numpy()


def committee_md(
    model: MLPCommittee,
    starts: np.ndarray,
    kT: float,
    ex: ExplorationSettings,
    rng: np.random.Generator,
) -> np.ndarray:
    """DP-GEN candidates [n, 2]: BAOAB Langevin walkers (unit mass) from starts [w, 2] on
    the committee-mean potential; every md_sample_interval steps, frames of walkers
    still running with trust_lower ≤ σ_F < trust_upper. A walker stops (and is frozen)
    once σ_F ≥ trust_upper or its forces are not finite."""
    dt, c1 = ex.md_timestep, math.exp(-ex.md_friction * ex.md_timestep)
    c2 = math.sqrt(1.0 - c1 * c1) * math.sqrt(kT)
    x = np.array(starts, dtype=np.float64)
    v = math.sqrt(kT) * rng.standard_normal(x.shape)
    _, f, _ = predict(model, x)
    active = np.ones(len(x), dtype=bool)
    frames = []
    for step in range(1, ex.md_steps + 1):
        v_half = v + 0.5 * dt * f
        x_new = x + 0.5 * dt * v_half
        v_half = c1 * v_half + c2 * rng.standard_normal(x.shape)
        x_new = x_new + 0.5 * dt * v_half
        _, f_new, sigma = predict(model, x_new)
        ok = np.isfinite(sigma) & np.isfinite(f_new).all(axis=1)
        active &= ok & (sigma < ex.trust_upper)
        x = np.where(active[:, None], x_new, x)
        f = np.where(active[:, None], f_new, 0.0)
        v = np.where(active[:, None], v_half + 0.5 * dt * f, 0.0)
        if step % ex.md_sample_interval == 0:
            frames.extend(x[active & (sigma >= ex.trust_lower)])
        if not active.any():
            break
    return np.array(frames).reshape(-1, 2)


def select(
    candidates: np.ndarray, sigma: np.ndarray, train_xy: np.ndarray, k: int, min_distance: float
) -> np.ndarray:
    """Indices of at most k candidates [n, 2], most uncertain first (σ_F [n]), none
    closer than min_distance to a training point [m, 2] or to another selection."""
    chosen: list[int] = []
    for i in np.argsort(-sigma, kind="stable"):
        if len(chosen) == k:
            break
        if not np.isfinite(sigma[i]):
            continue
        others = np.concatenate([train_xy, candidates[chosen]])
        if np.min(np.linalg.norm(others - candidates[i], axis=1)) >= min_distance:
            chosen.append(int(i))
    return np.array(chosen, dtype=np.int64)


def explore(
    strategy: Strategy,
    model: MLPCommittee,
    train_xy: np.ndarray,
    train_e: np.ndarray,
    kT: float,
    ex: ExplorationSettings,
    rng: np.random.Generator,
    generator: torch.Generator,
) -> np.ndarray:
    """Candidate points [n, 2] of one strategy."""
    if strategy == "adversarial":
        seeds = train_xy[rng.integers(len(train_xy), size=ex.n_candidates)]
        return attack(model, seeds, kT, log_partition(train_e, kT), ex, generator)
    if strategy == "random":
        seeds = train_xy[rng.integers(len(train_xy), size=ex.n_candidates)]
        return seeds + rng.normal(0.0, ex.random_std, seeds.shape)
    if strategy == "md":
        starts = train_xy[rng.integers(len(train_xy), size=ex.md_walkers)]
        return committee_md(model, starts, kT, ex, rng)
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def initial_data(settings: BenchmarkSettings, seed: int) -> np.ndarray:
    """n_initial points [n, 2], uniform in the box with E < initial_energy_max."""
    rng = np.random.default_rng([seed, 0])
    points = np.zeros((0, 2))
    while len(points) < settings.n_initial:
        trial = rng.uniform(-settings.initial_box, settings.initial_box, (256, 2))
        keep = settings.potential.energy(trial) < settings.initial_energy_max
        points = np.concatenate([points, trial[keep]])
    return points[: settings.n_initial]


class Evaluator:
    """Boltzmann-weighted force RMSE of the committee mean on the grid, overall and on
    each side of the saddle (weights renormalised per side)."""

    def __init__(self, settings: BenchmarkSettings) -> None:
        half = settings.grid_half_width
        side = np.linspace(-half, half, settings.grid_points)
        gx, gy = np.meshgrid(side, side)
        self.xy = np.stack([gx.ravel(), gy.ravel()], axis=1)
        energy = settings.potential.energy(self.xy)
        self.forces = settings.potential.forces(self.xy)
        w = np.exp(-(energy - energy.min()) / settings.kT)
        self.weights = w / w.sum()
        self.x_saddle = settings.potential.stationary_x()[1]
        self.unseen = self.xy[:, 0] > self.x_saddle
        self.unseen_population = float(self.weights[self.unseen].sum())

    def __call__(self, model: MLPCommittee) -> dict[str, float]:
        _, f_mean, sigma = predict(model, self.xy)
        sq = ((f_mean - self.forces) ** 2).sum(axis=1)
        out = {"boltzmann_force_rmse": float(np.sqrt(np.sum(self.weights * sq)))}
        for name, mask in (("seen", ~self.unseen), ("unseen", self.unseen)):
            w = self.weights[mask] / self.weights[mask].sum()
            out[f"boltzmann_force_rmse_{name}_well"] = float(np.sqrt(np.sum(w * sq[mask])))
            out[f"boltzmann_sigma_f_{name}_well"] = float(np.sum(w * sigma[mask]))
        return out


def run_strategy(
    strategy: Strategy,
    seed: int,
    generations: int,
    labels_per_generation: int,
    settings: BenchmarkSettings,
    evaluator: Evaluator,
    first: tuple[MLPCommittee, dict],
) -> list[dict]:
    """Metrics [generations + 1] of one strategy and seed; row 0 is the shared start
    ``first`` (the committee trained on the initial data and its metrics)."""
    pot, ex = settings.potential, settings.exploration
    xy = initial_data(settings, seed)
    n_initial = len(xy)
    model, metrics = first
    rows = [
        {
            "generation": 0,
            "n_labels": 0,
            "n_candidates": 0,
            "labels_in_unseen_well": 0,
            "fraction_in_unseen_well": 0.0,
            "seconds": 0.0,
            **metrics,
        }
    ]
    for gen in range(1, generations + 1):
        t0 = time.perf_counter()
        rng = np.random.default_rng([seed, gen, 1])
        attack_seed = int(np.random.SeedSequence([seed, gen, 2]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(attack_seed)
        candidates = explore(strategy, model, xy, pot.energy(xy), settings.kT, ex, rng, generator)
        sigma = predict(model, candidates)[2] if len(candidates) else np.zeros(0)
        picked = select(candidates, sigma, xy, labels_per_generation, ex.min_distance)
        xy = np.concatenate([xy, candidates[picked].reshape(-1, 2)])  # the oracle labels below
        model = train_committee(
            xy,
            pot.energy(xy),
            pot.forces(xy),
            settings.committee,
            member_seeds(seed, gen, settings.committee.n_members),
        )
        new = xy[n_initial:]
        n_unseen = int(np.sum(new[:, 0] > evaluator.x_saddle))
        rows.append(
            {
                "generation": gen,
                "n_labels": len(new),
                "n_candidates": len(candidates),
                "labels_in_unseen_well": n_unseen,
                "fraction_in_unseen_well": n_unseen / len(new) if len(new) else 0.0,
                "seconds": time.perf_counter() - t0,
                **evaluator(model),
            }
        )
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarise(results: dict[str, dict[str, list[dict]]], seeds: list[int]) -> dict:
    """Per strategy: mean and std (ddof=1; 0 for one seed) over seeds of the final
    weighted RMSE and of labels in the unseen well, and the labels needed to reach the
    adversarial run's final RMSE: per seed (same seed's adversarial run) and on the
    seed-mean curves (mean labels at the first generation whose mean RMSE reaches the
    mean adversarial final RMSE). None: not reached within the budget. And the other way
    round, for strategies that spend fewer labels: the adversarial seed-mean RMSE at its
    first generation with at least this strategy's final mean number of labels."""
    adv_final = {s: results["adversarial"][str(s)][-1]["boltzmann_force_rmse"] for s in seeds}
    adv_mean = float(np.mean(list(adv_final.values())))
    summary: dict[str, dict] = {}
    for strategy, per_seed in {"adversarial": results["adversarial"], **results}.items():
        finals = [per_seed[str(s)][-1] for s in seeds]
        entry = {}
        for key in (
            "boltzmann_force_rmse",
            "boltzmann_force_rmse_seen_well",
            "boltzmann_force_rmse_unseen_well",
            "labels_in_unseen_well",
            "n_labels",
        ):
            entry[f"final_{key}_mean"], entry[f"final_{key}_std"] = _mean_std(
                [r[key] for r in finals]
            )
        entry["labels_to_match_adversarial_per_seed"] = {  # first generation at or below
            str(s): next(
                (
                    r["n_labels"]
                    for r in per_seed[str(s)]
                    if r["boltzmann_force_rmse"] <= adv_final[s]
                ),
                None,
            )
            for s in seeds
        }
        n_gen = len(per_seed[str(seeds[0])])
        mean_rmse, mean_labels = (
            [float(np.mean([per_seed[str(s)][g][key] for s in seeds])) for g in range(n_gen)]
            for key in ("boltzmann_force_rmse", "n_labels")
        )
        entry["mean_curve_boltzmann_force_rmse"], entry["mean_curve_n_labels"] = (
            mean_rmse,
            mean_labels,
        )
        reached = [n for r, n in zip(mean_rmse, mean_labels) if r <= adv_mean]
        entry["labels_to_match_adversarial_mean_curve"] = reached[0] if reached else None
        adv = summary.get("adversarial", entry)
        at = [
            g for g, n in enumerate(adv["mean_curve_n_labels"]) if n >= entry["final_n_labels_mean"]
        ]
        entry["adversarial_rmse_at_these_labels"], entry["adversarial_labels_at_these_labels"] = (
            (adv["mean_curve_boltzmann_force_rmse"][at[0]], adv["mean_curve_n_labels"][at[0]])
            if at
            else (None, None)
        )
        summary[strategy] = entry
    return summary


def run(
    seeds: list[int],
    generations: int,
    labels_per_generation: int,
    quick: bool,
    settings: BenchmarkSettings | None = None,
    epochs: int | None = None,
    strategies: tuple[Strategy, ...] = STRATEGIES,
    threads: int = 1,
) -> dict:
    """Every strategy for every seed; returns settings, per-strategy per-seed metric rows
    (``results[strategy][str(seed)]``, one per generation, row 0 before any acquisition)
    and the summary. ``quick`` trains 300 epochs instead of 600; ``epochs`` overrides
    both. torch runs on ``threads`` intra-op threads, restored afterwards."""
    if not seeds or generations < 1 or labels_per_generation < 1:
        raise ValueError("need at least one seed, one generation and one label per generation")
    if "adversarial" not in strategies:
        raise ValueError("the summary compares against 'adversarial'; include it in strategies")
    settings = settings or BenchmarkSettings()
    n_epochs = epochs if epochs is not None else (300 if quick else settings.committee.epochs)
    settings = replace(settings, committee=replace(settings.committee, epochs=n_epochs))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        evaluator = Evaluator(settings)
        results: dict[str, dict[str, list[dict]]] = {s: {} for s in strategies}
        for seed in seeds:
            xy0 = initial_data(settings, seed)
            pot = settings.potential
            model0 = train_committee(
                xy0,
                pot.energy(xy0),
                pot.forces(xy0),
                settings.committee,
                member_seeds(seed, 0, settings.committee.n_members),
            )
            first = (model0, evaluator(model0))
            for strategy in strategies:
                rows = run_strategy(
                    strategy, seed, generations, labels_per_generation, settings, evaluator, first
                )
                results[strategy][str(seed)] = rows
                last = rows[-1]
                print(
                    f"seed {seed} {strategy:11s} labels {last['n_labels']:3d}  unseen "
                    f"{last['labels_in_unseen_well']:3d}  weighted F RMSE "
                    f"{rows[0]['boltzmann_force_rmse']:.3f} -> {last['boltzmann_force_rmse']:.3f}",
                    flush=True,
                )
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(previous_threads)
    left, saddle, right = settings.potential.stationary_x()
    return {
        "settings": {
            **asdict(settings),
            "seeds": list(seeds),
            "generations": generations,
            "labels_per_generation": labels_per_generation,
            "quick": quick,
            "threads": threads,
            "strategies": list(strategies),
        },
        "system": {
            "x_left_minimum": left,
            "x_saddle": saddle,
            "x_right_minimum": right,
            "barrier": float(
                settings.potential.energy(np.array([saddle, 0.0]))
                - settings.potential.energy(np.array([left, 0.0]))
            ),
            "unseen_well_boltzmann_population": evaluator.unseen_population,
        },
        "results": results,
        "summary": summarise(results, list(seeds)),
        "seconds": seconds,
    }


def format_summary(record: dict) -> str:
    """The summary as a table: mean ± std over seeds of the final values; labels to match
    the adversarial final RMSE and the adversarial RMSE (labels) at this strategy's final
    labels, both on the seed-mean curves."""

    def pm(entry: dict, key: str, fmt: str) -> str:
        return f"{entry[key + '_mean']:{fmt}} ± {entry[key + '_std']:{fmt}}"

    lines = [
        f"{'strategy':12s} {'labels':>14s} {'weighted F RMSE':>17s} {'seen well':>17s} "
        f"{'unseen well':>17s} {'labels unseen':>14s} {'labels to match adv.':>21s} "
        f"{'adv. RMSE at these labels':>26s}"
    ]
    for strategy, e in record["summary"].items():
        match, adv_at = (
            e["labels_to_match_adversarial_mean_curve"],
            e["adversarial_rmse_at_these_labels"],
        )
        if adv_at is not None:
            adv_at = f"{adv_at:.3f} ({e['adversarial_labels_at_these_labels']:.1f})"
        lines.append(
            f"{strategy:12s} {pm(e, 'final_n_labels', '6.1f'):>14s} "
            f"{pm(e, 'final_boltzmann_force_rmse', '7.3f'):>17s} "
            f"{pm(e, 'final_boltzmann_force_rmse_seen_well', '7.3f'):>17s} "
            f"{pm(e, 'final_boltzmann_force_rmse_unseen_well', '7.3f'):>17s} "
            f"{pm(e, 'final_labels_in_unseen_well', '5.1f'):>14s} "
            f"{'never' if match is None else f'{match:.1f}':>21s} {adv_at or 'n/a':>26s}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="3 seeds, 3 generations, 300 epochs (CI); full: 5 seeds, 8 generations, 600 epochs",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    seeds, generations = ([0, 1, 2], 3) if args.quick else ([0, 1, 2, 3, 4], 8)
    record = run(seeds, generations, labels_per_generation=8, quick=args.quick)
    record = {
        "command": " ".join(
            [
                Path(sys.executable).name,
                "-m",
                "benchmarks.double_well",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        ),
        "machine": {**machine_info(), "torch_threads_used": record["settings"]["threads"]},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        **record,
    }
    print(format_summary(record))
    print(f"{record['seconds']:.1f} s")
    return write_record(args.output, record)


if __name__ == "__main__":
    main()
