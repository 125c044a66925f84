"""The steps of one active-learning generation, as plain functions of the run folder.

Each step reads what it needs from the run folder (:mod:`advloop.flows.run_folder`) and
writes its product there, so the loop (:mod:`advloop.flows.loop`) and the Prefect tasks
that wrap these steps (:mod:`advloop.flows.active_learning`) pass small records. A step
whose product already exists returns it without recomputing: re-running an interrupted
run continues where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from advloop.adversarial.attack import AttackSettings, attack
from advloop.adversarial.baselines import (
    CommitteeMDSettings,
    committee_md,
    icommittee_md,
    training_force_deviation,
)
from advloop.adversarial.random_displacement import random_displacement
from advloop.adversarial.seeding import choose_seeds
from advloop.adversarial.selection import (
    Rejection,
    RejectReason,
    SelectionResult,
    SelectionSettings,
    select_candidates,
)
from advloop.adversarial.structures import Candidates, Seeds
from advloop.calculators.factory import level_of_theory, make_calculator, theory_settings
from advloop.calculators.label_store import LabelStore, label_key
from advloop.calculators.labeller import label_structures
from advloop.flows.config import (
    AdversarialExploration,
    HybridExploration,
    MDExploration,
    RandomExploration,
    RunConfig,
)
from advloop.flows.inputs import initial_structures, read_labelled_file
from advloop.flows.progress import Throttled
from advloop.flows.records import GenerationRecord
from advloop.flows.run_folder import (
    IMPORTED,
    INITIAL,
    INITIAL_STRATEGIES,
    RunLayout,
    candidate_structures,
    read_candidates,
    read_generations,
    read_initial,
    read_selection,
    write_candidates,
    write_initial,
    write_selection,
)
from advloop.potentials.checkpoint import checkpoint_metrics, load_member, save_member
from advloop.potentials.committee import Committee
from advloop.potentials.dataset import (
    Arrays,
    Dataset,
    DatasetError,
    Provenance,
    split_indices,
    structure_hash,
)
from advloop.potentials.model import EnergyModel
from advloop.potentials.threads import torch_threads
from advloop.potentials.training import resolve_device, train_member
from advloop.potentials.uncertainty import (
    conformal_scale,
    element_scales,
    element_weighted_std,
    force_calibration,
    per_structure_errors,
)

# Seeds for the random streams of a run, derived from the config's seeds so that a run is
# reproducible and its streams independent.
_SPLIT_STREAM, _MEMBER_STREAM, _ATTACK_STREAM, _INITIAL_STREAM, _BOOTSTRAP_STREAM = 1, 2, 3, 4, 5


logger = logging.getLogger(__name__)


class LabellingError(RuntimeError):
    """Too many DFT labels failed for the run to go on. ``generation``: the batch's
    generation (None: the initial labels); ``report``: the batch's report."""

    def __init__(
        self, message: str, generation: int | None = None, report: LabelReport | None = None
    ):
        super().__init__(message)
        self.generation, self.report = generation, report


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
    logger.warning(
        "%s does not read (%s); kept as %s, and the dataset is rebuilt from the run's label store",
        path,
        reason,
        aside.name,
    )


def prepare_initial(config: RunConfig) -> list[int]:
    """Write the initial structures (of each system part: its starting structures
    displaced at random, and the unlabelled frames of its ``initial_data.files``) to the
    run folder, create the dataset with the labelled frames of the files imported into it
    (provenance :data:`IMPORTED`, their level of theory), and return the indices of the
    initial structures not yet in it: the label tasks of the initial batch
    (:data:`INITIAL`)."""
    layout = RunLayout(config.run_dir())
    _set_aside_if_damaged(layout.dataset)
    Dataset.create(layout.dataset, exist_ok=True)
    parts = config.parts()
    files = [
        [read_labelled_file(spec) for spec in (part.initial_data or config.initial_data).files]
        for part in parts
    ]
    if not layout.initial_structures.exists():
        structures: list[Atoms] = []
        for k, (part, frames) in enumerate(zip(parts, files)):
            seed = (part.initial_data or config.initial_data).seed
            # the first part's stream is a one-system run's, so that it stays as it was
            rng = _rng(config, _INITIAL_STREAM, seed, *([k] if k else []))
            structures += initial_structures(part, rng)
            structures += [atoms for f in frames for atoms in f.unlabelled]
        write_initial(layout, structures)
    imported = [atoms for part_files in files for f in part_files for atoms in f.labelled]
    if imported:
        # idempotent: a frame already in the dataset (an earlier invocation's) is skipped
        Dataset(layout.dataset).append(
            imported,
            [atoms.get_potential_energy() for atoms in imported],
            [atoms.get_forces() for atoms in imported],
            [Provenance(0, IMPORTED, str(a.info["level_of_theory"])) for a in imported],
            skip_known=True,
        )
    known = set(Dataset(layout.dataset).hashes())
    return [k for k, a in enumerate(read_initial(layout)) if structure_hash(a) not in known]


