"""The steps of one active-learning generation, as plain functions of files.

Each step reads what it needs from the run folder and writes its product there, so the
Prefect tasks in :mod:`advloop.flows.active_learning` are thin wrappers that pass small records.
A step whose product already exists returns it without recomputing: re-running an
interrupted run continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from ase import Atoms
from ase.io import read, write

from advloop.adversarial.attack import attack
from advloop.adversarial.baselines import committee_md, random_displacement
from advloop.adversarial.seeding import choose_seeds
from advloop.adversarial.selection import select_candidates
from advloop.adversarial.structures import Candidates, Seeds
from advloop.calculators.factory import level_of_theory, make_calculator, theory_settings
from advloop.calculators.label_store import LabelStore, label_key
from advloop.calculators.labeller import label_structures
from advloop.flows.config import RunConfig
from advloop.flows.inputs import initial_structures
from advloop.flows.run_folder import append_record, read_records, write_atomic
from advloop.potentials.checkpoint import checkpoint_metrics, load_member, save_member
from advloop.potentials.committee import Committee
from advloop.potentials.dataset import (Dataset, DatasetError, Provenance, split_indices,
                                        structure_hash)
from advloop.potentials.model import EnergyModel
from advloop.potentials.run_layout import INITIAL, RunLayout
from advloop.potentials.training import resolve_device, train_member
from advloop.potentials.uncertainty import force_calibration

# Seeds for the random streams of a run, derived from the config's seeds so that a run is
# reproducible and its streams independent.
_SPLIT_STREAM, _MEMBER_STREAM, _ATTACK_STREAM, _INITIAL_STREAM, _BOOTSTRAP_STREAM = 1, 2, 3, 4, 5


logger = logging.getLogger(__name__)


class LabellingError(RuntimeError):
    """Too many DFT labels failed for the run to go on."""


# A new model's initial weights come from torch's process-wide generator, which
# train_step seeds per member; members trained in parallel threads take turns at it, or
# their weights would depend on thread timing.
_TORCH_SEEDING = threading.Lock()


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


def _set_aside_if_damaged(path: Path) -> None:
    """Rename a dataset file that does not read (truncated, overwritten, not HDF5) to
    ``dataset.h5.damaged-<time>``, so that the run rebuilds it from the label store
    (every label is kept there) rather than failing or starting over; nothing is deleted."""
    if not path.exists():
        return
    try:
        dataset = Dataset(path)
        dataset.hashes(), dataset.provenance(), dataset.arrays()
        return
    except (DatasetError, OSError, KeyError, ValueError) as err:
        reason = f"{type(err).__name__}: {err}"
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
    path.replace(aside)
    logger.warning("%s does not read (%s); kept as %s, and the dataset is rebuilt from the "
                   "run's label store", path, reason, aside.name)


def prepare_initial(config: RunConfig) -> list[int]:
    """Write the initial structures (the starting structures displaced at random) to the
    run folder, create the dataset, and return the indices of the initial structures not
    yet in it: the label tasks of the initial batch (:data:`INITIAL`)."""
    layout = RunLayout(config.run_dir())
    _set_aside_if_damaged(layout.dataset)
    Dataset.create(layout.dataset, exist_ok=True)
    path = layout.initial_structures
    if not path.exists():
        structures = initial_structures(config, _rng(config, _INITIAL_STREAM, config.initial_data.seed))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp.npz")
        np.savez(tmp, numbers=np.stack([a.numbers for a in structures]),
                 positions=np.stack([a.positions for a in structures]),
                 cells=np.stack([a.cell.array for a in structures]),
                 pbc=np.stack([a.pbc for a in structures]))
        tmp.replace(path)
    known = set(Dataset(layout.dataset).hashes())
    return [k for k, a in enumerate(_read_candidates(layout, INITIAL)) if structure_hash(a) not in known]


def _check_initial(dataset: Dataset, report: LabelReport) -> LabelReport:
    if len(dataset) < 2:
        raise LabellingError(
            f"only {len(dataset)} initial structure(s) could be labelled (need at least 2): "
            + "; ".join(report.failures[:3]))
    return report


def initial_dataset(config: RunConfig) -> LabelReport:
    """Create the run's dataset from the initial structures, labelled one after another:
    the flow's work (:func:`prepare_initial`, a :func:`label_one` task per structure,
    :func:`append_initial`) in this process. Nothing already labelled is recomputed."""
    results = [label_one(config, INITIAL, index) for index in prepare_initial(config)]
    return replace(append_initial(config), cached=sum(r.cached for r in results))


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
    device = resolve_device(config.compute.device)
    data = Dataset(layout.dataset).arrays()
    train_idx, val_idx = split_indices(len(data), config.training.val_fraction,
                                       _rng(config, _SPLIT_STREAM, generation))
    if config.committee.bootstrap:
        train_idx = np.sort(_rng(config, _BOOTSTRAP_STREAM, member, generation).choice(
            train_idx, size=len(train_idx), replace=True))
    previous = layout.member_checkpoint(generation - 1, member)
    warm = config.committee.warm_start and generation > 0 and previous.exists()
    with _TORCH_SEEDING, torch.random.fork_rng():
        torch.manual_seed(int(_rng(config, _MEMBER_STREAM, member).integers(2**31)))
        model = load_member(previous, expected=config.model) if warm else EnergyModel(config.model)
    t0 = time.perf_counter()
    result = train_member(model, data.subset(train_idx), data.subset(val_idx) if len(val_idx) else None,
                          config.training, _rng(config, _MEMBER_STREAM, member, generation),
                          warm_start=warm, device=device,
                          name=f"generation {generation} member {member}")
    metrics = {**result.metrics(), "seconds": time.perf_counter() - t0,
               "cuda": float(device.type == "cuda"), "n_train": float(len(train_idx)), "n_train_unique": float(len(set(train_idx))),
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
    strategy = config.exploration.kind
    if strategy == "adversarial":
        candidates, result = attack(committee, seeds, data.energy, data.n_atoms, config.exploration,
                                    torch.Generator().manual_seed(int(rng.integers(2**31))))
        trace.parent.mkdir(parents=True, exist_ok=True)
        np.savez(trace, objective=result.objective, sigma=result.sigma, seeds=seeds.index)
        return candidates
    if strategy == "random":
        return random_displacement(committee, seeds, config.exploration, rng)
    return committee_md(committee, seeds, config.exploration, rng)


def explore_step(config: RunConfig, generation: int) -> ExploreReport:
    """Explore from seeds drawn from the dataset with generation ``generation``'s committee
    and write the candidate geometries, with their uncertainties, to the run folder."""
    layout = RunLayout(config.run_dir())
    out = layout.candidates(generation)
    if out.exists():
        frames = read(str(out), index=":")
        if "explore_report" in frames[0].info:
            return ExploreReport(**json.loads(frames[0].info["explore_report"]))
        # Written by a version whose empty ``stopped=`` hid the report from ASE's parser:
        # explore again (deterministic), replacing the file.
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
                          score=float(candidates.score[k]))
        if parent in candidates.stopped:  # an empty value would hide later keys from ASE
            atoms.info["stopped"] = candidates.stopped[parent]
        frames.append(atoms)
    header = frames[0] if frames else Atoms()
    header.info["explore_report"] = json.dumps(asdict(report))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    write(str(tmp), frames or [header], format="extxyz")
    tmp.replace(out)
    return report


def _read_candidates(layout: RunLayout, generation: int) -> list[Atoms]:
    """The candidate geometries explore_step wrote (none: a file with one empty frame), or
    the initial structures (``generation`` :data:`INITIAL`, from :func:`prepare_initial`)."""
    if generation == INITIAL:
        with np.load(layout.initial_structures) as f:
            return [Atoms(numbers=z, positions=x, cell=c, pbc=p)
                    for z, x, c, p in zip(f["numbers"], f["positions"], f["cells"], f["pbc"])]
    frames = read(str(layout.candidates(generation)), index=":")
    return [] if len(frames) == 1 and len(frames[0]) == 0 else frames


@dataclass(frozen=True)
class SelectReport:
    selected: list[int]  # indices into the generation's candidates
    threshold: float  # eV/Å
    rejected: dict[int, str]
    n_above: int = 0  # candidates with a finite σ_F at or above the threshold
    sigma_f_mean: float = float("nan")  # eV/Å, mean over the selected of their mean σ_F
    sigma_f_max: float = float("nan")  # eV/Å, max over the selected of their max σ_F

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


def _write_selection(layout: RunLayout, generation: int, report: SelectReport, strategy: str,
                     hashes: list[str]) -> None:
    write_atomic(layout.selection(generation), json.dumps(
        {"generation": generation, "strategy": strategy, "hashes": hashes,
         "report": {**asdict(report), "rejected": {str(k): v for k, v in report.rejected.items()}}},
        indent=1) + "\n")


def _read_selection(layout: RunLayout, generation: int) -> tuple[SelectReport, str] | None:
    """The selection kept for ``generation`` and the strategy that explored it (None: none
    kept, or a file that does not read whole, which is made again)."""
    path = layout.selection(generation)
    if not path.exists():
        return None
    try:
        kept = json.loads(path.read_text())
        report = kept["report"]
        report["rejected"] = {int(k): v for k, v in report["rejected"].items()}
        return SelectReport(**report), str(kept["strategy"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def select_step(config: RunConfig, generation: int, max_selected: int) -> SelectReport:
    """Choose which attacked geometries of ``generation`` to label (at most ``max_selected``).

    The choice is kept in the run folder before anything is labelled, and a re-run reads
    it back: selecting again against a dataset that already holds some of its labels would
    choose other candidates (those labels now count as known).
    """
    layout = RunLayout(config.run_dir())
    kept = _read_selection(layout, generation)
    if kept is not None:
        return kept[0]
    frames = _read_candidates(layout, generation)
    if not frames:
        return SelectReport([], float("nan"), {})
    committee = _committee(config, generation)
    dataset = Dataset(layout.dataset)
    data = dataset.arrays()
    train_pred = committee.predict_arrays(data.numbers, data.positions, data.n_atoms,
                                          data.cell, data.pbc)
    settings = config.selection
    if max_selected < settings.max_selected:
        settings = type(settings)(**{**asdict(settings), "max_selected": max(1, max_selected)})
    n_atoms = len(frames[0])
    periodic = bool(frames[0].pbc.any())
    sigma = np.array([a.info["forces_std_mean"] for a in frames])
    result = select_candidates(
        frames[0].numbers,
        np.stack([a.positions for a in frames]),
        sigma,
        data.positions.reshape(-1, n_atoms, 3),
        train_pred.forces_std_mean,
        settings,
        cells=np.stack([a.cell.array for a in frames]) if periodic else None,
        train_cells=data.cell if periodic else None,
        pbc=frames[0].pbc if periodic else None,
    )
    selected = [int(i) for i in result.selected]
    hashes = [structure_hash(a) for a in frames]
    # A run folder from before selections were kept, resumed after this generation's
    # labels were appended: its choice is the candidates the dataset holds.
    appended = {h for h, p in zip(dataset.hashes(), dataset.provenance())
                if p.generation == generation and p.strategy != "initial"}
    if appended:
        selected = [k for k, h in enumerate(hashes) if h in appended]
    chosen = [frames[i] for i in selected]
    report = SelectReport(
        selected, float(result.threshold),
        {int(k): v for k, v in result.rejected.items() if int(k) not in selected},
        n_above=int(np.sum(np.isfinite(sigma) & (sigma >= result.threshold))),
        sigma_f_mean=float(np.mean([a.info["forces_std_mean"] for a in chosen])) if chosen else float("nan"),
        sigma_f_max=float(np.max([a.info["forces_std_max"] for a in chosen])) if chosen else float("nan"),
    )
    _write_selection(layout, generation, report, config.exploration.kind,
                     [hashes[i] for i in selected])
    return report


def selection_strategy(config: RunConfig, generation: int) -> str:
    """The exploration strategy of ``generation``'s kept selection (the config's if none
    is kept): the provenance its labels get, whatever the config says on a resume."""
    kept = _read_selection(RunLayout(config.run_dir()), generation)
    return kept[1] if kept is not None else config.exploration.kind


def _selected_frames(config: RunConfig, generation: int, selected: Sequence[int]) -> list[Atoms]:
    frames = _read_candidates(RunLayout(config.run_dir()), generation)
    chosen = [frames[i] for i in selected]
    for atoms in chosen:
        atoms.calc = None
    return chosen


@dataclass(frozen=True)
class LabelResult:
    """One structure labelled into the run's label store (not yet in the dataset)."""

    index: int  # the candidate's index in its generation (or initial structure's)
    key: str  # label-store key
    ok: bool
    cached: bool  # read back from the store: computed by an earlier (interrupted) run
    seconds: float  # of the calculation (for a cached label, of the original one)
    error: str | None = None


