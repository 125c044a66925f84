"""Random displacement: the simplest exploration the adversarial attack is compared
against (Schwalbe-Koda, Tan & Gómez-Bombarelli, Nat. Commun. 12, 5104, 2021).

Gaussian noise on the seeds' coordinates, scored by the committee, with the same records
as the attack (:class:`Seeds` in, :class:`Candidates` out); optionally capped in
committee energy above the seed (``max_energy_rise``), so that no absurdly high-energy
geometry goes to the labeller, as users of this baseline cap it. Committee MD, the other
baseline, is :mod:`advloop.adversarial.baselines`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from advloop.adversarial.geometry import bonds_per_seed, check_geometry, validate_factors
from advloop.adversarial.structures import Candidates, Seeds, atom_offsets
from advloop.constraints import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Share,
    check_fields,
)
from advloop.potentials.committee import Committee

__all__ = ["RandomDisplacementSettings", "check_strategy_settings", "random_displacement"]


def check_strategy_settings(settings, prefix: str) -> None:
    """Raise ValueError naming ``prefix.key`` for the first value of an exploration
    strategy's settings out of range, its geometry factors included."""
    check_fields(settings, prefix)
    try:
        validate_factors(settings.min_distance_factor, settings.max_bond_factor)
    except ValueError as err:
        raise ValueError(f"{prefix}.{err}") from None


@dataclass(frozen=True)
class RandomDisplacementSettings:
    """Gaussian displacement of the seeds, optionally capped in committee energy.

    std: Å, standard deviation of the Gaussian noise on each Cartesian component;
    n_per_seed: displaced copies per seed; min_distance_factor, max_bond_factor: the
    geometry checks of :func:`advloop.adversarial.geometry.check_geometry`.

    max_energy_rise: eV per atom (None: no cap). A copy whose committee-mean energy lies
    more than ``max_energy_rise × n_atoms`` above the committee-mean energy of its own
    seed is redrawn from the seed, up to ``max_redraws`` times, the k-th time with the
    standard deviation ``std × redraw_std_factor**k``; a copy still above the cap after
    that is dropped, with the reason, like a copy that fails the geometry checks. Users
    of random displacement cap the energy of what they label this way (a geometry many
    eV above its seed teaches a potential nothing about the region it will be used in).
    Redrawing rather than only dropping keeps ``n_per_seed`` copies per seed where the
    std is large for the cap, where plain rejection at the same std would rarely succeed:
    in a harmonic well the rise grows as std², so each halving (the default factor) cuts
    it about four-fold. ``redraw_std_factor = 1`` is plain rejection sampling from the
    Gaussian truncated at the cap; ``max_redraws = 0`` drops at once. ``max_redraws`` and
    ``redraw_std_factor`` are read only with a cap.
    """

    __pydantic_config__ = {"extra": "forbid", "allow_inf_nan": False}

    # standard deviation of the Gaussian noise on each Cartesian component
    std: PositiveFloat = field(default=0.05, metadata={"unit": "Å"})
    # displaced copies per seed
    n_per_seed: PositiveInt = 1
    min_distance_factor: NonNegativeFloat = 0.5
    max_bond_factor: NonNegativeFloat = 2.0
    # a copy more than this above its seed in committee energy is redrawn smaller (None: no cap)
    max_energy_rise: PositiveFloat | None = field(default=None, metadata={"unit": "eV/atom"})
    # redraws of a copy above the energy cap before it is dropped
    max_redraws: NonNegativeInt = 3
    # each redraw multiplies std by this
    redraw_std_factor: Share = 0.5

    def __post_init__(self) -> None:
        check_strategy_settings(self, "random")


