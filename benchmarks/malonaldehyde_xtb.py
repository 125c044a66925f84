"""Sample efficiency on malonaldehyde's proton transfer, GFN2-xTB (tblite) as the oracle.

Run ``python -m benchmarks.malonaldehyde_xtb [--quick] [--output PATH]``; writes
``benchmarks/results/malonaldehyde_xtb.json``.

System: malonaldehyde in its enol form ((Z)-3-hydroxyprop-2-enal, C3H4O2, 9 atoms). Its
rare event is the intramolecular proton transfer across the O-H...O hydrogen bond: the
planar Cs minimum and its mirror image are joined through a C2v transition state with
the proton midway between the oxygens. Unlike NH3's inversion (:mod:`benchmarks.ammonia_xtb`),
the event moves one light atom between two heavy ones and changes which bonds exist.

The oracle's structures are built here, no file: the Cs minimum from the coordinates
below, relaxed by BFGS to max force 1e-3 eV/Å; the transition state from a C2v guess,
relaxed by BFGS inside C2v (:class:`C2vSymmetry`, which symmetrises positions and forces;
ASE's ``FixSymmetry`` needs spglib, which the project does not install) to the same max
force, which its unconstrained forces then meet too. Finite differences of the oracle's
forces (``ase.vibrations``) give the minimum no imaginary mode and the transition state
exactly one, the proton's transfer (:func:`saddle_order`). Measured with tblite 0.8.0
(GFN2-xTB): barrier 3.76 kcal/mol (0.163 eV; coupled-cluster estimates are about 4
kcal/mol), imaginary frequency 1228i cm⁻¹, O-H 1.00 Å and H...O 1.72 Å at the minimum,
O-H 1.24 Å at the transition state.

tblite runs OpenMP threads: on a machine whose cores are busy, run with
``OMP_NUM_THREADS=1`` (measured on 2 shared cores: 0.5 ms per energy+forces call of a
6-atom molecule with 1 thread, 44 ms with 2 threads that wait for each other).

The loop of advloop itself (:func:`benchmarks.measured_run.measured_run`: train, explore,
select, label, with ``labels.kind: tblite``) runs once per exploration strategy and seed,
from the same initial labels (generation 0 is shared between a seed's strategies, as in
:mod:`benchmarks.zeolite_xtb`). After each generation's training the committee is measured:

- ``barrier_error_kcal_mol``: |committee-mean energy at the transition state minus at the
  minimum - the oracle's barrier| (goal: within 1 kcal/mol);
- ``force_rmse_300K`` and ``force_rmse_450K``: force RMSE (eV/Å) of the committee mean on
  frames of GFN2-xTB Langevin trajectories from the minimum at the application
  temperature :data:`TEMPERATURE` and at 1.5 times it;
- ``md_stable_fraction_300K`` and ``..._450K`` (and ``md_survival_fs_*``, the mean time to
  the first unphysical step, fs): the fraction of committee-driven Langevin runs from the
  minimum at each temperature that stay physical for the whole run. Physical is what it
  is for ammonia (icommittee_md never stops the run: no clash below 0.5 times the summed
  covalent radii, no fragment at 2 times, finite committee forces; the trust window is
  off) and for the zeolite (:func:`benchmarks.zeolite_xtb.topology_kept`: no bond of the
  minimum stretched past 1.5 times the summed radii, no other pair closer than 1 time),
  except that the transferring proton may be bonded to either oxygen: the transfer is
  the event, not a failure (:func:`distance_ratios`).

Exploration runs at the hotter temperature, 450 K, for every strategy: committee MD
(a fixed trust window widened as for the zeolite, 0.1-1.5 eV/Å: small committees'
deviations start large, and DP-GEN's 0.05-0.5 eV/Å stops their trajectories early) and
the attack's Boltzmann factor on per-atom energies (the attack then reaches geometries
about kT per atom above the training set, where thermal ones are, see the zeolite), and
random displacements of 0.1 Å. At 300 K an Arrhenius estimate (prefactor 10¹³/s, 3.8
kcal/mol) puts one crossing in about 50 ps, far beyond any committee MD trajectory here;
at 450 K one in about 7 ps.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units
from ase.constraints import FixConstraint
from ase.data import covalent_radii
from ase.io import write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from ase.optimize import BFGS
from ase.vibrations import Vibrations

from advloop.adversarial.baselines import CommitteeMDSettings, icommittee_md
from advloop.adversarial.structures import Seeds
from advloop.calculators.factory import TBLiteLabels, make_calculator
from advloop.flows.config import (
    RunConfig,
)
from advloop.potentials.committee import Committee
from benchmarks.ammonia_xtb import KCAL_PER_MOL, STRATEGIES
from benchmarks.committee import record_header, write_record
from benchmarks.measured_run import Measure, frames_force_rmse, measured_run
from benchmarks.stats import bootstrap_ratio_ci, labels_to_target
from benchmarks.xtb_config import FRICTION, seeded_measure, xtb_config
from benchmarks.zeolite_xtb import BOND_FACTOR, share_generation_zero, topology_kept

RESULTS = Path(__file__).parent / "results" / "malonaldehyde_xtb.json"
TEMPERATURE = 300.0  # K, the application temperature
TEMPERATURES = (TEMPERATURE, 1.5 * TEMPERATURE)  # K, test frames and stability runs
BARRIER_TARGET = 1.0  # kcal/mol, barrier error
ERRORS = ("barrier_error_kcal_mol", *(f"force_rmse_{t:g}K" for t in TEMPERATURES))
STABILITY = tuple(f"md_stable_fraction_{t:g}K" for t in TEMPERATURES)

# The molecule in its plane (z = 0) with the C2 axis of the transition state on y:
# C0 central, C1-O3 and C2-O4 the two halves, H5 on C0, H6 on C1, H7 on C2, H8 the proton.
SYMBOLS = "CCCOOHHHH"
PROTON, OXYGENS = 8, (3, 4)
MIRROR = np.array([0, 2, 1, 4, 3, 5, 7, 6, 8])  # each atom's image under x -> -x
TS_GUESS = np.array(  # Å, C2v: C-C 1.39, C-O 1.29, O...O 2.36, O-H 1.19
    [
        [0.0, -1.20, 0.0],
        [-1.21, -0.52, 0.0],
        [1.21, -0.52, 0.0],
        [-1.18, 0.77, 0.0],
        [1.18, 0.77, 0.0],
        [0.0, -2.28, 0.0],
        [-2.16, -1.05, 0.0],
        [2.16, -1.05, 0.0],
        [0.0, 0.95, 0.0],
    ]
)
MINIMUM_GUESS = TS_GUESS.copy()
MINIMUM_GUESS[PROTON] = (-0.35, 1.02, 0.0)  # Å, on O3 (O-H 0.88): the enol
FMAX = 1e-3  # eV/Å, relaxation of both structures
N_TRIVIAL_MODES = 6  # translations and rotations of a non-linear molecule
TRIVIAL_FREQUENCY = 50.0  # cm⁻¹, above which one of those is not trivial


@dataclass(frozen=True)
class Sizes:
    """The benchmark's settings. timestep fs; cutoff Å; *_steps and frame_interval in MD
    steps; n_md runs per temperature."""

    seeds: tuple[int, ...]
    generations: int
    labels_per_generation: int
    n_initial: int
    n_members: int
    n_atom_basis: int
    n_interactions: int
    cutoff: float
    max_epochs: int
    warm_start_epochs: int
    n_explore_seeds: int
    attack_steps: int
    explore_md_steps: int
    timestep: float
    n_md: int
    md_steps: int
    oracle_equilibration: int
    n_frames: int
    frame_interval: int


FULL = Sizes(
    seeds=(0, 1, 2),
    generations=4,
    labels_per_generation=8,
    n_initial=12,
    n_members=4,
    n_atom_basis=32,
    n_interactions=2,
    cutoff=5.0,
    max_epochs=300,
    warm_start_epochs=120,
    n_explore_seeds=16,
    attack_steps=60,
    explore_md_steps=200,
    timestep=0.5,
    n_md=20,
    md_steps=1000,
    oracle_equilibration=200,
    n_frames=40,
    frame_interval=40,
)
QUICK = replace(
    FULL,
    seeds=(0,),
    generations=1,
    labels_per_generation=4,
    n_initial=8,
    n_members=2,
    n_atom_basis=16,
    max_epochs=30,
    warm_start_epochs=15,
    n_explore_seeds=6,
    attack_steps=15,
    explore_md_steps=40,
    md_steps=100,
    oracle_equilibration=40,
    n_frames=8,
    frame_interval=10,
)


def _oracle():
    return make_calculator(TBLiteLabels())[0]


# -- the oracle's structures ---------------------------------------------------------------


def _symmetrise(vectors: np.ndarray) -> np.ndarray:
    """[9, 3] vectors averaged with their mirror image (:data:`MIRROR`, x -> -x) and put in
    the plane z = 0: the orthogonal projection onto the C2v-symmetric ones."""
    out = 0.5 * (vectors + vectors[MIRROR] * np.array([-1.0, 1.0, 1.0]))
    out[:, 2] = 0.0
    return out


class C2vSymmetry(FixConstraint):
    """Keeps malonaldehyde (atoms as in :data:`SYMBOLS`) in C2v, as its proton-transfer
    transition state is: positions and forces are projected onto the symmetric ones
    (:func:`_symmetrise`), so that a minimiser finds the lowest point with that symmetry.
    The molecule must lie in the plane z = 0 with its C2 axis on y."""

    def adjust_positions(self, atoms: Atoms, new: np.ndarray) -> None:
        new[:] = _symmetrise(new)

    def adjust_forces(self, atoms: Atoms, forces: np.ndarray) -> None:
        forces[:] = _symmetrise(forces)

    def get_removed_dof(self, atoms: Atoms) -> int:
        return 2 * len(atoms)  # one free coordinate per atom: y on the axis, x and y per pair

    def todict(self) -> dict:
        return {"name": type(self).__name__, "kwargs": {}}


def _relax(positions: np.ndarray, symmetric: bool) -> Atoms:
    atoms = Atoms(SYMBOLS, positions=positions)
    atoms.calc = _oracle()
    if symmetric:
        atoms.set_constraint(C2vSymmetry())
    BFGS(atoms, logfile=None).run(fmax=FMAX, steps=1000)
    atoms.set_constraint()
    return atoms


def build_minimum() -> Atoms:
    """The oracle's Cs minimum (the enol, proton on O3), relaxed from
    :data:`MINIMUM_GUESS` to max force :data:`FMAX` eV/Å."""
    return _relax(MINIMUM_GUESS, symmetric=False)


def build_transition_state() -> Atoms:
    """The oracle's C2v proton-transfer transition state, relaxed inside C2v from
    :data:`TS_GUESS` to max force :data:`FMAX` eV/Å (its forces are symmetric there,
    so it is a stationary point of the unconstrained surface too)."""
    return _relax(TS_GUESS, symmetric=True)


def frequencies(atoms: Atoms, delta: float = 0.01) -> np.ndarray:
    """Harmonic frequencies [3 n_atoms] cm⁻¹ (complex: an imaginary mode is ``0 + νj``) of
    ``atoms`` with the oracle, from central differences of its forces, step ``delta`` Å
    (``ase.vibrations.Vibrations``, in a temporary folder)."""
    probe = Atoms(atoms.numbers, positions=atoms.positions)
    probe.calc = _oracle()
    with tempfile.TemporaryDirectory(prefix="advloop-vib-") as tmp:
        vib = Vibrations(probe, name=str(Path(tmp) / "vib"), delta=delta)
        vib.run()
        return np.asarray(vib.get_frequencies())


def saddle_order(freqs: np.ndarray) -> int:
    """Imaginary modes among ``freqs`` [3 n_atoms] cm⁻¹ (:func:`frequencies`) once the
    :data:`N_TRIVIAL_MODES` of smallest magnitude, translations and rotations, are set
    aside: 0 at a minimum, 1 at a transition state. Raises ValueError when one of those
    is :data:`TRIVIAL_FREQUENCY` or more (the structure is not stationary enough for
    the count to mean anything)."""
    freqs = np.asarray(freqs, dtype=complex)
    order = np.argsort(np.abs(freqs))
    trivial, modes = freqs[order[:N_TRIVIAL_MODES]], freqs[order[N_TRIVIAL_MODES:]]
    if np.abs(trivial).max() >= TRIVIAL_FREQUENCY:
        raise ValueError(
            f"the {N_TRIVIAL_MODES} smallest frequencies reach {np.abs(trivial).max():.0f} "
            f"cm⁻¹ (limit {TRIVIAL_FREQUENCY:g}): not a stationary point"
        )
    return int(np.sum(np.abs(modes.imag) > np.abs(modes.real)))


def distance_ratios(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Distances over the summed covalent radii (``ase.data.covalent_radii``) [n_structures,
    n_atoms, n_atoms] of molecules ``positions`` [n_structures, n_atoms, 3] Å (atoms as in
    :data:`SYMBOLS`), inf on the diagonal, except that the proton's ratio to each oxygen is
    its ratio to the nearer one: for the topology checks it is bonded to both or neither."""
    radii = covalent_radii[np.asarray(numbers)]
    x = np.asarray(positions, dtype=np.float64)
    ratio = np.linalg.norm(x[:, :, None] - x[:, None], axis=-1) / (radii[:, None] + radii)
    ratio[:, np.arange(len(radii)), np.arange(len(radii))] = np.inf
    nearer = ratio[:, PROTON, list(OXYGENS)].min(axis=1)  # [n_structures]
    for o in OXYGENS:
        ratio[:, PROTON, o] = ratio[:, o, PROTON] = nearer
    return ratio