def _check_initial(dataset: Dataset, report: LabelReport) -> LabelReport:
    if len(dataset) < 2:
        raise LabellingError(
            f"only {len(dataset)} initial structure(s) could be labelled (need at least 2): "
            + "; ".join(report.failures[:3])
        )
    return report


def initial_dataset(config: RunConfig) -> LabelReport:
    """Create the run's dataset from the initial structures, labelled one after another:
    the flow's work (:func:`prepare_initial`, a :func:`label_one` task per structure,
    :func:`append_initial`) in this process. Nothing already labelled is recomputed."""
    return label_batch(config, INITIAL, prepare_initial(config))


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
    with torch_threads(config.compute.torch_threads):
        model, metrics = _train_member(config, generation, member, layout)
    save_member(model, path, metrics)
    return metrics


def _train_member(
    config: RunConfig, generation: int, member: int, layout: RunLayout
) -> tuple[EnergyModel, dict[str, float]]:
    device = resolve_device(config.compute.device)
    data = Dataset(layout.dataset).arrays()
    train_idx, val_idx = split_indices(
        len(data), config.training.val_fraction, _rng(config, _SPLIT_STREAM, generation)
    )
    if config.committee.bootstrap:
        train_idx = np.sort(
            _rng(config, _BOOTSTRAP_STREAM, member, generation).choice(
                train_idx, size=len(train_idx), replace=True
            )
        )
    previous = layout.member_checkpoint(generation - 1, member)
    warm = config.committee.warm_start and generation > 0 and previous.exists()
    if warm:
        model = load_member(previous, expected=config.model)
    else:
        seed = int(_rng(config, _MEMBER_STREAM, member).integers(2**31))
        model = EnergyModel(config.model, torch.Generator().manual_seed(seed))
    epochs = config.training.warm_start_epochs if warm else config.training.max_epochs
    t0 = time.perf_counter()
    result = train_member(
        model,
        data.subset(train_idx),
        data.subset(val_idx) if len(val_idx) else None,
        config.training,
        _rng(config, _MEMBER_STREAM, member, generation),
        warm_start=warm,
        device=device,
        name=f"generation {generation} member {member}",
        progress=Throttled(_epoch_line(generation, member, epochs)),
    )
    metrics = {
        **result.metrics(),
        "seconds": time.perf_counter() - t0,
        "cuda": float(device.type == "cuda"),
        "n_train": float(len(train_idx)),
        "n_train_unique": float(len(set(train_idx))),
        "n_val": float(len(val_idx)),
    }
    return model, metrics


def _epoch_line(generation: int, member: int, epochs: int):
    def describe(record) -> str:
        val = (
            ""
            if record.val_loss is None
            else f", validation loss {record.val_loss:.4g}, force MAE "
            f"{record.val_forces_mae:.4g} eV/Å"
        )
        return (
            f"training gen {generation} member {member}: epoch {record.epoch + 1} of at most "
            f"{epochs}{val}"
        )

    return describe


def _step_line(what: str, n_steps: int, sigma: str, unit: str = "eV/Å"):
    """A progress line of an attack or committee MD (its state's ``sigma`` field, in
    ``unit``): step, mean σ of the seeds still moving, how many have stopped."""

    def describe(state) -> str:
        values = np.asarray(getattr(state, sigma))
        moving = [k for k in range(len(values)) if k not in state.stopped]
        mean = float(np.mean(values[moving] if moving else values))
        return (
            f"{what}: step {state.step} of {n_steps}, mean σ {mean:.4g} {unit}, "
            f"{len(state.stopped)} of {len(values)} seeds stopped"
        )

    return describe


def _committee(config: RunConfig, generation: int) -> Committee:
    layout = RunLayout(config.run_dir())
    return Committee.from_checkpoints(layout.committee_checkpoints(generation))


