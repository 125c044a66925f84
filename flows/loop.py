"""The active-learning loop, written once and engine-free.

Each generation trains a committee, explores with it (the adversarial attack of
Schwalbe-Koda, Tan & Gómez-Bombarelli, Nat. Commun. 12, 5104 (2021), or a baseline),
selects the most informative candidates, labels them, appends the labels to the dataset
and measures the committee's calibration on them; then the loop decides whether to stop
(:func:`decide`, the one stop policy). :meth:`ActiveLearningLoop.irun` yields one
:class:`Finished` generation at a time, in the manner of ASE's ``Dynamics.irun``;
:meth:`ActiveLearningLoop.run` drains it and returns the :class:`RunSummary`.

The loop calls its steps through :class:`Jobs`, so that it is the same algorithm
wherever it runs: :class:`LocalJobs` runs the plain steps of :mod:`advloop.flows.steps`
in this process (the benchmarks measure between the loop's yields); the Prefect flow
(:mod:`advloop.flows.active_learning`) runs each step as a task, each generation as a
sub-flow, and its observers (the terminal table, UI artifacts, events) read the yielded
records. A resumed run yields the generations its folder already holds (``fresh`` False)
before it computes the next one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from advloop.calculators.factory import level_of_theory
from advloop.flows import run_folder
from advloop.flows.config import RunConfig
from advloop.flows.records import GenerationRecord, RunSummary, StopDecision
from advloop.flows.run_folder import IMPORTED, RunLayout
from advloop.flows.steps import (
    ExploreReport,
    LabellingError,
    LabelReport,
    SelectReport,
    evaluate_step,
    explore_step,
    initial_dataset,
    label_batch,
    restore_generation,
    select_step,
    train_step,
)
from advloop.flows.timing import Timed, split_generation, timed
from advloop.potentials.dataset import Dataset

__all__ = [
    "ActiveLearningLoop",
    "Finished",
    "GenerationOutcome",
    "Jobs",
    "LabellingError",
    "LocalJobs",
    "check_failures",
    "decide",
    "labelling_needed",
    "mean_member_metrics",
    "run_generation",
    "wall_time_stop",
]

logger = logging.getLogger(__name__)


class Jobs(Protocol):
    """The steps the loop calls, each a function of the config and small records. A job
    appends the intervals its work ran in to ``clock`` (:class:`~advloop.flows.timing.Timed`),
    so that a generation's record can say where its time went."""

    clock: list[Timed]

    def label_initial(self, config: RunConfig) -> LabelReport:
        """Label the initial structures not yet in the dataset and append them."""

    def train(self, config: RunConfig, generation: int) -> dict[str, float]:
        """Train ``generation``'s committee; its members' mean metrics."""

    def explore(self, config: RunConfig, generation: int) -> ExploreReport: ...

    def select(self, config: RunConfig, generation: int, max_selected: int) -> SelectReport: ...

    def label(self, config: RunConfig, generation: int, selected: list[int]) -> LabelReport:
        """Label ``generation``'s ``selected`` candidates and append them to the dataset."""

    def evaluate(
        self, config: RunConfig, generation: int, indices: list[int]
    ) -> dict[str, float | list[float]]: ...

    def generation(
        self,
        config: RunConfig,
        generation: int,
        max_selected: int,
        final: bool,
        deadline: float | None,
    ) -> GenerationOutcome:
        """One generation: :func:`run_generation` with these jobs (an executor may run it
        as a unit of its own, such as a Prefect sub-flow)."""


def mean_member_metrics(metrics: Sequence[dict[str, float]]) -> dict[str, float]:
    """A committee's training metrics: the members' mean of each, and divergence retries
    (members retrained at a lower learning rate after their training diverged) as a total."""
    keys = ("val_forces_mae", "val_energy_mae", "seconds", "epochs")
    mean = {
        k: sum(m[k] for m in metrics) / len(metrics) for k in keys if all(k in m for m in metrics)
    }
    return {**mean, "divergence_retries": int(sum(m.get("divergence_retries", 0) for m in metrics))}