def oracle_frames(
    minimum: Atoms, temperature: float, bonds: np.ndarray, sizes: Sizes, rng: np.random.Generator
) -> dict:
    """Frames (positions Å, forces eV/Å) of a GFN2-xTB Langevin trajectory from ``minimum``
    at ``temperature`` K: momenta Maxwell-Boltzmann at twice it (equipartition halves that
    within tens of fs, as the minimum starts with no potential energy),
    ``oracle_equilibration`` steps, then one frame every ``frame_interval`` steps. Every step's largest bond and smallest
    contact ratio (:func:`distance_ratios`) are kept, the oracle's own dynamics must stay
    well inside the limits that the committee's stability runs apply, and the share of
    frames with the proton nearer the other oxygen (transferred)."""
    hot = Atoms(minimum.numbers, positions=minimum.positions)
    hot.calc = _oracle()
    thermalize_momenta(hot, temperature_K=2.0 * temperature, rng=rng)
    dynamics = Langevin(
        hot,
        sizes.timestep * units.fs,
        temperature_K=temperature,
        friction=FRICTION / units.fs,
        fixcm=False,
        rng=rng,
    )
    extremes = []

    def check() -> None:
        ratio = distance_ratios(hot.numbers, hot.positions[None])[0]
        extremes.append((ratio[bonds].max(), ratio[~bonds].min()))

    dynamics.attach(check, interval=1)
    t0 = time.perf_counter()
    dynamics.run(sizes.oracle_equilibration)
    frames, kinetic_k, transferred = [], [], []
    for _ in range(sizes.n_frames):
        dynamics.run(sizes.frame_interval)
        frames.append((hot.positions.copy(), hot.get_forces().copy()))
        kinetic_k.append(hot.get_temperature())
        d = np.linalg.norm(hot.positions[PROTON] - hot.positions[list(OXYGENS)], axis=1)
        transferred.append(d[1] < d[0])
    n_steps = sizes.oracle_equilibration + sizes.n_frames * sizes.frame_interval
    stretch, contact = np.array(extremes).T
    return {
        "frames": frames,
        "max_bond_ratio": float(stretch.max()),
        "min_contact_ratio": float(contact.min()),
        "mean_kinetic_temperature_K": float(np.mean(kinetic_k)),
        "transferred_fraction": float(np.mean(transferred)),
        "seconds_per_step": (time.perf_counter() - t0) / max(n_steps, 1),
    }