def label_one(config: RunConfig, generation: int, index: int) -> LabelResult:
    """Label candidate ``index`` of ``generation`` (or initial structure ``index`` for
    :data:`INITIAL`) into the run's label store.

    Writes only the store (one file per label, atomically), never the dataset, so many
    of these can run at once; :func:`append_labels` (:func:`append_initial`) then adds
    the batch's labels to the dataset. A label already in the store is read back, not recomputed. A failed
    calculation (ASE's ``CalculationFailed``) is a result with ``ok=False``, stored too;
    any other exception propagates.
    """
    [atoms] = _selected_frames(config, generation, [index])
    calc, theory, _ = make_calculator(config.labels)
    [outcome] = label_structures([atoms], calc, LabelStore(RunLayout(config.run_dir()).labels), theory)
    return LabelResult(index, label_key(atoms, theory), outcome.ok, outcome.cached,
                       outcome.seconds, outcome.error)


def _append_stored(config: RunConfig, chosen: list[Atoms], strategy: str, generation: int,
                   parents: Callable[[Atoms], int]) -> LabelReport:
    """Append the stored labels of the structures ``chosen`` to the dataset, with
    provenance ``generation`` and ``strategy``, and report on the batch as a whole.

    Idempotent: a structure this batch appended before (same generation and strategy; an
    earlier invocation killed before it recorded the generation) counts as added with its
    record's index, so a re-run reports what the first run would have. One that is in the
    dataset from another batch counts as known; one with no stored label as failed.
    """
    t0 = time.perf_counter()
    layout = RunLayout(config.run_dir())
    dataset = Dataset(layout.dataset)
    level = level_of_theory(config.labels)
    theory = theory_settings(config.labels)
    index = {h: (k, p) for k, (h, p) in enumerate(zip(dataset.hashes(), dataset.provenance()))}
    store = LabelStore(layout.labels)
    ours: dict[int, int] = {}  # position in chosen -> dataset index
    known, failures, new = 0, [], []
    for k, atoms in enumerate(chosen):
        found = index.get(structure_hash(atoms))
        if found is not None:
            if found[1].generation == generation and found[1].strategy == strategy:
                ours[k] = found[0]
            else:
                known += 1
            continue
        stored = store.get(label_key(atoms, theory), n_atoms=len(atoms))
        if stored is None:
            failures.append(f"{strategy} structure {k}: no label in the store (its labelling "
                            "task failed; a re-run retries it)")
        elif stored.error is not None:
            failures.append(f"{strategy} structure {k}: {stored.error}")
        else:
            new.append((k, stored))
    if new:
        # skip_known: another writer of this run folder may have appended some meanwhile
        dataset.append(
            [chosen[k] for k, _ in new], [s.energy for _, s in new], [s.forces for _, s in new],
            [Provenance(generation, strategy, level, parents(chosen[k])) for k, _ in new],
            skip_known=True)
        index = {h: k for k, (h, p) in enumerate(zip(dataset.hashes(), dataset.provenance()))
                 if p.generation == generation and p.strategy == strategy}
        ours.update({k: index[structure_hash(chosen[k])] for k, _ in new})
    return LabelReport(len(chosen), len(ours), len(failures), known,
                       time.perf_counter() - t0, failures, [ours[k] for k in sorted(ours)])