class LocalJobs:
    """The plain steps in this process, one after another (members one by one, labels
    one by one): the loop without a workflow engine."""

    def __init__(self) -> None:
        self.clock: list[Timed] = []

    def _timed(self, phase, step, *args):
        result = timed(phase, step)(*args)
        self.clock.append(result)
        return result.value

    def label_initial(self, config: RunConfig) -> LabelReport:
        return self._timed("labelling", initial_dataset, config)

    def train(self, config: RunConfig, generation: int) -> dict[str, float]:
        return mean_member_metrics(
            [
                self._timed("training", train_step, config, generation, k)
                for k in range(config.committee.n_members)
            ]
        )

    def explore(self, config: RunConfig, generation: int) -> ExploreReport:
        return self._timed("exploration", explore_step, config, generation)

    def select(self, config: RunConfig, generation: int, max_selected: int) -> SelectReport:
        return self._timed("selection", select_step, config, generation, max_selected)

    def label(self, config: RunConfig, generation: int, selected: list[int]) -> LabelReport:
        return self._timed("labelling", label_batch, config, generation, selected)

    def evaluate(
        self, config: RunConfig, generation: int, indices: list[int]
    ) -> dict[str, float | list[float]]:
        return self._timed("labelling", evaluate_step, config, generation, indices)

    def generation(
        self,
        config: RunConfig,
        generation: int,
        max_selected: int,
        final: bool,
        deadline: float | None,
    ) -> GenerationOutcome:
        return run_generation(config, self, generation, max_selected, final, deadline)


# ---------------------------------------------------------------------------------------
# The stop policy.


def wall_time_stop(config: RunConfig, elapsed_seconds: float) -> StopDecision | None:
    """The wall-time budget's decision after ``elapsed_seconds`` of this invocation."""
    limit = config.budget.max_wall_hours
    if limit is None or elapsed_seconds < limit * 3600:
        return None
    return StopDecision(
        "max_wall_time",
        f"wall-time budget spent: {elapsed_seconds / 3600:.3g} h in this "
        f"invocation, budget.max_wall_hours = {limit:g} (re-run the same "
        "config to resume)",
    )


def decide(
    config: RunConfig, records: Sequence[GenerationRecord], elapsed_seconds: float
) -> StopDecision | None:
    """Whether the run stops after the last of its generation ``records`` (in order), and
    why; None: go on. Checked in this order (the first that holds wins):

    1. the last generation only trained (its committee is the final one): the generation
       or the label budget is spent (``max_generations`` / ``max_labels``);
    2. for the last ``convergence.patience`` generations, the attacked geometries' mean
       σ_F was below ``convergence.force_std_threshold`` (criterion ``sigma``), or their
       calibrated force-error bound below ``convergence.force_error_tolerance``
       (criterion ``calibrated_error``) (``converged``);
    3. fewer than ``convergence.min_candidates`` attacked geometries were above the
       selection threshold (``few_candidates``);
    4. selection ran and chose nothing (``no_candidates``);
    5. ``elapsed_seconds`` of this invocation reached ``budget.max_wall_hours`` (``max_wall_time``).
    """
    if not records:
        return wall_time_stop(config, elapsed_seconds)
    last, conv, budget = records[-1], config.convergence, config.budget
    if not last.explored:
        if last.generation >= budget.max_generations:
            return StopDecision(
                "max_generations",
                f"generation budget spent (budget.max_generations = {budget.max_generations})",
            )
        return StopDecision(
            "max_labels", f"label budget spent (budget.max_labels = {budget.max_labels})"
        )
    below = 0
    for record in reversed(records):
        if not _within_tolerance(config, record):
            break
        below += 1
    if below >= conv.patience:
        if conv.criterion == "calibrated_error":
            return StopDecision(
                "converged",
                "converged: the calibrated bound of the force error on the attacked "
                f"geometries stayed below {conv.force_error_tolerance:g} eV/Å for "
                f"{conv.patience} generation(s) (last: {last.attack_error_bound:.3g} eV/Å "
                f"at coverage {conv.coverage:g})",
            )
        return StopDecision(
            "converged",
            "converged: the attacked geometries' mean force "
            f"uncertainty stayed below {conv.force_std_threshold:g} eV/Å for "
            f"{conv.patience} generation(s)",
        )
    above = last.candidates_above_threshold
    if conv.min_candidates and above is not None and above < conv.min_candidates:
        threshold = last.selection_threshold if last.selection_threshold is not None else math.nan
        return StopDecision(
            "few_candidates",
            f"converged: only {above} attacked geometries had a "
            "force uncertainty at or above the selection threshold "
            f"({threshold:.4g} eV/Å), fewer than "
            f"convergence.min_candidates = {conv.min_candidates}",
        )
    if last.attack_candidates == 0 and last.selected in (0, None):
        return StopDecision(
            "no_candidates",
            "the exploration proposed no geometry to label (committee MD: no sampled frame "
            "reached its trust window; an attack: every seed stopped before its first step)",
        )
    if last.selected == 0:
        return StopDecision(
            "no_candidates",
            "no attacked geometry passed selection (all below the "
            "uncertainty threshold, near-duplicates or unphysical)",
        )
    return wall_time_stop(config, elapsed_seconds)