def oracle_reference(sizes: Sizes, rng: np.random.Generator) -> dict:
    """The oracle's minimum and transition state (positions Å), barrier (eV), their
    frequencies (cm⁻¹), the bonds of the minimum and, per temperature of
    :data:`TEMPERATURES`, the frames of :func:`oracle_frames`; timings in s."""
    t0 = time.perf_counter()
    minimum, ts = build_minimum(), build_transition_state()
    t1 = time.perf_counter()
    freqs = {"minimum": frequencies(minimum), "ts": frequencies(ts)}
    t2 = time.perf_counter()
    bonds = distance_ratios(minimum.numbers, minimum.positions[None])[0] < BOND_FACTOR
    trajectories = {t: oracle_frames(minimum, t, bonds, sizes, rng) for t in TEMPERATURES}
    return {
        "numbers": minimum.numbers.copy(),
        "minimum": minimum.positions.copy(),
        "ts": ts.positions.copy(),
        "barrier_eV": float(ts.get_potential_energy() - minimum.get_potential_energy()),
        "fmax_eV_A": {
            "minimum": float(np.abs(minimum.get_forces()).max()),
            "ts": float(np.abs(ts.get_forces()).max()),
        },
        "frequencies_cm1": freqs,
        "bonds": bonds,
        "trajectories": trajectories,
        "seconds_structures": t1 - t0,
        "seconds_frequencies": t2 - t1,
    }