@dataclass(frozen=True)
class ExploreReport:
    n_seeds: int
    n_stopped: int
    # eV/Å: over seeds, the mean of each seed's most uncertain geometry's mean per-atom
    # force std (with pools, a seed's path holds several geometries), and the max σ_F
    sigma_f_mean: float
    sigma_f_max: float  # eV/Å, max over explored geometries of their max per-atom force std
    seconds: float
    n_candidates: int = 0
    calibration_scale: float = float("nan")  # c of the bound c σ_F (nan: too few labels yet)
    error_bound: float = float("nan")  # eV/Å, c × sigma_f_mean (nan: no scale yet)
    # candidates per source, in candidate order (a hybrid: the attack's, then MD's)
    sources: dict[str, int] | None = None
    # several systems in one potential: per part, its seeds, candidates and σF mean (eV/Å)
    parts: dict[str, dict[str, float]] | None = None

    def source_of(self, indices: list[int]) -> dict[str, int]:
        """How many of the candidates ``indices`` each source gave ({} without sources)."""
        bounds = np.cumsum(list((self.sources or {}).values()))
        names = list((self.sources or {}).keys())
        counts = dict.fromkeys(names, 0)
        for k in indices:
            counts[names[int(np.searchsorted(bounds, k, side="right"))]] += 1
        return counts


def calibration_scale(config: RunConfig, generation: int) -> float:
    """The split-conformal scale c (:func:`advloop.potentials.uncertainty.conformal_scale`,
    at ``convergence.coverage``) from every label the committees of generations before
    ``generation`` were evaluated on before they saw it; nan with fewer than
    ``convergence.min_calibration_labels`` such labels, or too few for the coverage."""
    sigmas: list[float] = []
    errors: list[float] = []
    for record in read_generations(config.run_dir()):
        if record.generation < generation and record.calibration_sigmas is not None:
            sigmas.extend(record.calibration_sigmas)
            errors.extend(record.calibration_errors or [])
    conv = config.convergence
    if len(sigmas) < conv.min_calibration_labels or len(sigmas) != len(errors):
        return float("nan")
    scale = conformal_scale(np.array(errors), np.array(sigmas), conv.coverage)
    return scale if np.isfinite(scale) else float("nan")


def _per_seed_peak(candidates: Candidates) -> np.ndarray:
    """[n_seeds explored] each seed's largest mean σ_F over the geometries it gave."""
    if not len(candidates):
        return np.zeros(0)
    peak: dict[int, float] = {}
    for parent, sigma in zip(candidates.parent, candidates.sigma_f_mean):
        peak[int(parent)] = max(peak.get(int(parent), 0.0), float(sigma))
    return np.array(list(peak.values()))


def _md_seeds(config: RunConfig, committee: Committee, seeds: Seeds, rng) -> Seeds:
    """``seeds`` moved by a short committee MD at the application temperature
    (``system.temperature``) for ``exploration.seed_md_steps`` steps: the frames where
    dynamics at that temperature goes, from which exploration then starts. A trajectory
    the committee stops early (unphysical) keeps its last sane frame."""
    exploration = config.exploration
    temperature = config.system.temperature
    if temperature is None:  # validated on load; a config built in code may lack it
        raise ValueError('exploration.seeds "md_frames" needs system.temperature (K)')
    md = CommitteeMDSettings(
        temperature=temperature,
        n_steps=exploration.seed_md_steps,
        trust_mode="fixed",
        trust_lower=0.0,
        trust_upper=1e6,
        min_distance_factor=exploration.min_distance_factor,
        max_bond_factor=exploration.max_bond_factor,
    )
    positions = seeds.positions
    for state in icommittee_md(committee, seeds, md, rng):
        positions = state.positions
    return replace(seeds, positions=np.array(positions, dtype=np.float64))


def _attack(
    committee: Committee,
    seeds: Seeds,
    data,
    settings: AttackSettings,
    rng: np.random.Generator,
    trace: Path,
    scale: float,
    label: str = "",
) -> Candidates:
    """The attack's candidates; its objective and σ per step and seed go to ``trace``,
    its progress to the log (as ``label``)."""
    candidates, result = attack(
        committee,
        seeds,
        data.energy,
        data.n_atoms,
        settings,
        torch.Generator().manual_seed(int(rng.integers(2**31))),
        calibration_scale=scale if np.isfinite(scale) else 1.0,
        progress=Throttled(
            _step_line(
                f"attack {label}".strip(),
                settings.n_steps,
                "sigma",
                "eV/Å" if settings.uncertainty == "forces" else "eV",
            )
        ),
    )
    trace.parent.mkdir(parents=True, exist_ok=True)
    np.savez(trace, objective=result.objective, sigma=result.sigma, seeds=seeds.index)
    return candidates


def _md(
    committee: Committee,
    seeds: Seeds,
    data,
    settings: CommitteeMDSettings,
    rng: np.random.Generator,
    label: str = "",
) -> Candidates:
    """Committee MD's frames in its trust window (an adaptive window scaled from the
    committee's deviation on ``data``, its training set)."""
    reference = (
        training_force_deviation(committee, data) if settings.trust_mode == "adaptive" else None
    )
    return committee_md(
        committee,
        seeds,
        settings,
        rng,
        reference_sigma=reference,
        progress=Throttled(
            _step_line(f"committee MD {label}".strip(), settings.n_steps, "sigma_f_mean")
        ),
    )