def _within_tolerance(config: RunConfig, record: GenerationRecord | ExploreReport) -> bool:
    """Whether an exploration's fresh batch meets the convergence criterion: its mean σ_F
    below ``force_std_threshold``, or its calibrated error bound (finite: enough labels
    calibrate it) below ``force_error_tolerance``. An exploration that proposed no
    geometry at all (committee MD whose frames all stayed below its trust window, say)
    measured nothing and meets neither: the run then stops as ``no_candidates``."""
    conv = config.convergence
    sigma: float | None
    bound: float | None
    proposed: int | None
    if isinstance(record, ExploreReport):
        sigma, bound, proposed = record.sigma_f_mean, record.error_bound, record.n_candidates
    else:
        sigma, bound = record.attack_sigma_f_mean, record.attack_error_bound
        proposed = record.attack_candidates
    if proposed == 0:
        return False
    if conv.criterion == "calibrated_error":
        tolerance = conv.force_error_tolerance
        return (
            bound is not None
            and tolerance is not None
            and math.isfinite(bound)
            and bound < tolerance
        )
    return sigma is not None and sigma < conv.force_std_threshold


def labelling_needed(
    config: RunConfig, explore: ExploreReport | None = None, select: SelectReport | None = None
) -> bool:
    """Whether a generation goes on to the next step: after exploring, while the attacked
    geometries are uncertain enough; after selecting, while enough candidates are above
    the threshold and some were selected (the rules of :func:`decide`)."""
    if explore is not None and _within_tolerance(config, explore):
        return False
    if select is not None:
        return bool(select.selected) and select.n_above >= config.convergence.min_candidates
    return True


def check_failures(
    config: RunConfig, report: LabelReport, what: str, generation: int | None
) -> None:
    """Raise :class:`LabellingError` if more of a batch's labels failed than
    ``budget.max_failure_ratio`` allows.

    Over every structure of the batch: those already in the dataset are labels an earlier
    invocation computed, so a re-run sees the ratio the first run saw (counting only the
    structures labelled now, a resumed run with one stored failure saw 1 of 1)."""
    for failure in report.failures:
        logger.warning("label failed: %s", failure)
    requested = report.requested
    if requested and report.failed / requested > config.budget.max_failure_ratio:
        raise LabellingError(
            f"{report.failed} of {requested} {what} DFT labels failed, a failure ratio of "
            f"{report.failed / requested:.3g}, above budget.max_failure_ratio = "
            f"{config.budget.max_failure_ratio}: " + "; ".join(report.failures[:3]),
            generation=generation,
            report=report,
        )


# ---------------------------------------------------------------------------------------
# One generation.


@dataclass
class GenerationOutcome:
    """What a generation hands back: its record (without timings), and whether the
    wall-time budget cut it short (then the record is incomplete and not kept; a re-run
    resumes the generation)."""

    record: GenerationRecord
    interrupted: bool = False


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.time() >= deadline