def write_structure(ref: dict, directory: Path) -> Path:
    """Write the oracle's minimum as ``malonaldehyde.xyz`` in ``directory``: the
    structure the runs start from."""
    path = directory / "malonaldehyde.xyz"
    directory.mkdir(parents=True, exist_ok=True)
    write(path, Atoms(ref["numbers"], positions=ref["minimum"]), format="extxyz")
    return path


# -- the committee's metrics ---------------------------------------------------------------


def md_stability(
    committee: Committee, ref: dict, temperature: float, sizes: Sizes, rng: np.random.Generator
) -> tuple[float, float]:
    """(fraction of stable runs, mean survival time in fs) of ``sizes.n_md`` Langevin runs
    of ``sizes.md_steps`` steps at ``temperature`` K on the committee mean, all from the
    minimum with their own Maxwell-Boltzmann velocities. A run fails at the first step at
    which icommittee_md stops it (a clash, a fragment, non-finite forces; its trust window
    is off) or that breaks the minimum's bond topology (:func:`distance_ratios`,
    :func:`benchmarks.zeolite_xtb.topology_kept`)."""
    z, n_atoms, n = ref["numbers"], len(ref["numbers"]), sizes.n_md
    seeds = Seeds(
        np.tile(z, n),
        np.tile(ref["minimum"], (n, 1)),
        np.full(n, n_atoms),
        np.zeros((n, 3, 3)),
        np.zeros((n, 3), dtype=bool),
        np.arange(n),
    )
    settings = CommitteeMDSettings(
        temperature=temperature,
        timestep=sizes.timestep,
        n_steps=sizes.md_steps,
        friction=FRICTION,
        trust_mode="fixed",
        trust_lower=0.0,
        trust_upper=1e9,
    )
    alive = np.ones(n, dtype=bool)
    survived = np.full(n, float(sizes.md_steps))  # steps
    for state in icommittee_md(committee, seeds, settings, rng):
        ratios = distance_ratios(z, state.positions.reshape(n, n_atoms, 3))
        failed = alive & (~state.active | ~topology_kept(ratios, ref["bonds"]))
        survived[failed] = state.step
        alive &= ~failed
        if not alive.any():
            break
    return float(alive.mean()), float(survived.mean() * sizes.timestep)