def _explore(
    config: RunConfig,
    committee: Committee,
    seeds: Seeds,
    data,
    rng: np.random.Generator,
    trace: Path,
    scale: float = float("nan"),
    label: str = "",
) -> dict[str, Candidates]:
    """Run the configured exploration strategy from ``seeds``: its candidates by source
    (one strategy, or the attack and MD of a hybrid, in that order). An attack also writes
    its trajectory of objective and σ per step and seed to ``trace``. ``scale``: the
    calibration scale for a ``target`` attack objective (nan: none yet, taken as 1)."""
    exploration = config.exploration
    if isinstance(exploration, AdversarialExploration):
        return {
            "adversarial": _attack(committee, seeds, data, exploration, rng, trace, scale, label)
        }
    if isinstance(exploration, RandomExploration):
        return {"random": random_displacement(committee, seeds, exploration, rng)}
    if isinstance(exploration, MDExploration):
        return {"md": _md(committee, seeds, data, exploration, rng, label)}
    if isinstance(exploration, HybridExploration):
        return {
            "adversarial": _attack(
                committee, seeds, data, exploration.attack, rng, trace, scale, label
            ),
            "md": _md(committee, seeds, data, exploration.md, rng, label),
        }
    raise TypeError(f"exploration: no strategy for {exploration!r}")


def explore_step(config: RunConfig, generation: int) -> ExploreReport:
    """Explore from seeds drawn from the dataset with generation ``generation``'s committee
    and keep the candidate geometries, with their uncertainties, in the run folder."""
    layout = RunLayout(config.run_dir())
    kept = read_candidates(layout, generation)
    if kept is not None:
        return ExploreReport(**kept[1])
    with torch_threads(config.compute.torch_threads):
        report = _explore_generation(config, generation, layout)
    return report


def part_members(config: RunConfig, numbers: np.ndarray, n_atoms: np.ndarray) -> list[np.ndarray]:
    """For each of the run's system parts (:meth:`RunConfig.parts`), the indices of the
    structures (flat ``numbers`` and ``n_atoms``, as a dataset's or candidates' arrays)
    that are of its composition; a one-system run's part holds them all."""
    parts = config.parts()
    if len(parts) == 1:
        return [np.arange(len(n_atoms))]
    from advloop.flows.inputs import read_structures

    keys = [tuple(int(z) for z in read_structures(p.structures)[0].numbers) for p in parts]
    starts = np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64)
    of = [tuple(int(z) for z in numbers[a:b]) for a, b in zip(starts[:-1], starts[1:])]
    return [np.array([k for k, c in enumerate(of) if c == key], dtype=np.int64) for key in keys]


def _explore_generation(config: RunConfig, generation: int, layout: RunLayout) -> ExploreReport:
    t0 = time.perf_counter()
    committee = _committee(config, generation)
    dataset = Dataset(layout.dataset)
    data = dataset.arrays()
    previous = np.array(
        [
            k
            for k, p in enumerate(dataset.provenance())
            if p.generation == generation - 1 and p.strategy not in INITIAL_STRATEGIES
        ],
        dtype=np.int64,
    )
    rng = _rng(config, _ATTACK_STREAM, generation)
    scale = calibration_scale(config, generation)
    parts = config.parts()
    # each part explores from its own seeds, with its own training set as the reference
    # (energies, the trust window); candidates by source, then by part
    found: dict[str, dict[str, Candidates]] = {}
    n_seeds = 0
    seeds_of: dict[str, int] = {}
    for k, (part, members) in enumerate(
        zip(parts, part_members(config, data.numbers, data.n_atoms))
    ):
        if not len(members):
            continue
        own = data.subset(members)
        chosen = members[
            choose_seeds(
                own.energy / own.n_atoms,
                part.n_seeds or config.exploration.n_seeds,
                part.seeds or config.exploration.seeds,
                rng,
                np.flatnonzero(np.isin(members, previous)),
            )
        ]
        seeds = Seeds.from_arrays(data, chosen)
        if (part.seeds or config.exploration.seeds) == "md_frames":
            seeds = _md_seeds(config, committee, seeds, rng)
        n_seeds += len(seeds)
        seeds_of[part.name] = len(seeds)
        trace = layout.exploration_trace(generation)
        by_source = _explore(
            config,
            committee,
            seeds,
            own,
            rng,
            trace if k == 0 else trace.with_name(f"{trace.stem}-{part.name}{trace.suffix}"),
            scale,
            f"gen {generation}" + (f" {part.name}" if len(parts) > 1 else ""),
        )
        for name, c in by_source.items():
            # parents and stopped seeds as dataset indices, which outlive this batch of seeds
            found.setdefault(name, {})[part.name] = replace(
                c,
                parent=seeds.index[c.parent].astype(np.int64),
                stopped={int(seeds.index[s]): v for s, v in c.stopped.items()},
            )
    by_source = {name: Candidates.concatenate(of) for name, of in found.items()}
    candidates = Candidates.concatenate(by_source) if by_source else Candidates.empty({})
    peak = _per_seed_peak(candidates)
    sigma_mean = float(peak.mean()) if len(peak) else 0.0
    report = ExploreReport(
        n_seeds=n_seeds,
        n_stopped=len(candidates.stopped),
        sigma_f_mean=sigma_mean,
        sigma_f_max=float(candidates.sigma_f_max.max()) if len(candidates) else 0.0,
        seconds=time.perf_counter() - t0,
        n_candidates=len(candidates),
        calibration_scale=scale,
        error_bound=scale * sigma_mean,
        sources={name: len(c) for name, c in by_source.items()},
        parts=_explored_parts(config, candidates, seeds_of) if len(parts) > 1 else None,
    )
    write_candidates(layout, generation, candidates, asdict(report))
    return report