def run_generation(
    config: RunConfig,
    jobs: Jobs,
    generation: int,
    max_selected: int,
    final: bool,
    deadline: float | None = None,
) -> GenerationOutcome:
    """One generation: train its committee; unless ``final``, explore, select at most
    ``max_selected`` candidates, label and append them, and evaluate the committee's
    calibration on them. Stops early (``interrupted``) before a step that would start
    after ``deadline`` (``time.time()`` s), and where :func:`labelling_needed` says the
    generation has nothing worth labelling."""
    record = GenerationRecord(generation)
    train = jobs.train(config, generation)
    for key, value in train.items():
        setattr(record, f"train_{key}", value)
    logger.info(
        "generation %d: committee trained, validation force MAE %.4g eV/Å",
        generation,
        train.get("val_forces_mae", float("nan")),
    )
    out = GenerationOutcome(record)
    if final:
        return out
    if _past(deadline):
        return GenerationOutcome(record, interrupted=True)
    rep = jobs.explore(config, generation)
    record.attack_sigma_f_mean, record.attack_sigma_f_max = rep.sigma_f_mean, rep.sigma_f_max
    record.attack_stopped, record.attack_seeds = rep.n_stopped, rep.n_seeds
    record.attack_candidates = rep.n_candidates
    if rep.parts is not None:
        record.parts = {name: {**stats, "selected": 0} for name, stats in rep.parts.items()}
    if math.isfinite(rep.calibration_scale):
        record.calibration_scale = rep.calibration_scale
        record.attack_error_bound = rep.error_bound
    logger.info(
        "generation %d: explored, %d candidates, σF mean %.4g, max %.4g eV/Å",
        generation,
        rep.n_candidates,
        rep.sigma_f_mean,
        rep.sigma_f_max,
    )
    if not labelling_needed(config, explore=rep):
        return out
    if _past(deadline):
        return GenerationOutcome(record, interrupted=True)
    sel = jobs.select(config, generation, max_selected)
    record.selected, record.selection_threshold = len(sel.selected), sel.threshold
    record.candidates_above_threshold = sel.n_above
    record.selected_sigma_f_mean, record.selected_sigma_f_max = sel.sigma_f_mean, sel.sigma_f_max
    record.rejected = sel.rejected_counts()
    record.selection_cap = cap = min(max_selected, config.selection.max_selected)
    if rep.sources is not None and len(rep.sources) > 1:
        record.selected_sources = rep.source_of(sel.selected)
    if record.parts is not None:
        for name, stats in record.parts.items():
            stats["selected"] = (sel.parts or {}).get(name, 0)
    if len(sel.selected) < cap:
        logger.warning(
            "generation %d: %s exploration gave only %d candidates worth labelling, fewer "
            "than the %d this generation may label (rejected: %s)",
            generation,
            config.exploration.kind,
            len(sel.selected),
            cap,
            ", ".join(f"{n} {reason}" for reason, n in record.rejected.items()) or "none",
        )
    logger.info(
        "generation %d: selected %d of %d candidates above the threshold %.4g eV/Å",
        generation,
        len(sel.selected),
        sel.n_above,
        sel.threshold,
    )
    if not labelling_needed(config, select=sel):
        return out
    if _past(deadline):
        return GenerationOutcome(record, interrupted=True)
    lab = jobs.label(config, generation, sel.selected)
    logger.info(
        "generation %d: appended %d labels (%d failed, %d from an earlier run's label store)",
        generation,
        lab.added,
        lab.failed,
        lab.cached,
    )
    check_failures(config, lab, "adversarial", generation)
    calibration = jobs.evaluate(config, generation, lab.indices)
    record.labels_added, record.labels_failed, record.labels_cached = (
        lab.added,
        lab.failed,
        lab.cached,
    )
    for key, item in calibration.items():
        setattr(record, f"calibration_{key}", item)
    return out


# ---------------------------------------------------------------------------------------
# The run.


@dataclass(frozen=True)
class Finished:
    """A generation the loop has finished: its record, and whether this invocation
    computed it (False: it was read back from the run folder of a resumed run)."""

    record: GenerationRecord
    fresh: bool


def resume_note(
    layout: RunLayout, records: list[GenerationRecord], initial: LabelReport
) -> str | None:
    """What a resumed run found done, for its log and summary (None: nothing was done
    before, a fresh start): the finished generations, the labels in the dataset, the
    initial labels read back, and the invocation before this one (from ``run.lock``)."""
    known = initial.skipped_known
    if not records and not known:
        return None
    holder = run_folder.read_holder(layout.root)
    before = holder.previous if holder is not None else None
    generations = (
        f"{len(records)} finished generation(s) ({min(r.generation for r in records)}–"
        f"{max(r.generation for r in records)})"
        if records
        else "no finished generation"
    )
    return (
        f"resumed: found {generations}, {len(Dataset(layout.dataset))} labelled structures "
        f"in the dataset ({known} initial labels already there)"
        + (f"; the previous invocation: {before.describe()}" if before is not None else "")
    )