def append_labels(config: RunConfig, generation: int, selected: list[int]) -> LabelReport:
    """Append the stored labels of ``generation``'s selected candidates to the dataset.

    The one writer of the dataset for a generation. Structures already in the dataset are
    skipped (a re-run appends nothing twice); a selected structure with no label in the
    store (its labelling task failed for good) counts as a failed label.
    """
    return _append_stored(config, _selected_frames(config, generation, selected),
                          selection_strategy(config, generation), generation,
                          lambda atoms: int(atoms.info["parent"]))


def append_initial(config: RunConfig) -> LabelReport:
    """Append the stored labels of every initial structure (:func:`prepare_initial`) to
    the dataset, as :func:`append_labels` does for a generation; raise
    :class:`LabellingError` if fewer than two are in it then."""
    frames = _read_candidates(RunLayout(config.run_dir()), INITIAL)
    report = _append_stored(config, frames, "initial", 0, lambda atoms: -1)
    return _check_initial(Dataset(RunLayout(config.run_dir()).dataset), report)


def restore_generation(config: RunConfig, record: Mapping) -> int:
    """Make sure a recorded generation's labels are in the dataset: append any the
    dataset lacks (it was deleted, or set aside as damaged) from the label store, in the
    generation's kept selection order, and return how many. Raises :class:`DatasetError`
    if the dataset then holds fewer records than the generation ended with (its labels
    are gone from the label store too)."""
    layout = RunLayout(config.run_dir())
    generation = int(record["generation"])
    before = len(Dataset(layout.dataset))
    kept = _read_selection(layout, generation)
    if kept is not None and kept[0].selected:
        append_labels(config, generation, kept[0].selected)
    after = len(Dataset(layout.dataset))
    expected = record.get("dataset_size")
    if expected is not None and after < expected:
        raise DatasetError(
            f"{layout.dataset} holds {after} labelled structures, but generation {generation} "
            f"ended with {expected}, and the run's label store ({layout.labels}) cannot give "
            "back the rest; restore dataset.h5 from a backup (a dataset.h5.damaged-* file "
            "beside it is the damaged original), or start a new run with another "
            "system.name or output_dir")
    return after - before