def _explored_parts(
    config: RunConfig, candidates: Candidates, seeds_of: dict[str, int]
) -> dict[str, dict[str, float]]:
    """Per part: its seeds, candidates and their σF mean (eV/Å, over its seeds, of each
    seed's most uncertain geometry, as the generation's)."""
    out = {}
    for part, mine in zip(
        config.parts(), part_members(config, candidates.numbers, candidates.n_atoms)
    ):
        peak = _per_seed_peak(candidates.subset(mine))
        out[part.name] = {
            "seeds": seeds_of.get(part.name, 0),
            "candidates": len(mine),
            "sigma_f_mean": float(peak.mean()) if len(peak) else 0.0,
        }
    return out


def generation_candidates(config: RunConfig, generation: int) -> Candidates:
    """The candidates :func:`explore_step` kept for ``generation`` (parents as dataset
    indices). Raises FileNotFoundError if it has not explored."""
    kept = read_candidates(RunLayout(config.run_dir()), generation)
    if kept is None:
        raise FileNotFoundError(f"generation {generation} of {config.run_dir()} has not explored")
    return kept[0]


@dataclass(frozen=True)
class SelectReport:
    selected: list[int]  # indices into the generation's candidates
    threshold: float  # eV/Å
    rejected: dict[int, Rejection]
    n_above: int = 0  # candidates with a finite σ_F at or above the threshold
    parts: dict[str, int] | None = None  # several systems: the selected of each part
    sigma_f_mean: float = float("nan")  # eV/Å, mean over the selected of their mean σ_F
    sigma_f_max: float = float("nan")  # eV/Å, max over the selected of their max σ_F

    def rejected_counts(self) -> dict[RejectReason, int]:
        """How many candidates each reason rejected."""
        counts: dict[RejectReason, int] = {}
        for rejection in self.rejected.values():
            counts[rejection.reason] = counts.get(rejection.reason, 0) + 1
        return counts


# Reasons as advloop 0.1 kept them (sentences), by the start that tells their kind.
_LEGACY_REASONS: dict[str, RejectReason] = {
    "below threshold": "below_threshold",
    "near-duplicate of training": "known",
    "near-duplicate of candidate": "duplicate",
    "over cap": "over_cap",
    "not finite": "not_finite",
}


def _rejection(kept: object) -> Rejection:
    if isinstance(kept, dict):
        return Rejection(kept["reason"], kept["detail"])
    text = str(kept)
    reason: RejectReason = next(
        (v for k, v in _LEGACY_REASONS.items() if text.startswith(k)), "unphysical"
    )
    return Rejection(reason, text)


def _write_selection(
    layout: RunLayout, generation: int, report: SelectReport, strategy: str, hashes: list[str]
) -> None:
    rejected = {str(k): asdict(r) for k, r in report.rejected.items()}
    write_selection(
        layout,
        generation,
        {
            "generation": generation,
            "strategy": strategy,
            "hashes": hashes,
            "report": {**asdict(report), "rejected": rejected},
        },
    )


def _read_selection(layout: RunLayout, generation: int) -> tuple[SelectReport, str] | None:
    """The selection kept for ``generation`` and the strategy that explored it (None: none
    kept, or one that does not read whole, which is made again)."""
    kept = read_selection(layout, generation)
    if kept is None:
        return None
    try:
        report = dict(kept["report"])
        report["rejected"] = {int(k): _rejection(v) for k, v in report["rejected"].items()}
        return SelectReport(**report), str(kept["strategy"])
    except (ValueError, KeyError, TypeError):
        return None