@dataclass
class ActiveLearningLoop:
    """The loop of one run, over ``jobs``. :meth:`irun` yields each finished generation;
    afterwards ``decision`` says why it stopped and :meth:`summary` sums it up.

    The run's folder must be held (:func:`advloop.flows.run_folder.hold`) by the caller."""

    config: RunConfig
    jobs: Jobs
    records: list[GenerationRecord] = field(default_factory=list)
    decision: StopDecision | None = None
    initial: LabelReport | None = None
    started: float = field(default_factory=time.time)
    resumed: str | None = None  # what a resumed run found done (None: a fresh start)
    _summary: RunSummary | None = None

    def irun(self) -> Iterator[Finished]:
        config, jobs = self.config, self.jobs
        layout = RunLayout(config.run_dir())
        config_sha = run_folder.record_config(config)
        hours = config.budget.max_wall_hours
        deadline = self.started + hours * 3600 if hours is not None else None

        def out_of_time() -> StopDecision | None:
            if hours is None:  # no deadline: never out of time (called past the deadline)
                return None
            return wall_time_stop(config, max(time.time() - self.started, hours * 3600))

        self.initial = initial = jobs.label_initial(config)
        check_failures(config, initial, "initial", None)
        logger.info(
            "initial dataset: %d structures labelled, %d failed, %d already known",
            initial.added,
            initial.failed,
            initial.skipped_known,
        )
        done = {r.generation: r for r in run_folder.read_generations(layout.root)}
        self.resumed = resume_note(layout, list(done.values()), initial)
        if self.resumed is not None:
            logger.info("%s", self.resumed)
        for g in range(config.budget.max_generations + 1):
            labels_used = sum(r.labels for r in self.records)
            final = g == config.budget.max_generations or labels_used >= config.budget.max_labels
            record = done.get(g)
            if record is not None and not final and not record.explored:
                record = None  # the last generation of a smaller budget: explore from it now
            fresh = record is None
            if record is None:
                if _past(deadline):
                    self.decision = out_of_time()
                    break
                t0, intervals = time.time(), len(jobs.clock)
                outcome = jobs.generation(
                    config, g, config.budget.max_labels - labels_used, final, deadline
                )
                if outcome.interrupted:
                    self.decision = out_of_time()
                    break
                record = outcome.record
                record.dataset_size = len(Dataset(layout.dataset))
                t1 = time.time()
                record.seconds = t1 - t0
                for key, value in split_generation(jobs.clock[intervals:], t0, t1).items():
                    setattr(record, key, value)
                record.config_sha256 = config_sha
                run_folder.append_generation(layout.root, record)
            else:
                restored = restore_generation(config, record)
                if restored:
                    logger.warning(
                        "generation %d: %d labelled structures were missing from the "
                        "dataset; appended again from the label store",
                        g,
                        restored,
                    )
            self.records.append(record)
            yield Finished(record, fresh)
            self.decision = decide(config, self.records, time.time() - self.started)
            if self.decision is not None:
                break
        if self.decision is None:  # the generation budget was lowered below a finished run's
            self.decision = StopDecision(
                "max_generations",
                "generation budget spent "
                f"(budget.max_generations = {config.budget.max_generations})",
            )
        self._summary = self._sum_up(self.decision, initial)
        run_folder.write_summary(layout.root, self._summary)

    def summary(self) -> RunSummary:
        """The run's summary (kept in ``summary.json``), once :meth:`irun` has stopped."""
        if self._summary is None:
            raise RuntimeError("the loop has not stopped yet")
        return self._summary

    def _sum_up(self, decision: StopDecision, initial: LabelReport) -> RunSummary:
        config, records = self.config, self.records
        return RunSummary(
            system=config.system.name,
            stop_reason=decision.reason,
            stop_explanation=decision.explanation,
            generations=len(records),
            final_committee_generation=records[-1].generation if records else None,
            dataset_size=len(Dataset(RunLayout(config.run_dir()).dataset)),
            labels_initial=initial.added + initial.skipped_known,
            labels_explored=sum(r.labels for r in records),
            labels_failed=initial.failed + sum(r.labels_failed or 0 for r in records),
            strategy=config.exploration.kind,
            level_of_theory=level_of_theory(config.labels),
            wall_seconds=time.time() - self.started,
            run_dir=str(config.run_dir()),
            resumed=self.resumed,
            labels_imported=sum(
                p.strategy == IMPORTED
                for p in Dataset(RunLayout(config.run_dir()).dataset).provenance()
            ),
        )

    def run(self) -> RunSummary:
        """Run (or resume) the loop to its end; the summary."""
        for _ in self.irun():
            pass
        return self.summary()
