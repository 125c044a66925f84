"""The exploration strategies the adversarial attack is compared against.

Schwalbe-Koda, Tan & Gómez-Bombarelli (Nat. Commun. 12, 5104, 2021) compare adversarial
sampling with cheaper ways of proposing geometries to label: random displacement
(:mod:`advloop.adversarial.random_displacement`) and committee molecular dynamics, here,
with the same records as the attack (:class:`Seeds` in, :class:`Candidates` out), tuned
the way its own users tune it:

- :func:`committee_md`: Langevin dynamics on the committee-mean potential, sampled with
  the model-deviation criterion of DP-GEN (Zhang et al., Comput. Phys. Commun. 253,
  107206, 2020): a frame is a candidate when the largest per-atom force deviation lies in
  the trust window ``[lower, upper)``; a trajectory that reaches ``upper`` is stopped,
  since beyond it the committee, and so the dynamics it drives, is not trusted. The
  window is either absolute (``trust_mode="fixed"``, eV/Å) or, by default, a multiple of
  the committee's own force deviation on its training set (``"adaptive"``, as DP-GEN2 and
  aims-PAX users run it; see :class:`CommitteeMDSettings`).

The per-atom force deviation is ``σ_i = √Σ_xyz var_members(F_i)`` (ddof=1) in eV/Å, as in
:func:`advloop.potentials.committee.summarise`. Molecules are checked with
:func:`advloop.adversarial.geometry.check_geometry`; periodic structures for clashes with
distances to periodic images and for bonds of the seed that broke. Positions are never
wrapped into the cell. No NaN leaves.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from ase import units
from ase.data import atomic_masses

from advloop.adversarial.geometry import bonds_per_seed, check_geometry
from advloop.adversarial.random_displacement import check_strategy_settings
from advloop.adversarial.structures import Candidates, Seeds
from advloop.constraints import NonNegativeFloat, PositiveFloat, PositiveInt, Share
from advloop.potentials.committee import Committee
from advloop.potentials.dataset import Arrays
from advloop.potentials.model import Graph, build_graph

__all__ = [
    "ADAPTIVE_TRUST",
    "FIXED_TRUST",
    "CommitteeMDSettings",
    "MDStep",
    "committee_md",
    "icommittee_md",
    "training_force_deviation",
]

#: DP-GEN's absolute trust levels (lower, upper) in eV/Å: the defaults of ``trust_mode="fixed"``.
FIXED_TRUST = (0.05, 0.5)
#: (lower, upper) as multiples of ``reference_sigma``: the defaults of ``trust_mode="adaptive"``.
ADAPTIVE_TRUST = (1.0, 10.0)


def _reference(value: float | None) -> float:
    """``reference_sigma`` as a float; ValueError unless it is a finite number > 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
        or value <= 0
    ):
        raise ValueError(
            f"reference_sigma = {value!r}: must be a finite number > 0 eV/Å (a high "
            "percentile of the committee's max per-atom force deviation on its training "
            "set, see training_force_deviation)"
        )
    return float(value)