def label_shares(shares: list[float], n: int) -> list[int]:
    """``n`` labels split in proportion to ``shares`` (largest remainders; ties to the
    earlier part), summing to ``n``."""
    total = sum(shares)
    exact = [n * s / total for s in shares]
    out = [int(np.floor(x)) for x in exact]
    order = sorted(range(len(shares)), key=lambda k: (-(exact[k] - out[k]), k))
    for k in order[: n - sum(out)]:
        out[k] += 1
    return out


def _select_among(
    config: RunConfig,
    generation: int,
    committee: Committee,
    candidates: Candidates,
    data: Arrays,
    settings: SelectionSettings,
) -> tuple[SelectionResult, int]:
    """:func:`select_candidates` on ``candidates`` of one composition against the training
    set ``data`` of that composition, ranked as ``settings`` ask; and how many had a
    finite ranking σ at or above the threshold."""
    diverse = settings.method == "diverse"
    # one committee pass over the training set and, where selection needs more than the
    # candidates' kept σ, one over the candidates, each with the features if wanted
    elements = np.unique(np.concatenate([data.numbers, candidates.numbers])) if diverse else None
    train_pred = committee.predict_arrays(
        data.numbers, data.positions, data.n_atoms, data.cell, data.pbc, elements=elements
    )
    cand_pred = (
        committee.predict_arrays(
            candidates.numbers,
            candidates.positions,
            candidates.n_atoms,
            candidates.cells,
            candidates.pbc,
            elements=elements,
        )
        if diverse or settings.weighting == "element"
        else None
    )
    n_atoms = int(candidates.n_atoms[0])
    periodic = bool(candidates.pbc.any())
    sigma = candidates.sigma_f_mean
    ranked, train_ranked = sigma, train_pred.forces_std_mean
    if settings.weighting == "element" and cand_pred is not None:
        scales = element_scales(train_pred.forces_std, data.numbers)

        def weighted(per_atom_std: np.ndarray, numbers: np.ndarray, n_atoms: np.ndarray):
            idx_m = np.repeat(np.arange(len(n_atoms)), n_atoms)
            return element_weighted_std(per_atom_std, numbers, idx_m, len(n_atoms), scales)

        ranked = weighted(cand_pred.forces_std, candidates.numbers, candidates.n_atoms)
        train_ranked = weighted(train_pred.forces_std, data.numbers, data.n_atoms)
    features = cand_pred.structure_features if cand_pred is not None else None
    train_features = train_pred.structure_features
    eligible, ineligible = None, "not eligible"
    conv = config.convergence
    if conv.criterion == "calibrated_error" and conv.force_error_tolerance is not None:
        scale = calibration_scale(config, generation)
        if np.isfinite(scale):
            # a candidate whose calibrated error bound is already within the tolerance
            # teaches the committee nothing it needs
            eligible = scale * sigma >= conv.force_error_tolerance
            ineligible = (
                f"calibrated error bound below the tolerance "
                f"({scale:.3g} × σ_F < {conv.force_error_tolerance:g} eV/Å)"
            )
    result = select_candidates(
        candidates.numbers[:n_atoms],
        candidates.positions.reshape(-1, n_atoms, 3),
        ranked,
        data.positions.reshape(-1, n_atoms, 3),
        train_ranked,
        settings,
        cells=candidates.cells if periodic else None,
        train_cells=data.cell if periodic else None,
        pbc=candidates.pbc[0] if periodic else None,
        features=features,
        train_features=train_features,
        eligible=eligible,
        ineligible=ineligible,
    )
    return result, int(np.sum(np.isfinite(ranked) & (ranked >= result.threshold)))


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
    candidates = generation_candidates(config, generation)
    if not len(candidates):
        return SelectReport([], float("nan"), {})
    committee = _committee(config, generation)
    dataset = Dataset(layout.dataset)
    data = dataset.arrays()
    settings = config.selection
    if max_selected < settings.max_selected:
        settings = type(settings)(**{**asdict(settings), "max_selected": max(1, max_selected)})
    parts = config.parts()
    quotas = label_shares([p.share for p in parts], settings.max_selected)
    selected: list[int] = []
    rejected: dict[int, Rejection] = {}
    thresholds: list[float] = []
    n_above = 0
    picked = dict.fromkeys((p.name for p in parts), 0)
    # each part chooses its share of the labels among its own candidates, against its
    # own training set (one composition each)
    for part, quota, mine, own in zip(
        parts,
        quotas,
        part_members(config, candidates.numbers, candidates.n_atoms),
        part_members(config, data.numbers, data.n_atoms),
    ):
        if not len(mine):
            continue
        if quota == 0 or not len(own):
            why = "its share of the labels is 0" if quota == 0 else "it has no training data"
            detail = f"over cap: part {part.name}: {why}"
            rejected.update({int(k): Rejection("over_cap", detail) for k in mine})
            continue
        result, above = _select_among(
            config,
            generation,
            committee,
            candidates.subset(mine),
            data.subset(own),
            replace(settings, max_selected=quota),
        )
        selected += [int(mine[i]) for i in result.selected]
        picked[part.name] = len(result.selected)
        rejected.update({int(mine[k]): v for k, v in result.rejected.items()})
        thresholds.append(float(result.threshold))
        n_above += above
    threshold = min(thresholds) if thresholds else float("nan")
    hashes = [structure_hash(a) for a in candidate_structures(candidates)]
    # A run folder from before selections were kept, resumed after this generation's
    # labels were appended: its choice is the candidates the dataset holds.
    appended = {
        h
        for h, p in zip(dataset.hashes(), dataset.provenance())
        if p.generation == generation and p.strategy not in INITIAL_STRATEGIES
    }
    if appended:
        selected = [k for k, h in enumerate(hashes) if h in appended]
    sigma = candidates.sigma_f_mean
    report = SelectReport(
        selected,
        threshold,
        {k: v for k, v in sorted(rejected.items()) if k not in selected},
        n_above=n_above,
        sigma_f_mean=float(np.mean(sigma[selected])) if selected else float("nan"),
        sigma_f_max=float(np.max(candidates.sigma_f_max[selected])) if selected else float("nan"),
        parts=picked if len(parts) > 1 else None,
    )
    _write_selection(
        layout, generation, report, config.exploration.kind, [hashes[i] for i in selected]
    )
    return report