def committee_metrics(
    committee: Committee, ref: dict, sizes: Sizes, rng: np.random.Generator
) -> dict:
    """Barrier (eV) and its error (kcal/mol), force RMSE (eV/Å) on the oracle frames and
    MD stability at each temperature; see the module doc."""
    z = ref["numbers"]
    n = len(z)
    pair = committee.predict_arrays(
        np.tile(z, 2), np.concatenate([ref["minimum"], ref["ts"]]), np.array([n, n])
    )
    barrier = float(pair.energy_mean[1] - pair.energy_mean[0])
    out = {
        "barrier_eV": barrier,
        "barrier_error_kcal_mol": abs(barrier - ref["barrier_eV"]) / KCAL_PER_MOL,
    }
    for t in TEMPERATURES:
        out[f"force_rmse_{t:g}K"] = frames_force_rmse(
            committee, z, ref["trajectories"][t]["frames"]
        )
    for t in TEMPERATURES if sizes.n_md else ():
        stable, survival = md_stability(committee, ref, t, sizes, rng)
        out[f"md_stable_fraction_{t:g}K"] = stable
        out[f"md_survival_fs_{t:g}K"] = survival
    return out


def measure(ref: dict, sizes: Sizes, seed: int) -> Measure:
    """The metrics of :func:`committee_metrics` for :func:`benchmarks.measured_run.measured_run`,
    with MD velocities seeded by the committee seed and generation."""
    return seeded_measure(committee_metrics, ref, sizes, seed)