def evaluate_step(config: RunConfig, generation: int, indices: list[int]) -> dict[str, float]:
    """Calibration of ``generation``'s committee on dataset records ``indices`` (labels it
    had not seen): how well its spread ranks and sizes its actual force errors."""
    if not indices:
        return {}
    new = Dataset(RunLayout(config.run_dir()).dataset).arrays().subset(indices)
    pred = _committee(config, generation).predict_arrays(new.numbers, new.positions, new.n_atoms,
                                                         new.cell, new.pbc)
    cal = force_calibration(pred.forces_std, pred.forces_mean, new.forces,
                            np.repeat(np.arange(len(new)), new.n_atoms))
    return asdict(cal)


def label_step(config: RunConfig, generation: int, selected: list[int]) -> LabelReport:
    """Label the selected candidates of ``generation`` one after another, append them to
    the dataset and measure the committee's calibration on them: the flow's work
    (:func:`label_one` tasks, :func:`append_labels`, :func:`evaluate_step`) in this
    process."""
    results = [label_one(config, generation, index) for index in selected]
    report = replace(append_labels(config, generation, selected),
                     cached=sum(r.cached for r in results))
    return replace(report, calibration=evaluate_step(config, generation, report.indices))


StopReason = Literal["converged", "few_candidates", "no_candidates", "max_generations",
                     "max_labels", "max_wall_time"]