def selection_strategy(config: RunConfig, generation: int) -> str:
    """The exploration strategy of ``generation``'s kept selection (the config's if none
    is kept): the provenance its labels get, whatever the config says on a resume."""
    kept = _read_selection(RunLayout(config.run_dir()), generation)
    return kept[1] if kept is not None else config.exploration.kind


def selected_structures(config: RunConfig, generation: int, selected: Sequence[int]) -> list[Atoms]:
    """Candidates ``selected`` of ``generation`` (initial structures for :data:`INITIAL`)
    as ``ase.Atoms``, read from the run folder at once."""
    layout = RunLayout(config.run_dir())
    if generation == INITIAL:
        structures = read_initial(layout)
        return [structures[i] for i in selected]
    return candidate_structures(generation_candidates(config, generation), list(selected))


@dataclass(frozen=True)
class LabelResult:
    """One structure labelled into the run's label store (not yet in the dataset)."""

    index: int  # the candidate's index in its generation (or initial structure's)
    key: str  # label-store key
    ok: bool
    cached: bool  # read back from the store: computed by an earlier (interrupted) run
    seconds: float  # of the calculation (for a cached label, of the original one)
    error: str | None = None


def label_one(
    config: RunConfig, generation: int, index: int, atoms: Atoms | None = None
) -> LabelResult:
    """Label candidate ``index`` of ``generation`` (or initial structure ``index`` for
    :data:`INITIAL`) into the run's label store. ``atoms``: that structure, as
    :func:`selected_structures` gives it (read from the run folder if not given).

    Writes only the store (one file per label, atomically), never the dataset, so many
    of these can run at once; :func:`append_labels` (:func:`append_initial`) then adds
    the batch's labels to the dataset. A label already in the store is read back, not recomputed. A failed
    calculation (ASE's ``CalculationFailed``) is a result with ``ok=False``, stored too;
    any other exception propagates.
    """
    if atoms is None:
        [atoms] = selected_structures(config, generation, [index])
    calc, theory, _ = make_calculator(config.labels)
    [outcome] = label_structures(
        [atoms], calc, LabelStore(RunLayout(config.run_dir()).labels), theory
    )
    return LabelResult(
        index, label_key(atoms, theory), outcome.ok, outcome.cached, outcome.seconds, outcome.error
    )


def _append_stored(
    config: RunConfig,
    chosen: list[Atoms],
    strategy: str,
    generation: int,
    parents: Sequence[int] | np.ndarray,
) -> LabelReport:
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
    known = 0
    failures: list[str] = []
    new: list[tuple[int, float, np.ndarray]] = []  # position in chosen, energy, forces
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
            failures.append(
                f"{strategy} structure {k}: no label in the store (its labelling "
                "task failed; a re-run retries it)"
            )
        elif stored.error is not None:
            failures.append(f"{strategy} structure {k}: {stored.error}")
        elif stored.energy is None or stored.forces is None:  # the store keeps both or an error
            raise RuntimeError(f"{strategy} structure {k}: a stored label with no energy or forces")
        else:
            new.append((k, stored.energy, stored.forces))
    if new:
        # skip_known: another writer of this run folder may have appended some meanwhile
        dataset.append(
            [chosen[k] for k, _, _ in new],
            [energy for _, energy, _ in new],
            [forces for _, _, forces in new],
            [Provenance(generation, strategy, level, int(parents[k])) for k, _, _ in new],
            skip_known=True,
        )
        appended = {
            h: k
            for k, (h, p) in enumerate(zip(dataset.hashes(), dataset.provenance()))
            if p.generation == generation and p.strategy == strategy
        }
        ours.update({k: appended[structure_hash(chosen[k])] for k, _, _ in new})
    return LabelReport(
        len(chosen),
        len(ours),
        len(failures),
        known,
        time.perf_counter() - t0,
        failures,
        [ours[k] for k in sorted(ours)],
    )