@dataclass(frozen=True)
class CommitteeMDSettings:
    """Langevin dynamics on the committee-mean potential, DP-GEN frame selection.

    temperature K; timestep fs; friction 1/fs (0 gives velocity Verlet, NVE);
    sample_interval: steps between frames considered as candidates; max_frames_per_seed:
    the most deviating frames inside the window kept per seed (every window frame up to
    this many becomes a candidate, for the batch selection to choose among); skin Å: the
    neighbour list holds pairs within cutoff + skin and is rebuilt once an atom has moved
    skin / 2, so no pair inside the cutoff is ever missed.

    The trust window ``[lower, upper)`` on a frame's largest per-atom force deviation
    (eV/Å); a frame inside it is a candidate, a trajectory reaching ``upper`` stops. A frame
    at or above ``lower`` never stops a trajectory; only ``upper``, an unphysical geometry
    or non-finite committee output does.

    - ``trust_mode="fixed"``: ``lower = trust_lower``, ``upper = trust_upper`` in eV/Å
      (defaults :data:`FIXED_TRUST`, 0.05 and 0.5, DP-GEN's). Absolute levels fit only
      the committee and system they were tuned for: on a 9-atom molecule they stopped
      every trajectory within 11–42 steps and gave 8 candidates instead of 32.
    - ``trust_mode="adaptive"`` (the default): ``lower = adaptive_lower ×
      reference_sigma`` and ``upper = adaptive_upper × reference_sigma`` (dimensionless
      factors, defaults :data:`ADAPTIVE_TRUST`, 1 and 10), where ``reference_sigma``
      (eV/Å, passed to :func:`committee_md` / :func:`icommittee_md`) is a high percentile
      of the committee's own max per-atom force deviation on its training set
      (:func:`training_force_deviation`). A frame is a candidate once the committee is
      less sure of it than of nearly all of its training data; the trajectory stops at
      ten times that, the ratio of DP-GEN's 0.05/0.5 eV/Å. This is the threshold of
      aims-PAX (Henkes et al., J. Chem. Inf. Model. 66, 2026, doi:10.1021/acs.jcim.5c02682;
      ``get_threshold`` in ``aims_PAX/tools/uncertainty.py``: ``(1 + c_x)`` times the mean
      of the last 400 uncertainties met in its MD), a multiple of the committee's own
      uncertainty scale, with two changes: the scale is measured on the training set
      rather than on the running trajectories, so that it does not rise with them when
      they all wander into poorly known regions (a running mean flags a fixed share of
      whatever is visited, however uncertain), and the upper level scales with it too
      (aims-PAX has none, DP-GEN2 keeps it absolute).
    - ``candidate_fraction`` (either mode; None: off): DP-GEN2's adaptive lower level
      (``ExplorationReportAdaptiveLower`` in
      ``dpgen2/exploration/report/report_adaptive_lower.py``: its ``rate_candi_f``, 0.01 by
      default, with at least ``numb_candi_f`` = 200 frames; here at least one). After the run,
      ``lower`` is set to the deviation of the ⌈candidate_fraction × N⌉-th most deviating
      of the N sampled frames (all below ``upper``), so that this share of the frames are
      candidates (ties included) before the per-seed cap. The lower-level field of the
      mode (``trust_lower`` or ``adaptive_lower``) is then not read and must be left out.

    The fields of the other mode must be left out (None): a value that would not be read
    is refused rather than ignored.
    """

    __pydantic_config__ = {"extra": "forbid", "allow_inf_nan": False}

    # temperature of the Langevin thermostat and the starting velocities
    temperature: PositiveFloat = field(default=300.0, metadata={"unit": "K"})
    timestep: PositiveFloat = field(default=0.5, metadata={"unit": "fs"})
    # MD steps per seed
    n_steps: PositiveInt = 200
    # Langevin friction (0: velocity Verlet, NVE)
    friction: NonNegativeFloat = field(default=0.02, metadata={"unit": "1/fs"})
    # steps between frames considered as candidates
    sample_interval: PositiveInt = 10
    # adaptive: the trust window is a multiple of the committee's own force deviation on its
    # training set; fixed: trust_lower to trust_upper in eV/Å
    trust_mode: Literal["fixed", "adaptive"] = "adaptive"
    # fixed mode: a frame whose max force deviation reaches this is a candidate (default 0.05)
    trust_lower: NonNegativeFloat | None = field(default=None, metadata={"unit": "eV/Å"})
    # fixed mode: a trajectory whose max force deviation reaches this stops (default 0.5)
    trust_upper: PositiveFloat | None = field(default=None, metadata={"unit": "eV/Å"})
    # adaptive mode: the lower level, times the training-set deviation (default 1)
    adaptive_lower: NonNegativeFloat | None = None
    # adaptive mode: the upper level, times the training-set deviation (default 10)
    adaptive_upper: PositiveFloat | None = None
    # DP-GEN2's adaptive lower level: this share of the sampled frames are candidates
    candidate_fraction: Share | None = None
    min_distance_factor: NonNegativeFloat = 0.5
    max_bond_factor: NonNegativeFloat = 2.0
    # the most deviating window frames kept per seed
    max_frames_per_seed: PositiveInt = 4
    # neighbour-list skin beyond the cutoff
    skin: PositiveFloat = field(default=0.5, metadata={"unit": "Å"})

    def __post_init__(self) -> None:
        check_strategy_settings(self, "md")
        for low, high in (("trust_lower", "trust_upper"), ("adaptive_lower", "adaptive_upper")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and not hi > lo:
                raise ValueError(f"md.{high} ({hi}) must be larger than md.{low} ({lo})")
        fixed = self.trust_mode == "fixed"
        names = ("trust_lower", "trust_upper") if fixed else ("adaptive_lower", "adaptive_upper")
        other = ("adaptive_lower", "adaptive_upper") if fixed else ("trust_lower", "trust_upper")
        for name in other:
            if getattr(self, name) is not None:
                mode = "adaptive" if fixed else "fixed"
                window = "" if fixed else " times reference_sigma"
                raise ValueError(
                    f"md.{name} = {getattr(self, name)} is read only with md.trust_mode = "
                    f"'{mode}', and md.trust_mode is '{self.trust_mode}'"
                    + ("" if fixed else " (the default)")
                    + f", whose window is md.{names[0]} to md.{names[1]}{window}; set "
                    f"md.trust_mode = '{mode}' or leave md.{name} out"
                )
        defaults = FIXED_TRUST if fixed else ADAPTIVE_TRUST
        lo, hi = (getattr(self, n) for n in names)
        if self.candidate_fraction is not None:
            if lo is not None:
                raise ValueError(
                    f"md.{names[0]} = {lo} is not read with md.candidate_fraction, which "
                    "chooses the lower trust level from the sampled frames; leave one out"
                )
        elif not (defaults[1] if hi is None else hi) > (defaults[0] if lo is None else lo):
            raise ValueError(
                f"md.{names[1]} ({defaults[1] if hi is None else hi}) must be larger than "
                f"md.{names[0]} ({defaults[0] if lo is None else lo}"
                + (", the default)" if lo is None else ")")
            )

    def trust_levels(self, reference_sigma: float | None = None) -> tuple[float | None, float]:
        """The trust window ``(lower, upper)`` in eV/Å (see the class docstring).

        ``reference_sigma`` (eV/Å) is read only in adaptive mode, where it is required;
        a caller may pass it in either mode. ``lower`` is None where ``candidate_fraction``
        chooses it after the run. Raises ValueError in adaptive mode without a finite
        ``reference_sigma > 0``, or for a given one that is not.
        """
        if reference_sigma is not None:
            reference_sigma = _reference(reference_sigma)
        if self.trust_mode == "fixed":
            lo, hi, scale = self.trust_lower, self.trust_upper, 1.0
            defaults = FIXED_TRUST
        else:
            if reference_sigma is None:
                raise ValueError(
                    "md.trust_mode = 'adaptive' needs reference_sigma (eV/Å), a high "
                    "percentile of the committee's max per-atom force deviation on its "
                    "training set: pass committee_md(..., reference_sigma="
                    "training_force_deviation(committee, training_data)), or set "
                    "md.trust_mode = 'fixed' with md.trust_lower and md.trust_upper in eV/Å"
                )
            lo, hi, scale = self.adaptive_lower, self.adaptive_upper, reference_sigma
            defaults = ADAPTIVE_TRUST
        upper = scale * (defaults[1] if hi is None else hi)
        if self.candidate_fraction is not None:
            return None, upper
        return scale * (defaults[0] if lo is None else lo), upper

    def _upper_text(self, upper: float, reference_sigma: float | None) -> str:
        """The upper level as a stop reason names it."""
        if self.trust_mode == "fixed":
            return f"trust_upper {upper:g} eV/Å"
        factor = ADAPTIVE_TRUST[1] if self.adaptive_upper is None else self.adaptive_upper
        return (
            f"trust_upper {upper:.3g} eV/Å (adaptive_upper {factor:g} × reference_sigma "
            f"{reference_sigma:.3g} eV/Å)"
        )


def training_force_deviation(committee: Committee, data: Arrays, percentile: float = 95.0) -> float:
    """The ``percentile`` (in [0, 100]) over the structures of ``data`` of the committee's
    largest per-atom force deviation ``max_i σ_i`` (eV/Å): the ``reference_sigma`` of the
    adaptive trust window, measured on the committee's own training set.

    Raises ValueError for no structures, a percentile outside [0, 100], non-finite
    committee forces, or a committee that does not deviate at all (a zero reference).
    """
    if (
        isinstance(percentile, bool)
        or not isinstance(percentile, numbers.Real)
        or not 0 <= percentile <= 100
    ):
        raise ValueError(f"percentile = {percentile!r}: must be a number in [0, 100]")
    if len(data.n_atoms) == 0:
        raise ValueError("training_force_deviation: no structures to measure the committee on")
    pred = committee.predict_arrays(data.numbers, data.positions, data.n_atoms, data.cell, data.pbc)
    if not np.all(np.isfinite(pred.forces_std)):
        raise ValueError(
            "training_force_deviation: the committee's forces on its training set are not finite"
        )
    value = float(np.percentile(pred.forces_std_max, percentile))
    if not value > 0:
        raise ValueError(
            "training_force_deviation: the committee does not deviate on its training set "
            "(identical members?), so no adaptive trust window can be scaled from it"
        )
    return value


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
    committee: Committee,
    seeds: Seeds,
    settings: CommitteeMDSettings,
    rng: np.random.Generator,
    *,
    reference_sigma: float | None = None,
) -> Iterator[MDStep]:
    """Langevin dynamics of all seeds in one batch on the committee-mean potential.

    BAOAB splitting (Leimkuhler & Matthews, Appl. Math. Res. Express 2013, 34), which is
    velocity Verlet for ``friction = 0``. Masses from ``ase.data.atomic_masses``; starting
    velocities Maxwell-Boltzmann at ``temperature`` with each seed's centre-of-mass
    momentum removed. Cells stay fixed. One committee call per step on the whole batch.

    Yields step 0 (the seeds) and one :class:`MDStep` per step. A seed is stopped, frozen
    at its last accepted geometry, when a new geometry fails the checks, its committee
    forces are not finite, or its largest force deviation reaches the upper trust level
    (:meth:`CommitteeMDSettings.trust_levels`; ``reference_sigma`` eV/Å is required in
    adaptive mode). Crossing the lower level never stops a seed. Ends early once every
    seed is stopped. The settings and ``reference_sigma`` are checked when this is
    called, before any step: ValueError in adaptive mode without a finite
    ``reference_sigma > 0``.
    """
    _, upper = settings.trust_levels(reference_sigma)
    upper_text = settings._upper_text(upper, reference_sigma)
    return _md_steps(committee, seeds, settings, rng, upper, upper_text)


