"""The steps of one active-learning generation, as plain functions of files.

Each step reads what it needs from the run folder and writes its product there, so the
Prefect tasks in :mod:`flows.active_learning` are thin wrappers that pass small records.
A step whose product already exists returns it without recomputing: re-running an
interrupted run continues where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.io import read, write

from adversarial.attack import attack
from adversarial.baselines import committee_md, random_displacement
from adversarial.seeding import choose_seeds
from adversarial.selection import select_candidates
from adversarial.structures import Candidates, Seeds
from calculators.factory import make_calculator
from calculators.label_store import LabelStore
from calculators.labeller import label_structures
from flows.config import RunConfig, initial_structures
from potentials.checkpoint import checkpoint_metrics, load_member, save_member
from potentials.committee import Committee
from potentials.dataset import Dataset, Provenance, split_indices, structure_hash
from potentials.model import EnergyModel
from potentials.run_layout import RunLayout
from potentials.training import train_member
from potentials.uncertainty import force_calibration

# Seeds for the random streams of a run, derived from the config's seeds so that a run is
# reproducible and its streams independent.
_SPLIT_STREAM, _MEMBER_STREAM, _ATTACK_STREAM, _INITIAL_STREAM, _BOOTSTRAP_STREAM = 1, 2, 3, 4, 5


class LabellingError(RuntimeError):
    """Too many DFT labels failed for the run to go on."""


def _rng(config: RunConfig, stream: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([config.committee.seed, stream, *keys])


@dataclass(frozen=True)
class LabelReport:
    requested: int
    added: int
    failed: int
    skipped_known: int
    seconds: float
    failures: list[str]
    indices: list[int] = field(default_factory=list)  # dataset indices of the new records
    cached: int = 0  # labels read back from the label store instead of computed
    calibration: dict[str, float] = field(default_factory=dict)


def _label_and_append(config: RunConfig, dataset: Dataset, structures: list[Atoms],
                      generation: int, strategy: str, parents: list[int]) -> LabelReport:
    """Label ``structures`` with the configured DFT and append the successes."""
    t0 = time.perf_counter()
    known = set(dataset.hashes())
    todo = [k for k, a in enumerate(structures) if structure_hash(a) not in known]
    calc, theory, level_of_theory = make_calculator(config.labels, config.dft, config.periodic_dft)
    store = LabelStore(RunLayout(config.run_dir()).labels)
    outcomes = label_structures([structures[k] for k in todo], calc, store, theory)
    ok = [(todo[o.index], o) for o in outcomes if o.ok]
    indices = dataset.append(
        [structures[k] for k, _ in ok], [o.energy for _, o in ok], [o.forces for _, o in ok],
        [Provenance(generation, strategy, level_of_theory, parents[k]) for k, _ in ok],
    )
    failures = [f"{strategy} structure {todo[o.index]}: {o.error}" for o in outcomes if not o.ok]
    return LabelReport(len(structures), len(ok), len(failures), len(structures) - len(todo),
                       time.perf_counter() - t0, failures, [int(i) for i in indices],
                       cached=sum(o.cached for o in outcomes))


def initial_dataset(config: RunConfig) -> LabelReport:
    """Create the run's dataset from displaced starting structures labelled with DFT.

    If the dataset already holds the initial structures, nothing is recomputed.
    """
    layout = RunLayout(config.run_dir())
    dataset = Dataset.create(layout.dataset, exist_ok=True)
    structures = initial_structures(config, _rng(config, _INITIAL_STREAM, config.initial_data.seed))
    report = _label_and_append(config, dataset, structures, 0, "initial", [-1] * len(structures))
    if len(dataset) < 2:
        raise LabellingError(
            f"only {len(dataset)} initial structure(s) could be labelled (need at least 2): "
            + "; ".join(report.failures[:3]))
    return report


def train_step(config: RunConfig, generation: int, member: int) -> dict[str, float]:
    """Train member ``member`` of generation ``generation``'s committee; returns metrics.

    Members differ by seed (and, with ``committee.bootstrap``, by a resample of the
    training split); all share the generation's validation split. From generation
    1 on, a member warm-starts from its previous checkpoint when ``committee.warm_start``.
    """
    layout = RunLayout(config.run_dir())
    path = layout.member_checkpoint(generation, member)
    if path.exists():
        return checkpoint_metrics(path)
    torch.set_num_threads(config.compute.torch_threads)
    data = Dataset(layout.dataset).arrays()
    train_idx, val_idx = split_indices(len(data), config.training.val_fraction,
                                       _rng(config, _SPLIT_STREAM, generation))
    if config.committee.bootstrap:
        train_idx = np.sort(_rng(config, _BOOTSTRAP_STREAM, member, generation).choice(
            train_idx, size=len(train_idx), replace=True))
    previous = layout.member_checkpoint(generation - 1, member)
    warm = config.committee.warm_start and generation > 0 and previous.exists()
    with torch.random.fork_rng():
        torch.manual_seed(int(_rng(config, _MEMBER_STREAM, member).integers(2**31)))
        model = load_member(previous, expected=config.model) if warm else EnergyModel(config.model)
    t0 = time.perf_counter()
    result = train_member(model, data.subset(train_idx), data.subset(val_idx) if len(val_idx) else None,
                          config.training, _rng(config, _MEMBER_STREAM, member, generation),
                          warm_start=warm)
    metrics = {**result.metrics(), "seconds": time.perf_counter() - t0,
               "n_train": float(len(train_idx)), "n_train_unique": float(len(set(train_idx))),
               "n_val": float(len(val_idx))}
    save_member(model, path, metrics)
    return metrics


def _committee(config: RunConfig, generation: int) -> Committee:
    layout = RunLayout(config.run_dir())
    return Committee.from_checkpoints(layout.committee_checkpoints(generation))


@dataclass(frozen=True)
class ExploreReport:
    n_seeds: int
    n_stopped: int
    sigma_f_mean: float  # eV/Å, mean over attacked geometries of their mean per-atom force std
    sigma_f_max: float  # eV/Å, max over attacked geometries of their max per-atom force std
    seconds: float
    n_candidates: int = 0


def _explore(config: RunConfig, committee: Committee, seeds: Seeds, data,
             rng: np.random.Generator, trace: Path) -> Candidates:
    """Run the configured exploration strategy from ``seeds``; an attack also writes its
    trajectory of objective and σ per step and seed to ``trace``."""
    strategy = config.exploration.strategy
    if strategy == "adversarial":
        candidates, result = attack(committee, seeds, data.energy, data.n_atoms, config.attack,
                                    torch.Generator().manual_seed(int(rng.integers(2**31))))
        trace.parent.mkdir(parents=True, exist_ok=True)
        np.savez(trace, objective=result.objective, sigma=result.sigma, seeds=seeds.index)
        return candidates
    if strategy == "random":
        return random_displacement(committee, seeds, config.random, rng)
    return committee_md(committee, seeds, config.md, rng)


def explore_step(config: RunConfig, generation: int) -> ExploreReport:
    """Explore from seeds drawn from the dataset with generation ``generation``'s committee
    and write the candidate geometries, with their uncertainties, to the run folder."""
    layout = RunLayout(config.run_dir())
    out = layout.candidates(generation)
    if out.exists():
        frames = read(str(out), index=":")
        return ExploreReport(**json.loads(frames[0].info["explore_report"]))
    torch.set_num_threads(config.compute.torch_threads)
    t0 = time.perf_counter()
    committee = _committee(config, generation)
    dataset = Dataset(layout.dataset)
    data = dataset.arrays()
    previous = [k for k, p in enumerate(dataset.provenance())
                if p.generation == generation - 1 and p.strategy != "initial"]
    rng = _rng(config, _ATTACK_STREAM, generation)
    chosen = choose_seeds(data.energy / data.n_atoms, config.exploration.n_seeds,
                          config.exploration.seeds, rng, np.array(previous, dtype=np.int64))
    seeds = Seeds.from_arrays(data, chosen)
    candidates = _explore(config, committee, seeds, data, rng,
                          layout.exploration_trace(generation))
    report = ExploreReport(
        n_seeds=len(seeds), n_stopped=len(candidates.stopped),
        sigma_f_mean=float(candidates.sigma_f_mean.mean()) if len(candidates) else 0.0,
        sigma_f_max=float(candidates.sigma_f_max.max()) if len(candidates) else 0.0,
        seconds=time.perf_counter() - t0,
        n_candidates=len(candidates),
    )
    frames = []
    starts = candidates.starts
    for k in range(len(candidates)):
        rows = slice(starts[k], starts[k + 1])
        atoms = Atoms(numbers=candidates.numbers[rows], positions=candidates.positions[rows],
                      cell=candidates.cells[k], pbc=candidates.pbc[k])
        parent = int(candidates.parent[k])
        atoms.info.update(parent=int(seeds.index[parent]),
                          forces_std_mean=float(candidates.sigma_f_mean[k]),
                          forces_std_max=float(candidates.sigma_f_max[k]),
                          score=float(candidates.score[k]),
                          stopped=candidates.stopped.get(parent, ""))
        frames.append(atoms)
    header = frames[0] if frames else Atoms()
    header.info["explore_report"] = json.dumps(asdict(report))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    write(str(tmp), frames or [header], format="extxyz")
    tmp.replace(out)
    return report


def _read_candidates(layout: RunLayout, generation: int) -> list[Atoms]:
    """The candidate geometries explore_step wrote (none: a file with one empty frame)."""
    frames = read(str(layout.candidates(generation)), index=":")
    return [] if len(frames) == 1 and len(frames[0]) == 0 else frames


@dataclass(frozen=True)
class SelectReport:
    selected: list[int]  # indices into the generation's candidates
    threshold: float  # eV/Å
    rejected: dict[int, str]

    def rejected_counts(self) -> dict[str, int]:
        """How many candidates each kind of reason rejected."""
        kinds = {"below threshold": "below_threshold", "near-duplicate of training": "known",
                 "near-duplicate of candidate": "duplicate", "over cap": "over_cap",
                 "not finite": "not_finite"}
        counts: dict[str, int] = {}
        for reason in self.rejected.values():
            kind = next((v for k, v in kinds.items() if reason.startswith(k)), "unphysical")
            counts[kind] = counts.get(kind, 0) + 1
        return counts


def select_step(config: RunConfig, generation: int, max_selected: int) -> SelectReport:
    """Choose which attacked geometries of ``generation`` to label (at most ``max_selected``)."""
    layout = RunLayout(config.run_dir())
    frames = _read_candidates(layout, generation)
    if not frames:
        return SelectReport([], float("nan"), {})
    committee = _committee(config, generation)
    data = Dataset(layout.dataset).arrays()
    train_pred = committee.predict_arrays(data.numbers, data.positions, data.n_atoms,
                                          data.cell, data.pbc)
    settings = config.selection
    if max_selected < settings.max_selected:
        settings = type(settings)(**{**asdict(settings), "max_selected": max(1, max_selected)})
    n_atoms = len(frames[0])
    periodic = bool(frames[0].pbc.any())
    result = select_candidates(
        frames[0].numbers,
        np.stack([a.positions for a in frames]),
        np.array([a.info["forces_std_mean"] for a in frames]),
        data.positions.reshape(-1, n_atoms, 3),
        train_pred.forces_std_mean,
        settings,
        cells=np.stack([a.cell.array for a in frames]) if periodic else None,
        train_cells=data.cell if periodic else None,
        pbc=frames[0].pbc if periodic else None,
    )
    return SelectReport([int(i) for i in result.selected], float(result.threshold),
                        {int(k): v for k, v in result.rejected.items()})


def label_step(config: RunConfig, generation: int, selected: list[int]) -> LabelReport:
    """Label the selected candidates of ``generation`` and append them to the dataset."""
    layout = RunLayout(config.run_dir())
    frames = _read_candidates(layout, generation)
    chosen = [frames[i] for i in selected]
    for atoms in chosen:
        atoms.calc = None
    dataset = Dataset(layout.dataset)
    report = _label_and_append(config, dataset, chosen, generation, config.exploration.strategy,
                               [int(a.info["parent"]) for a in chosen])
    if not report.indices:
        return report
    # The committee predicted these structures before their labels existed: measure how
    # well its spread ranks and sizes its actual force errors.
    new = dataset.arrays().subset(report.indices)
    pred = _committee(config, generation).predict_arrays(new.numbers, new.positions, new.n_atoms)
    cal = force_calibration(pred.forces_std, pred.forces_mean, new.forces,
                            np.repeat(np.arange(len(new)), new.n_atoms))
    return replace(report, calibration=asdict(cal))


def append_generation_record(config: RunConfig, record: dict) -> None:
    layout = RunLayout(config.run_dir())
    with open(layout.generations, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_generation_records(run_dir: Path) -> list[dict]:
    path = RunLayout(run_dir).generations
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