# -- the loop ------------------------------------------------------------------------------


def make_config(
    strategy: str,
    seed: int,
    root: Path,
    sizes: Sizes,
    structure: Path,
    name: str | None = None,
    overrides: dict[str, dict] | None = None,
) -> RunConfig:
    """The run configuration of one strategy and seed from ``structure`` (the minimum,
    :func:`write_structure`), named ``name`` (default: the strategy), with the
    ``overrides`` of an ablation (config section -> fields); raises ConfigError on bad
    inputs."""
    return xtb_config(
        strategy,
        seed,
        root,
        sizes,
        structure,
        f"malonaldehyde-{name or strategy}-{seed}",
        TEMPERATURES[-1],
        overrides,
    )


def _stats(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0}


METRICS = ("n_labels", *ERRORS, *STABILITY)


def summarise(runs: dict[str, dict[str, list[dict]]], budget: int) -> dict:
    """Per strategy: the final generation's metrics and the learning curve, each as mean
    and standard deviation (ddof=1) over seeds; the explored labels each seed needed to
    bring the barrier within :data:`BARRIER_TARGET` kcal/mol (None: never), and, against
    committee MD where it ran, their ratio with a 95 % bootstrap interval over seeds
    (paired: a seed's strategies share generation 0; runs that never got there are
    censored at ``budget``, see :func:`benchmarks.stats.bootstrap_ratio_ci`)."""
    reached = {
        strategy: [
            labels_to_target(
                [r["n_labels"] - rows[0]["n_labels"] for r in rows],
                [r["barrier_error_kcal_mol"] for r in rows],
                BARRIER_TARGET,
                higher_is_better=False,
            )
            for rows in by_seed.values()
        ]
        for strategy, by_seed in runs.items()
    }
    out = {}
    for strategy, by_seed in runs.items():
        n_rows = min(len(rows) for rows in by_seed.values())
        keys = [k for k in METRICS if k in next(iter(by_seed.values()))[0]]
        curve = [
            {
                "generation": g,
                **{k: _stats([rows[g][k] for rows in by_seed.values()]) for k in keys},
            }
            for g in range(n_rows)
        ]
        entry = {"seeds": [int(s) for s in by_seed], "final": curve[-1], "curve": curve}
        entry["explored_labels_to_barrier_target"] = reached[strategy]
        if "md" in reached and strategy != "md" and set(runs["md"]) == set(by_seed):
            ratio = bootstrap_ratio_ci(
                reached[strategy],
                reached["md"],
                budget,
                rng=np.random.default_rng(0),
                paired=True,
            )
            entry["labels_to_barrier_target_ratio_to_md"] = asdict(ratio)
        out[strategy] = entry
    return out