def _md_steps(
    committee: Committee,
    seeds: Seeds,
    settings: CommitteeMDSettings,
    rng: np.random.Generator,
    upper: float,
    upper_text: str,
) -> Iterator[MDStep]:
    """The steps of :func:`icommittee_md`, stopping a seed at ``upper`` eV/Å (named
    ``upper_text`` in the reason)."""
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
            if reason is None and dev_max[s] >= upper:
                reason = f"max force deviation {dev_max[s]:.3g} eV/Å reached {upper_text}"
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


def _adaptive_lower(deviation: np.ndarray, fraction: float) -> float:
    """DP-GEN2's adaptive lower level: the deviation of the ⌈fraction × N⌉-th largest of
    the N values of ``deviation`` (at least the largest one); inf where there are none."""
    if not len(deviation):
        return math.inf
    k = min(len(deviation), max(1, math.ceil(round(fraction * len(deviation), 9))))
    return float(np.sort(deviation)[::-1][k - 1])


def committee_md(
    committee: Committee,
    seeds: Seeds,
    settings: CommitteeMDSettings,
    rng: np.random.Generator,
    *,
    reference_sigma: float | None = None,
    progress: Callable[[MDStep], None] | None = None,
) -> Candidates:
    """Run :func:`icommittee_md` and select frames as DP-GEN does (``progress`` is called
    with every step, to report it).

    Every ``sample_interval`` steps (not step 0, the seed itself), each active seed's
    frame is sampled; a sampled frame is a candidate if ``lower <= sigma_f_max < upper``
    (:meth:`CommitteeMDSettings.trust_levels`; with ``candidate_fraction`` the lower level
    is chosen from all sampled frames once the run is over). Of each seed's candidates,
    the ``max_frames_per_seed`` most deviating are returned, all of them where there are
    fewer, ordered by seed and then by decreasing score (score = sigma_f_max, eV/Å;
    parent = seed index). ``reference_sigma`` (eV/Å) is required in adaptive mode
    (ValueError before any step without it).
    """
    lower, upper = settings.trust_levels(reference_sigma)
    steps = icommittee_md(committee, seeds, settings, rng, reference_sigma=reference_sigma)
    starts = seeds.starts
    seed_of: list[int] = []
    frames: list[tuple[float, float, np.ndarray]] = []  # sigma_f_max, sigma_f_mean, positions
    state = None
    for state in steps:
        if progress is not None:
            progress(state)
        if state.step == 0 or state.step % settings.sample_interval:
            continue
        for s in np.flatnonzero(state.active):
            seed_of.append(int(s))
            frames.append(
                (
                    float(state.sigma_f_max[s]),
                    float(state.sigma_f_mean[s]),
                    state.positions[starts[s] : starts[s + 1]].copy(),
                )
            )
    stopped = {} if state is None else state.stopped
    deviation = np.array([fr[0] for fr in frames])
    fraction = settings.candidate_fraction
    if lower is None and fraction is not None:  # DP-GEN2's adaptive lower level
        lower = _adaptive_lower(deviation[deviation < upper], fraction)
    inside = np.flatnonzero((deviation >= lower) & (deviation < upper))
    chosen: list[int] = []
    per_seed: dict[int, int] = {}
    for k in sorted(inside, key=lambda k: (seed_of[k], -deviation[k])):  # stable: time order
        if per_seed.get(seed_of[k], 0) < settings.max_frames_per_seed:
            per_seed[seed_of[k]] = per_seed.get(seed_of[k], 0) + 1
            chosen.append(int(k))
    if not chosen:
        return Candidates.empty(stopped)
    parent = np.array([seed_of[k] for k in chosen], dtype=np.int64)
    score = deviation[chosen]
    return Candidates(
        numbers=np.concatenate([seeds.numbers[starts[s] : starts[s + 1]] for s in parent]),
        positions=np.concatenate([frames[k][2] for k in chosen]),
        n_atoms=seeds.n_atoms[parent],
        cells=seeds.cells[parent],
        pbc=seeds.pbc[parent],
        parent=parent,
        sigma_f_mean=np.array([frames[k][1] for k in chosen]),
        sigma_f_max=score,
        score=score,
        stopped=stopped,
    )