def append_labels(config: RunConfig, generation: int, selected: list[int]) -> LabelReport:
    """Append the stored labels of ``generation``'s selected candidates to the dataset.

    The one writer of the dataset for a generation. Structures already in the dataset are
    skipped (a re-run appends nothing twice); a selected structure with no label in the
    store (its labelling task failed for good) counts as a failed label.
    """
    candidates = generation_candidates(config, generation)
    return _append_stored(
        config,
        candidate_structures(candidates, selected),
        selection_strategy(config, generation),
        generation,
        candidates.parent[selected],
    )


def append_initial(config: RunConfig) -> LabelReport:
    """Append the stored labels of every initial structure (:func:`prepare_initial`) to
    the dataset, as :func:`append_labels` does for a generation; raise
    :class:`LabellingError` if fewer than two are in it then."""
    frames = read_initial(RunLayout(config.run_dir()))
    report = _append_stored(config, frames, "initial", 0, [-1] * len(frames))
    return _check_initial(Dataset(RunLayout(config.run_dir()).dataset), report)


def restore_generation(config: RunConfig, record: GenerationRecord) -> int:
    """Make sure a recorded generation's labels are in the dataset: append any the
    dataset lacks (it was deleted, or set aside as damaged) from the label store, in the
    generation's kept selection order, and return how many. Raises :class:`DatasetError`
    if the dataset then holds fewer records than the generation ended with (its labels
    are gone from the label store too)."""
    layout = RunLayout(config.run_dir())
    generation = record.generation
    before = len(Dataset(layout.dataset))
    kept = _read_selection(layout, generation)
    if kept is not None and kept[0].selected:
        append_labels(config, generation, kept[0].selected)
    after = len(Dataset(layout.dataset))
    expected = record.dataset_size
    if expected is not None and after < expected:
        raise DatasetError(
            f"{layout.dataset} holds {after} labelled structures, but generation {generation} "
            f"ended with {expected}, and the run's label store ({layout.labels}) cannot give "
            "back the rest; restore dataset.h5 from a backup (a dataset.h5.damaged-* file "
            "beside it is the damaged original), or start a new run with another "
            "system.name or output_dir"
        )
    return after - before


def evaluate_step(
    config: RunConfig, generation: int, indices: list[int]
) -> dict[str, float | list[float]]:
    """Calibration of ``generation``'s committee on dataset records ``indices`` (labels it
    had not seen): how well its spread ranks and sizes its actual force errors, and per
    label the mean σ_F and mean force error (``sigmas``, ``errors``, eV/Å) from which
    later generations fit their calibration scale (:func:`calibration_scale`)."""
    if not indices:
        return {}
    new = Dataset(RunLayout(config.run_dir()).dataset).arrays().subset(indices)
    pred = _committee(config, generation).predict_arrays(
        new.numbers, new.positions, new.n_atoms, new.cell, new.pbc
    )
    idx_m = np.repeat(np.arange(len(new)), new.n_atoms)
    cal = force_calibration(pred.forces_std, pred.forces_mean, new.forces, idx_m)
    sigmas, errors = per_structure_errors(pred.forces_std, pred.forces_mean, new.forces, idx_m)
    return {
        **asdict(cal),
        "sigmas": [float(v) for v in sigmas],
        "errors": [float(v) for v in errors],
    }


def label_batch(config: RunConfig, generation: int, selected: list[int]) -> LabelReport:
    """Label the selected candidates of ``generation`` (initial structures for
    :data:`INITIAL`) one after another and append them to the dataset: the flow's
    labelling (:func:`label_one` tasks, then :func:`append_labels`) in this process."""
    structures = selected_structures(config, generation, selected)
    results = [label_one(config, generation, k, atoms) for k, atoms in zip(selected, structures)]
    report = (
        append_labels(config, generation, selected)
        if generation != INITIAL
        else append_initial(config)
    )
    return replace(report, cached=sum(r.cached for r in results))