def random_displacement(
    committee: Committee,
    seeds: Seeds,
    settings: RandomDisplacementSettings,
    rng: np.random.Generator,
) -> Candidates:
    """``n_per_seed`` copies of every seed, each atom displaced by N(0, std²) per
    Cartesian component, scored in one batched committee pass (score = sigma_f_mean).

    Copies that fail the geometry checks, or whose forces are not finite, are dropped.
    With ``max_energy_rise``, the seeds are evaluated too (one batched pass) and a copy
    more than ``max_energy_rise`` eV/atom above its seed's committee-mean energy is
    redrawn with a smaller std, then dropped (see :class:`RandomDisplacementSettings`);
    each round of redraws is one more batched pass, over the redrawn copies only.
    ``stopped`` maps each seed with dropped copies to how many were dropped and the first
    reason. Candidates are ordered by seed, then by copy. The first draw is the same with
    and without a cap, for the same ``rng``.
    """
    n = len(seeds) * settings.n_per_seed
    parent = np.repeat(np.arange(len(seeds)), settings.n_per_seed)
    starts = seeds.starts
    rows = np.concatenate(
        [np.arange(starts[s], starts[s + 1]) for s in parent] + [np.zeros(0, int)]
    )
    origin = seeds.positions[rows]
    positions = origin + rng.normal(0.0, settings.std, (len(rows), 3))
    numbers, n_atoms = seeds.numbers[rows], seeds.n_atoms[parent]
    cells, pbc = seeds.cells[parent], seeds.pbc[parent]
    cand_starts = atom_offsets(n_atoms)
    bonds = bonds_per_seed(seeds.numbers, seeds.positions, starts, seeds.cells, seeds.pbc)
    reasons: dict[int, list[str]] = {}
    keep = np.ones(n, dtype=bool)
    sigma_mean, sigma_max = np.zeros(n), np.zeros(n)
    cap = settings.max_energy_rise

    def drop(c: int, reason: str) -> None:
        keep[c] = False
        reasons.setdefault(int(parent[c]), []).append(reason)

    def sane(copies: np.ndarray) -> np.ndarray:
        """The copies that pass the geometry checks; the others are dropped."""
        for c in copies:
            atoms = slice(cand_starts[c], cand_starts[c + 1])
            reason = check_geometry(
                numbers[atoms],
                positions[atoms],
                settings.min_distance_factor,
                settings.max_bond_factor,
                cells[c],
                pbc[c],
                bonds[parent[c]],
            )
            if reason is not None:
                drop(c, reason)
        return copies[keep[copies]]

    def score(copies: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Committee scores of ``copies`` (ascending) into sigma_*; those with non-finite
        output are dropped. Returns the copies left and their energies [eV]."""
        chosen = np.zeros(n, dtype=bool)
        chosen[copies] = True
        atoms = np.repeat(chosen, n_atoms)
        pred = committee.predict_arrays(
            numbers[atoms], positions[atoms], n_atoms[chosen], cells[chosen], pbc[chosen]
        )
        idx = np.repeat(np.arange(len(copies)), n_atoms[chosen])
        bad = np.bincount(idx, weights=~np.isfinite(pred.forces_std), minlength=len(copies)) > 0
        sigma_mean[copies] = np.where(bad, 0.0, pred.forces_std_mean)
        sigma_max[copies] = np.where(bad, 0.0, pred.forces_std_max)
        for c in copies[bad]:
            drop(c, "committee forces not finite")
        bad_energy = (
            ~bad & ~np.isfinite(pred.energy_mean) if cap is not None else np.zeros_like(bad)
        )
        for c in copies[bad_energy]:
            drop(c, "committee energy not finite")
        ok = ~bad & ~bad_energy
        return copies[ok], pred.energy_mean[ok]

    pending = sane(np.arange(n))
    if cap is not None and len(pending):
        seed_energy = committee.predict_arrays(
            seeds.numbers, seeds.positions, seeds.n_atoms, seeds.cells, seeds.pbc
        ).energy_mean
        for c in pending[~np.isfinite(seed_energy[parent[pending]])]:
            drop(c, "the seed's committee energy is not finite, so max_energy_rise cannot apply")
        pending = pending[keep[pending]]
    for attempt in range(settings.max_redraws + 1 if cap is not None else 1):
        if not len(pending):
            break
        pending, energy = score(pending)
        if cap is None:
            break
        rise = (energy - seed_energy[parent[pending]]) / n_atoms[pending]  # eV/atom
        over = rise > cap
        if attempt == settings.max_redraws:
            for c, r in zip(pending[over], rise[over], strict=True):
                drop(
                    int(c),
                    f"committee energy {r:.3g} eV/atom above its seed's, over max_energy_rise "
                    f"{cap:g} eV/atom" + (f" after {attempt} redraws" if attempt else ""),
                )
            break
        pending = pending[over]
        redrawn = np.concatenate(
            [np.arange(cand_starts[c], cand_starts[c + 1]) for c in pending] + [np.zeros(0, int)]
        )
        std = settings.std * settings.redraw_std_factor ** (attempt + 1)
        positions[redrawn] = origin[redrawn] + rng.normal(0.0, std, (len(redrawn), 3))
        pending = sane(pending)
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