# Reasons that mean the potential is done, as opposed to a budget or the search running out.
CONVERGED: frozenset[str] = frozenset({"converged", "few_candidates"})


@dataclass(frozen=True)
class StopDecision:
    reason: StopReason
    explanation: str


def wall_time_stop(config: RunConfig, elapsed_seconds: float) -> StopDecision | None:
    """The wall-time budget's decision after ``elapsed_seconds`` of this invocation."""
    limit = config.budget.max_wall_hours
    if limit is None or elapsed_seconds < limit * 3600:
        return None
    return StopDecision("max_wall_time",
                        f"wall-time budget spent: {elapsed_seconds / 3600:.3g} h in this "
                        f"invocation, budget.max_wall_hours = {limit:g} (re-run the same "
                        "config to resume)")


def only_trained(record: Mapping) -> bool:
    """Whether a generation record is of a final generation: trained, nothing explored."""
    return "attack_sigma_f_mean" not in record


def decide(config: RunConfig, records: Sequence[Mapping], elapsed_seconds: float) -> StopDecision | None:
    """Whether the run stops after the last of its generation ``records`` (in order), and
    why; None: go on. Checked in this order (the first that holds wins):

    1. the last generation only trained (its committee is the final one): the generation
       or the label budget is spent (``max_generations`` / ``max_labels``);
    2. the attacked geometries' mean σ_F was below ``convergence.force_std_threshold`` for
       the last ``convergence.patience`` generations (``converged``);
    3. fewer than ``convergence.min_candidates`` attacked geometries were above the
       selection threshold (``few_candidates``);
    4. selection ran and chose nothing (``no_candidates``);
    5. ``elapsed_seconds`` of this invocation reached ``budget.max_wall_hours`` (``max_wall_time``).
    """
    if not records:
        return wall_time_stop(config, elapsed_seconds)
    last, conv, budget = records[-1], config.convergence, config.budget
    if only_trained(last):
        if last["generation"] >= budget.max_generations:
            return StopDecision("max_generations", "generation budget spent (budget.max_generations"
                                f" = {budget.max_generations})")
        return StopDecision("max_labels", f"label budget spent (budget.max_labels = {budget.max_labels})")
    below = 0
    for record in reversed(records):
        if record.get("attack_sigma_f_mean", math.inf) >= conv.force_std_threshold:
            break
        below += 1
    if below >= conv.patience:
        return StopDecision("converged", "converged: the attacked geometries' mean force "
                            f"uncertainty stayed below {conv.force_std_threshold:g} eV/Å for "
                            f"{conv.patience} generation(s)")
    above = last.get("candidates_above_threshold")
    if conv.min_candidates and above is not None and above < conv.min_candidates:
        return StopDecision("few_candidates", f"converged: only {above} attacked geometries had a "
                            "force uncertainty at or above the selection threshold "
                            f"({last.get('selection_threshold', math.nan):.4g} eV/Å), fewer than "
                            f"convergence.min_candidates = {conv.min_candidates}")
    if "selected" in last and last["selected"] == 0:
        return StopDecision("no_candidates", "no attacked geometry passed selection (all below the "
                            "uncertainty threshold, near-duplicates or unphysical)")
    return wall_time_stop(config, elapsed_seconds)


def labelling_needed(config: RunConfig, explore: ExploreReport | None = None,
                     select: SelectReport | None = None) -> bool:
    """Whether a generation goes on to the next step: after exploring, while the attacked
    geometries are uncertain enough; after selecting, while enough candidates are above
    the threshold and some were selected (the rules of :func:`decide`)."""
    if explore is not None and explore.sigma_f_mean < config.convergence.force_std_threshold:
        return False
    if select is not None:
        return bool(select.selected) and select.n_above >= config.convergence.min_candidates
    return True


def append_generation_record(config: RunConfig, record: dict) -> None:
    """Keep a finished generation's record in ``generations.jsonl`` (written whole)."""
    append_record(RunLayout(config.run_dir()).generations, record)


def read_generation_records(run_dir: Path) -> list[dict]:
    """The generation records of a run folder in order, one per generation (a torn line is
    skipped with a warning; of a generation recorded twice, the last record)."""
    records = {r["generation"]: r for r in read_records(RunLayout(run_dir).generations)}
    return [records[g] for g in sorted(records)]
