"""The exploration strategies the adversarial attack is compared against.

Schwalbe-Koda, Tan & Gómez-Bombarelli (Nat. Commun. 12, 5104, 2021) compare adversarial
sampling with cheaper ways of proposing geometries to label. Two of them live here, with
the same records as the attack (:class:`Seeds` in, :class:`Candidates` out):

- :func:`random_displacement`: Gaussian noise on the seeds' coordinates, scored by the
  committee.
- :func:`committee_md`: Langevin dynamics on the committee-mean potential, sampled with
  the model-deviation criterion of DP-GEN (Zhang et al., Comput. Phys. Commun. 253,
  107206, 2020): a frame is a candidate when the largest per-atom force deviation lies in
  ``[trust_lower, trust_upper)``; a trajectory that reaches ``trust_upper`` is stopped,
  since beyond it the committee, and so the dynamics it drives, is not trusted.

The per-atom force deviation is ``σ_i = √Σ_xyz var_members(F_i)`` (ddof=1) in eV/Å, as in
:func:`advloop.potentials.committee.summarise`. Molecules are checked with
:func:`advloop.adversarial.geometry.check_geometry`; periodic structures for clashes with
distances to periodic images and for bonds of the seed that broke. Positions are never
wrapped into the cell. No NaN leaves.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from ase import units
from ase.data import atomic_masses

from advloop.adversarial.geometry import bonds_per_seed, check_geometry, validate_factors
from advloop.adversarial.structures import Candidates, Seeds, atom_offsets
from advloop.constraints import NonNegativeFloat, PositiveFloat, PositiveInt, check_fields
from advloop.potentials.committee import Committee
from advloop.potentials.model import Graph, build_graph

__all__ = [
    "CommitteeMDSettings",
    "MDStep",
    "RandomDisplacementSettings",
    "committee_md",
    "icommittee_md",
    "random_displacement",
]


def _check(settings: RandomDisplacementSettings | CommitteeMDSettings, prefix: str) -> None:
    """Raise ValueError naming ``prefix.key`` for the first value out of range."""
    check_fields(settings, prefix)
    try:
        validate_factors(settings.min_distance_factor, settings.max_bond_factor)
    except ValueError as err:
        raise ValueError(f"{prefix}.{err}") from None


@dataclass(frozen=True)
class RandomDisplacementSettings:
    """std: Å, standard deviation of the Gaussian noise on each Cartesian component;
    n_per_seed: displaced copies per seed; min_distance_factor, max_bond_factor: the
    geometry checks of :func:`advloop.adversarial.geometry.check_geometry`."""

    __pydantic_config__ = {"extra": "forbid", "allow_inf_nan": False}

    std: PositiveFloat = field(default=0.05, metadata={"unit": "Å"})
    n_per_seed: PositiveInt = 1
    min_distance_factor: NonNegativeFloat = 0.5
    max_bond_factor: NonNegativeFloat = 2.0

    def __post_init__(self) -> None:
        _check(self, "random")


@dataclass(frozen=True)
class CommitteeMDSettings:
    """Langevin dynamics on the committee-mean potential, DP-GEN frame selection.

    temperature K; timestep fs; friction 1/fs (0 gives velocity Verlet, NVE);
    sample_interval: steps between frames considered as candidates; trust_lower and
    trust_upper eV/Å on the largest per-atom force deviation of a frame;
    max_frames_per_seed: the most deviating frames inside the window kept per seed;
    skin Å: the neighbour list holds pairs within cutoff + skin and is rebuilt once an
    atom has moved skin / 2, so no pair inside the cutoff is ever missed.
    """

    __pydantic_config__ = {"extra": "forbid", "allow_inf_nan": False}

    temperature: PositiveFloat = field(default=300.0, metadata={"unit": "K"})
    timestep: PositiveFloat = field(default=0.5, metadata={"unit": "fs"})
    n_steps: PositiveInt = 200
    friction: NonNegativeFloat = field(default=0.02, metadata={"unit": "1/fs"})
    sample_interval: PositiveInt = 10
    trust_lower: NonNegativeFloat = field(default=0.05, metadata={"unit": "eV/Å"})
    trust_upper: float = field(default=0.5, metadata={"unit": "eV/Å"})
    min_distance_factor: NonNegativeFloat = 0.5
    max_bond_factor: NonNegativeFloat = 2.0
    max_frames_per_seed: PositiveInt = 4
    skin: PositiveFloat = field(default=0.5, metadata={"unit": "Å"})

    def __post_init__(self) -> None:
        _check(self, "md")
        if not self.trust_upper > self.trust_lower:
            raise ValueError(
                f"md.trust_upper ({self.trust_upper}) must be larger than "
                f"md.trust_lower ({self.trust_lower})"
            )


def random_displacement(
    committee: Committee,
    seeds: Seeds,
    settings: RandomDisplacementSettings,
    rng: np.random.Generator,
) -> Candidates:
    """``n_per_seed`` copies of every seed, each atom displaced by N(0, std²) per
    Cartesian component, scored in one batched committee pass (score = sigma_f_mean).

    Copies that fail the geometry checks, or whose forces are not finite, are dropped;
    ``stopped`` maps their seed to how many were dropped and the first reason.
    Candidates are ordered by seed, then by copy.
    """
    parent = np.repeat(np.arange(len(seeds)), settings.n_per_seed)
    starts = seeds.starts
    rows = np.concatenate(
        [np.arange(starts[s], starts[s + 1]) for s in parent] + [np.zeros(0, int)]
    )
    positions = seeds.positions[rows] + rng.normal(0.0, settings.std, (len(rows), 3))
    numbers, n_atoms = seeds.numbers[rows], seeds.n_atoms[parent]
    cells, pbc = seeds.cells[parent], seeds.pbc[parent]
    cand_starts = atom_offsets(n_atoms)
    bonds = bonds_per_seed(seeds.numbers, seeds.positions, starts, seeds.cells, seeds.pbc)
    reasons: dict[int, list[str]] = {}
    keep = np.ones(len(parent), dtype=bool)
    for c, s in enumerate(parent):
        atoms = slice(cand_starts[c], cand_starts[c + 1])
        reason = check_geometry(
            numbers[atoms],
            positions[atoms],
            settings.min_distance_factor,
            settings.max_bond_factor,
            cells[c],
            pbc[c],
            bonds[s],
        )
        if reason is not None:
            keep[c] = False
            reasons.setdefault(int(s), []).append(reason)
    sigma_mean, sigma_max = np.zeros(len(parent)), np.zeros(len(parent))
    if keep.any():
        kept_idx = np.flatnonzero(keep)
        kept = np.repeat(keep, n_atoms)
        pred = committee.predict_arrays(
            numbers[kept], positions[kept], n_atoms[keep], cells[keep], pbc[keep]
        )
        idx = np.repeat(np.arange(len(kept_idx)), n_atoms[keep])
        bad = np.bincount(idx, weights=~np.isfinite(pred.forces_std), minlength=len(kept_idx)) > 0
        sigma_mean[kept_idx] = np.where(bad, 0.0, pred.forces_std_mean)
        sigma_max[kept_idx] = np.where(bad, 0.0, pred.forces_std_max)
        for c in kept_idx[bad]:
            reasons.setdefault(int(parent[c]), []).append("committee forces not finite")
        keep[kept_idx[bad]] = False
    stopped = {
        s: f"{len(r)} of {settings.n_per_seed} displacements rejected: {r[0]}"
        for s, r in sorted(reasons.items())
    }
    kept = np.repeat(keep, n_atoms)
    return Candidates(
        numbers[kept],
        positions[kept],
        n_atoms[keep],
        cells[keep],
        pbc[keep],
        parent[keep],
        sigma_mean[keep],
        sigma_max[keep],
        sigma_mean[keep],
        stopped,
    )


@dataclass
class MDStep:
    """State after one step of :func:`icommittee_md`.

    positions [n_atoms_total, 3] Å (unwrapped; a stopped seed stays at its last accepted
    geometry); sigma_f_max and sigma_f_mean [n_seeds] eV/Å (max and mean over atoms of
    the per-atom force deviation; sigma_f_max is DP-GEN's model deviation); energy
    [n_seeds] eV, the committee-mean potential energy; kinetic [n_seeds] eV; active
    [n_seeds] bool; stopped maps a seed index to why its trajectory ended. A stopped
    seed keeps the values of the geometry it is frozen at.
    """

    step: int
    positions: np.ndarray
    sigma_f_max: np.ndarray
    sigma_f_mean: np.ndarray
    energy: np.ndarray
    kinetic: np.ndarray
    active: np.ndarray
    stopped: dict[int, str] = field(default_factory=dict)


def _evaluate(
    committee: Committee, graph: Graph, x: np.ndarray, idx_m: np.ndarray, n_atoms: np.ndarray
) -> tuple[np.ndarray, ...]:
    """Committee-mean energies [S] eV and forces [A, 3] eV/Å, max and mean per-atom force
    deviation [S] eV/Å, and which structures gave finite results [S]; non-finite entries
    are returned as 0."""
    energies, forces = committee.energies_forces(graph, torch.as_tensor(x, dtype=torch.float64))
    energies = energies.detach().to(torch.float64)
    forces = forces.detach().to(torch.float64)
    f_std = forces.var(dim=0).sum(dim=-1).sqrt().numpy()  # [A]
    f_mean = forces.mean(dim=0).numpy()  # [A, 3]
    e_mean = energies.mean(dim=0).numpy()  # [S]
    atom_ok = np.isfinite(f_std) & np.isfinite(f_mean).all(axis=1)
    finite = (np.bincount(idx_m, weights=~atom_ok, minlength=len(n_atoms)) == 0) & np.isfinite(
        e_mean
    )
    f_std = np.where(atom_ok, f_std, 0.0)
    dev_max = np.zeros(len(n_atoms))
    np.maximum.at(dev_max, idx_m, f_std)
    dev_mean = np.bincount(idx_m, weights=f_std, minlength=len(n_atoms)) / n_atoms
    return (
        np.where(finite, e_mean, 0.0),
        np.where(atom_ok[:, None], f_mean, 0.0),
        dev_max,
        dev_mean,
        finite,
    )


def icommittee_md(
    committee: Committee, seeds: Seeds, settings: CommitteeMDSettings, rng: np.random.Generator
) -> Iterator[MDStep]:
    """Langevin dynamics of all seeds in one batch on the committee-mean potential.

    BAOAB splitting (Leimkuhler & Matthews, Appl. Math. Res. Express 2013, 34), which is
    velocity Verlet for ``friction = 0``. Masses from ``ase.data.atomic_masses``; starting
    velocities Maxwell-Boltzmann at ``temperature`` with each seed's centre-of-mass
    momentum removed. Cells stay fixed. One committee call per step on the whole batch.

    Yields step 0 (the seeds) and one :class:`MDStep` per step. A seed is stopped, frozen
    at its last accepted geometry, when a new geometry fails the checks, its committee
    forces are not finite, or its largest force deviation reaches ``trust_upper``. Ends
    early once every seed is stopped.
    """
    n_seeds = len(seeds)
    if n_seeds == 0:
        return
    n_atoms = np.asarray(seeds.n_atoms, dtype=np.int64)
    starts = seeds.starts
    idx_m = np.repeat(np.arange(n_seeds), n_atoms)
    mass = atomic_masses[seeds.numbers][:, None]  # [A, 1] amu
    dt = settings.timestep * units.fs
    c1 = float(np.exp(-settings.friction / units.fs * dt))
    c2 = float(np.sqrt(1.0 - c1 * c1))
    sigma_v = np.sqrt(units.kB * settings.temperature / mass)  # [A, 1] Å / ASE time
    cells, pbc = seeds.cells, seeds.pbc
    bonds = bonds_per_seed(seeds.numbers, seeds.positions, starts, cells, pbc)

    def com_free(v: np.ndarray) -> np.ndarray:
        momentum = np.stack(
            [np.bincount(idx_m, weights=(mass * v)[:, k], minlength=n_seeds) for k in range(3)],
            axis=1,
        )  # [S, 3]
        total_mass = np.bincount(idx_m, weights=mass[:, 0], minlength=n_seeds)
        return v - (momentum / total_mass[:, None])[idx_m]

    x = np.array(seeds.positions, dtype=np.float64)
    v = com_free(sigma_v * rng.standard_normal(x.shape))
    f = np.zeros_like(x)
    stats = np.zeros((3, n_seeds))  # sigma_f_max, sigma_f_mean, energy
    active = np.ones(n_seeds, dtype=bool)
    stopped: dict[int, str] = {}
    cutoff = committee.spec.cutoff + settings.skin
    graph, x_built = None, x

    for step in range(settings.n_steps + 1):
        if step == 0:
            x_new, v_half = x, v
        else:
            v_half = v + 0.5 * dt * f / mass
            x_new = x + 0.5 * dt * v_half
            if c2 > 0:
                v_half = c1 * v_half + c2 * sigma_v * rng.standard_normal(x.shape)
            v_half = v_half * active[idx_m][:, None]
            x_new = x_new + 0.5 * dt * v_half
        if graph is None or np.max(np.linalg.norm(x_new - x_built, axis=1)) > 0.5 * settings.skin:
            graph, x_built = build_graph(seeds.numbers, x_new, n_atoms, cutoff, cells, pbc), x_new
        e_new, f_new, dev_max, dev_mean, finite = _evaluate(committee, graph, x_new, idx_m, n_atoms)
        for s in np.flatnonzero(active):
            atoms = slice(starts[s], starts[s + 1])
            reason = check_geometry(
                seeds.numbers[atoms],
                x_new[atoms],
                settings.min_distance_factor,
                settings.max_bond_factor,
                cells[s],
                pbc[s],
                bonds[s],
            )
            if reason is None and not finite[s]:
                reason = "committee energy or forces not finite"
            if reason is None and dev_max[s] >= settings.trust_upper:
                reason = (
                    f"max force deviation {dev_max[s]:.3g} eV/Å reached "
                    f"trust_upper {settings.trust_upper:g} eV/Å"
                )
            if reason is not None:
                stopped[int(s)] = f"step {step}: {reason}"
                if step == 0 and finite[s]:
                    stats[:, s] = dev_max[s], dev_mean[s], e_new[s]
                active[s] = False
        stats[:, active] = np.stack([dev_max, dev_mean, e_new])[:, active]
        moving = active[idx_m][:, None]
        x = np.where(moving, x_new, x)
        f = np.where(moving, f_new, 0.0)
        v = np.where(moving, v_half + 0.5 * dt * f / mass if step else v_half, 0.0)
        kinetic = np.bincount(idx_m, weights=0.5 * (mass * v * v).sum(axis=1), minlength=n_seeds)
        yield MDStep(
            step=step,
            positions=x.copy(),
            sigma_f_max=stats[0].copy(),
            sigma_f_mean=stats[1].copy(),
            energy=stats[2].copy(),
            kinetic=kinetic,
            active=active.copy(),
            stopped=dict(stopped),
        )
        if not active.any():
            return


def committee_md(
    committee: Committee, seeds: Seeds, settings: CommitteeMDSettings, rng: np.random.Generator
) -> Candidates:
    """Run :func:`icommittee_md` and select frames as DP-GEN does.

    Every ``sample_interval`` steps (not step 0, the seed itself), each active seed's
    frame is a candidate if ``trust_lower <= sigma_f_max < trust_upper``; the
    ``max_frames_per_seed`` most deviating of a seed's candidates are returned, ordered
    by seed and then by decreasing score (score = sigma_f_max, eV/Å; parent = seed index).
    """
    frames: dict[int, list[tuple[float, float, np.ndarray]]] = {}
    starts = seeds.starts
    state = None
    for state in icommittee_md(committee, seeds, settings, rng):
        if state.step == 0 or state.step % settings.sample_interval:
            continue
        inside = (
            state.active
            & (state.sigma_f_max >= settings.trust_lower)
            & (state.sigma_f_max < settings.trust_upper)
        )
        for s in np.flatnonzero(inside):
            frames.setdefault(int(s), []).append(
                (
                    float(state.sigma_f_max[s]),
                    float(state.sigma_f_mean[s]),
                    state.positions[starts[s] : starts[s + 1]].copy(),
                )
            )
    stopped = {} if state is None else state.stopped
    chosen = [
        (s, frame)
        for s in sorted(frames)
        for frame in sorted(frames[s], key=lambda fr: -fr[0])[: settings.max_frames_per_seed]
    ]
    if not chosen:
        return Candidates.empty(stopped)
    parent = np.array([s for s, _ in chosen], dtype=np.int64)
    score = np.array([fr[0] for _, fr in chosen])
    return Candidates(
        numbers=np.concatenate([seeds.numbers[starts[s] : starts[s + 1]] for s in parent]),
        positions=np.concatenate([fr[2] for _, fr in chosen]),
        n_atoms=seeds.n_atoms[parent],
        cells=seeds.cells[parent],
        pbc=seeds.pbc[parent],
        parent=parent,
        sigma_f_mean=np.array([fr[1] for _, fr in chosen]),
        sigma_f_max=score,
        score=score,
        stopped=stopped,
    )