def run(sizes: Sizes, strategies: tuple[str, ...] = STRATEGIES, root: Path | None = None) -> dict:
    """Every strategy and seed of ``sizes``; the record's oracle, settings, runs and
    summary. Generation 0 (initial labels, committee, metrics) is computed once per seed,
    in its first strategy's run, and shared with the others
    (:func:`benchmarks.zeolite_xtb.share_generation_zero`)."""
    torch.set_num_threads(1)
    ref = oracle_reference(sizes, np.random.default_rng(0))
    runs: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="advloop-malonaldehyde-") as tmp:
        base = Path(root or tmp)
        structure = write_structure(ref, base)
        for seed in sizes.seeds:
            configs = {s: make_config(s, seed, base, sizes, structure) for s in strategies}
            metrics = measure(ref, sizes, seed)
            first, *others = configs.values()
            zero = first.model_copy(
                update={"budget": first.budget.model_copy(update={"max_generations": 0})}
            )
            [first_row] = measured_run(zero, metrics)
            for config in others:
                share_generation_zero(first, config)
            for strategy, config in configs.items():
                rows = runs.setdefault(strategy, {})[str(seed)] = measured_run(
                    config, metrics, first_row
                )
                print(
                    f"{strategy:12s} seed {seed}: "
                    + "  ".join(
                        f"{r['n_labels']}:{r['barrier_error_kcal_mol']:.2f}/"
                        f"{r[ERRORS[1]]:.2f}" + (f"/{r[STABILITY[0]]:.2f}" if sizes.n_md else "")
                        for r in rows
                    )
                    + "  (labels:barrier error kcal/mol/RMSE eV/Å/stable)",
                    flush=True,
                )
    trajectories = ref["trajectories"]
    return {
        "oracle": {
            "method": "GFN2-xTB (tblite)",
            "formula": "C3H4O2",
            "symbols": SYMBOLS,
            "minimum_A": ref["minimum"].tolist(),
            "ts_A": ref["ts"].tolist(),
            "max_force_eV_A": ref["fmax_eV_A"],
            "barrier_eV": ref["barrier_eV"],
            "barrier_kcal_mol": ref["barrier_eV"] / KCAL_PER_MOL,
            "saddle_order": {k: saddle_order(f) for k, f in ref["frequencies_cm1"].items()},
            "ts_imaginary_frequency_cm1": float(np.abs(ref["frequencies_cm1"]["ts"].imag).max()),
            "minimum_lowest_frequency_cm1": float(
                np.sort(np.abs(ref["frequencies_cm1"]["minimum"]))[N_TRIVIAL_MODES]
            ),
            "seconds_structures": ref["seconds_structures"],
            "seconds_frequencies": ref["seconds_frequencies"],
            "trajectories": {
                f"{t:g}K": {k: v for k, v in traj.items() if k != "frames"}
                | {"frames": len(traj["frames"])}
                for t, traj in trajectories.items()
            },
        },
        "settings": {
            **asdict(sizes),
            "seeds": list(sizes.seeds),
            "temperatures_K": list(TEMPERATURES),
            "exploration_temperature_K": TEMPERATURES[-1],
            "barrier_target_kcal_mol": BARRIER_TARGET,
            "bond_factor": BOND_FACTOR,
            "friction_per_fs": FRICTION,
            "generation_0_shared_across_strategies": True,
        },
        "runs": runs,
        "summary": summarise(runs, max(1, sizes.generations * sizes.labels_per_generation)),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one seed, one generation, tiny committee (CI; numbers are not results)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    sizes = QUICK if args.quick else FULL
    results = run(sizes)
    header = record_header(
        "benchmarks.malonaldehyde_xtb",
        argv,
        ("schnetpack", "tblite", "ase"),
        args.quick,
        time.perf_counter() - t0,
    )
    return write_record(args.output, {**header, **results})


if __name__ == "__main__":
    main()
