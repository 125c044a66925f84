"""The adversarial active-learning loop as Prefect flows.

One flow run per run (named after the system) holds one sub-flow run per generation
(``<system>-gen<NNN>``): train the committee (members in parallel), attack, select,
label each selected structure in its own task (with retries and a time limit, into the
content-addressed label store), append the generation's labels to the dataset in one
task (the one writer of the HDF5 file), evaluate the committee's calibration on them.
After each generation the run decides whether to stop (:func:`advloop.flows.steps.decide`).
Schwalbe-Koda, Tan & Gómez-Bombarelli, Nat. Commun. 12, 5104 (2021).

Members train and labels are computed on the task runners of ``config.runners``
(:mod:`advloop.flows.runners`): by default in the generation flow's threads; on any other runner
(a process pool, a Dask cluster, Slurm jobs) in a sub-flow of the generation
(``<system>-gen<NNN>-training`` / ``-labelling``) with that task runner, on clusters
started once per run.

Tasks are thin wrappers over :mod:`advloop.flows.steps`; they pass configs, indices and
metrics, never models or arrays. Every flow and task run is tagged with the system's
name; the UI shows the artifacts of :mod:`advloop.flows.artifacts`, and automations can act on
the events of :mod:`advloop.flows.events`. The run's final state is Completed with the reason it
stopped as its message; calling :func:`run_active_learning` returns the summary dict.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal
from prefect.futures import PrefectFuture, as_completed
from prefect.states import Completed

from advloop.calculators.factory import level_of_theory
from advloop.flows import artifacts, events, interruptions, run_folder, runners, steps
from advloop.flows.config import ConfigError, RunConfig, ThreadsRunner
from advloop.flows.validation import validate_config
from advloop.flows.report import GenerationTable
from advloop.flows.timing import Timed, split_generation, timed
from advloop.potentials.dataset import Dataset
from advloop.potentials.run_layout import INITIAL, RunLayout

_task = task(cache_policy=NO_CACHE)



def _label_task_name() -> str:
    from prefect.runtime import task_run

    p = task_run.parameters
    return (f"label-initial-{p['index']}" if p["generation"] == INITIAL
            else f"label-gen{p['generation']}-candidate{p['index']}")


def _labelling_flow_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    batch = "initial" if p["generation"] == INITIAL else f"gen{p['generation']:03d}"
    return f"{p['config'].system.name}-{batch}-labelling"


prepare_initial = _task(steps.prepare_initial, name="prepare-initial-structures")
append_initial = _task(steps.append_initial, name="append-initial-labels")
# The generation's steps report the interval their bodies ran in, so that the flow can
# tell compute from orchestration (flows/timing.py).
train_member = _task(timed("training", steps.train_step), name="train-member",
                     task_run_name="train-gen{generation}-member{member}")
explore = _task(timed("exploration", steps.explore_step), name="explore",
                task_run_name="explore-gen{generation}")
select = _task(timed("selection", steps.select_step), name="select-candidates",
               task_run_name="select-gen{generation}")
label_structure = _task(timed("labelling", steps.label_one), name="label-structure",
                        task_run_name=_label_task_name)
append_labels = _task(timed("labelling", steps.append_labels), name="append-labels",
                      task_run_name="append-labels-gen{generation}")
evaluate = _task(timed("labelling", steps.evaluate_step), name="evaluate-calibration",
                 task_run_name="evaluate-gen{generation}")


def _check_failures(config: RunConfig, report: steps.LabelReport, what: str) -> None:
    # Over every structure of the step: those already in the dataset are labels an earlier
    # invocation computed, so a re-run sees the ratio the first run saw (counting only
    # the structures labelled now, a resumed run with one stored failure saw 1 of 1).
    requested = report.requested
    if requested and report.failed / requested > config.budget.max_failure_ratio:
        raise steps.LabellingError(
            f"{report.failed} of {requested} {what} DFT labels failed, a failure ratio of "
            f"{report.failed / requested:.3g}, above budget.max_failure_ratio = "
            f"{config.budget.max_failure_ratio}: " + "; ".join(report.failures[:3]))


def _enforce_failures(config: RunConfig, report: steps.LabelReport, what: str,
                      generation: int | None, logger: logging.LoggerAdapter | None = None) -> None:
    """Log each failed label to ``logger``, then :func:`_check_failures`, emitting
    ``advloop.labels.failure-ratio-exceeded`` first if the run stops."""
    for failure in report.failures if logger is not None else ():
        logger.warning("label failed: %s", failure)
    try:
        _check_failures(config, report, what)
    except steps.LabellingError:
        events.emit(events.failure_ratio_event(
            config.system.name, generation, report.failed, report.requested,
            config.budget.max_failure_ratio, report.failures))
        raise


def _run(step, clock: list[Timed], *args):
    """Call a timed task, keep its interval, return its value."""
    result = step(*args)
    clock.append(result)
    return result.value


def _train_committee(config: RunConfig, generation: int, clock: list[Timed],
                     table: GenerationTable) -> dict[str, float]:
    n = config.committee.n_members
    table.training_started(generation, n)
    futures = [train_member.submit(config, generation, k) for k in range(n)]
    member = {id(f): k for k, f in enumerate(futures)}
    results = []
    for done, future in enumerate(as_completed(futures), start=1):
        results.append(future.result())
        table.member_trained(generation, member[id(future)], done, n, results[-1].value)
    clock.extend(results)
    metrics = [r.value for r in results]
    keys = ("val_forces_mae", "val_energy_mae", "seconds", "epochs")
    mean = {k: sum(m[k] for m in metrics) / len(metrics) for k in keys if all(k in m for m in metrics)}
    # members retried at a lower learning rate after their training diverged (a total)
    return {**mean, "divergence_retries": int(sum(m.get("divergence_retries", 0) for m in metrics))}


def _label_selected(config: RunConfig, generation: int, selected: list[int], clock: list[Timed],
                    table: GenerationTable, logger: logging.LoggerAdapter) -> list[steps.LabelResult]:
    """One labelling task per selected candidate, at most ``compute.label_workers`` at once;
    progress goes to the UI and the local reporter as each finishes. A task that fails for
    good (after its retries) is logged and counted; its label stays missing."""
    compute = config.compute
    label = label_structure.with_options(retries=compute.label_retries,
                                         retry_delay_seconds=compute.label_retry_delay_seconds,
                                         timeout_seconds=compute.label_timeout_seconds)
    progress = artifacts.LabelProgress(config.system.name, generation, len(selected))
    table.labelled(generation, 0, len(selected))
    pending, running = list(selected), []
    results: list[steps.LabelResult] = []
    failed = 0
    while pending or running:
        while pending and len(running) < compute.label_workers:
            running.append(label.submit(config, generation, pending.pop(0)))
        future: PrefectFuture = next(as_completed(running))
        running.remove(future)
        try:
            result = future.result()
        except Exception as err:  # the task's final state; its own log holds the traceback
            if interruptions.is_disk_full(err):
                raise
            failed += 1
            logger.warning("labelling task %s failed after its retries: %s", future.task_run_id, err)
        else:
            clock.append(result)
            results.append(result.value)
            failed += not result.value.ok
        done = len(selected) - len(pending) - len(running)
        progress.update(done, failed)
        table.labelled(generation, done, len(selected), failed)
    return results


@flow(name="advloop-training", flow_run_name="{config.system.name}-gen{generation:03d}-training",
      log_prints=False)
def train_committee(config: RunConfig, generation: int,
                    table: GenerationTable | None = None) -> tuple[dict[str, float], list[Timed]]:
    """A generation's members trained on the task runner of ``runners.training``: the
    committee's mean metrics and the intervals the members trained in."""
    _tag_flow_run(config.system.name)
    clock: list[Timed] = []
    return _train_committee(config, generation, clock, table or GenerationTable()), clock


@flow(name="advloop-labelling", flow_run_name=_labelling_flow_name, log_prints=False)
def label_candidates(config: RunConfig, generation: int, selected: list[int],
                     table: GenerationTable | None = None
                     ) -> tuple[list[steps.LabelResult], list[Timed]]:
    """A generation's ``selected`` candidates (or initial structures, for ``INITIAL``)
    labelled on the task runner of ``runners.labelling`` into the label store: the
    results and the intervals they ran in."""
    _tag_flow_run(config.system.name)
    clock: list[Timed] = []
    results = _label_selected(config, generation, selected, clock, table or GenerationTable(),
                              get_run_logger())
    return results, clock


def _phase_runner(config: RunConfig, phase: runners.Phase,
                  clusters: runners.ClusterAddresses | None):
    """The task runner of a phase's sub-flow; None: the phase's tasks run in the
    generation flow's own thread pool (``threads``, no sub-flow)."""
    settings = getattr(config.runners, phase)
    if isinstance(settings, ThreadsRunner):
        return None
    runners.check_api_reachable(config)
    return runners.task_runner(settings, phase, getattr(clusters, phase) if clusters else None)


def _train(config: RunConfig, generation: int, clock: list[Timed], table: GenerationTable,
           clusters: runners.ClusterAddresses | None) -> dict[str, float]:
    runner = _phase_runner(config, "training", clusters)
    if runner is None:
        return _train_committee(config, generation, clock, table)
    with runners.api_for_workers():
        metrics, intervals = train_committee.with_options(task_runner=runner)(
            config, generation, table)
    clock.extend(intervals)
    return metrics


def _label(config: RunConfig, generation: int, selected: list[int], clock: list[Timed],
           table: GenerationTable, logger: logging.LoggerAdapter,
           clusters: runners.ClusterAddresses | None) -> list[steps.LabelResult]:
    runner = _phase_runner(config, "labelling", clusters)
    if runner is None:
        return _label_selected(config, generation, selected, clock, table, logger)
    with runners.api_for_workers():
        results, intervals = label_candidates.with_options(task_runner=runner)(
            config, generation, selected, table)
    clock.extend(intervals)
    return results


def _label_initial(config: RunConfig, table: GenerationTable, logger: logging.LoggerAdapter,
                   clusters: runners.ClusterAddresses | None) -> steps.LabelReport:
    """The initial dataset, labelled as a generation's candidates are: one task per
    structure not yet in it, on the labelling runner, then one append."""
    todo = prepare_initial(config)
    if todo:
        _label(config, INITIAL, todo, [], table, logger, clusters)
    return append_initial(config)


@dataclass
class GenerationOutcome:
    """What a generation sub-flow hands back: its record (without timings), the intervals
    its steps ran in, and whether the wall-time budget cut it short (then the record is
    incomplete and not kept; a re-run resumes the generation)."""

    record: dict
    clock: list[Timed] = field(default_factory=list)
    interrupted: bool = False


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.time() >= deadline


@flow(name="advloop-generation", flow_run_name="{config.system.name}-gen{generation:03d}",
      log_prints=False)
def run_generation(config: RunConfig, generation: int, max_selected: int, final: bool,
                   deadline: float | None = None,
                   table: GenerationTable | None = None,
                   clusters: runners.ClusterAddresses | None = None) -> GenerationOutcome:
    """One generation: train its committee; unless ``final``, explore, select at most
    ``max_selected`` candidates, label each, append them and evaluate calibration.
    Stops early (``interrupted``) before a step that would start after ``deadline``
    (``time.time()`` s). Training and labelling run on the task runners of
    ``config.runners``, as sub-flows unless ``threads``, on the run's Dask ``clusters``
    (:func:`advloop.flows.runners.open_clusters`; None: a phase starts its own)."""
    _tag_flow_run(config.system.name)
    logger = get_run_logger()
    table = table or GenerationTable()
    clock: list[Timed] = []
    train = _train(config, generation, clock, table, clusters)
    out = GenerationOutcome({"generation": generation, **{f"train_{k}": v for k, v in train.items()}}, clock)
    record = out.record
    logger.info("committee trained: validation force MAE %.4g eV/Å", train.get("val_forces_mae", float("nan")))
    if final:
        return out
    if _past(deadline):
        return replace(out, interrupted=True)
    rep = _run(explore, clock, config, generation)
    record.update(attack_sigma_f_mean=rep.sigma_f_mean, attack_sigma_f_max=rep.sigma_f_max,
                  attack_stopped=rep.n_stopped, attack_seeds=rep.n_seeds,
                  attack_candidates=rep.n_candidates)
    logger.info("explored: %d candidates, σF mean %.4g, max %.4g eV/Å", rep.n_candidates,
                rep.sigma_f_mean, rep.sigma_f_max)
    if not steps.labelling_needed(config, explore=rep):
        return out
    if _past(deadline):
        return replace(out, interrupted=True)
    sel = _run(select, clock, config, generation, max_selected)
    record.update(selected=len(sel.selected), selection_threshold=sel.threshold,
                  candidates_above_threshold=sel.n_above, selected_sigma_f_mean=sel.sigma_f_mean,
                  selected_sigma_f_max=sel.sigma_f_max, rejected=sel.rejected_counts())
    logger.info("selected %d of %d candidates above the threshold %.4g eV/Å", len(sel.selected),
                sel.n_above, sel.threshold)
    if not steps.labelling_needed(config, select=sel):
        return out
    if _past(deadline):
        return replace(out, interrupted=True)
    results = _label(config, generation, sel.selected, clock, table, logger, clusters)
    lab = replace(_run(append_labels, clock, config, generation, sel.selected),
                  cached=sum(r.cached for r in results))
    logger.info("appended %d labels (%d failed, %d from an earlier run's label store)",
                lab.added, lab.failed, lab.cached)
    _enforce_failures(config, lab, "adversarial", generation, logger)
    calibration = _run(evaluate, clock, config, generation, lab.indices)
    record.update(labels_added=lab.added, labels_failed=lab.failed, labels_cached=lab.cached,
                  **{f"calibration_{k}": v for k, v in calibration.items()})
    return out


def _tag_flow_run(tag: str) -> None:
    """Add ``tag`` to the current flow run (the tags of a flow run are fixed when it is
    created; this one's name is known only from its parameters).

    Flow runs are tagged one by one rather than inside ``prefect.tags``, whose tags every
    task run would inherit: a tagged task run takes and releases a slot of the tag's
    concurrency limit on the server (two writes per task), which on the embedded SQLite
    server collide with the server's own writes ("database is locked") and cost a 2 s
    client retry each."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    current = list(flow_run.tags)
    if tag not in current:
        with get_client(sync_client=True) as client:
            client.update_flow_run(UUID(flow_run.id), tags=[*current, tag])


@flow(name="advloop-active-learning", flow_run_name="{config.system.name}", log_prints=False)
def run_active_learning(config: RunConfig, table: GenerationTable | None = None) -> dict:
    """Run (or resume) the loop for a validated config; returns the run summary.

    The run holds its folder's lock throughout (:func:`advloop.flows.run_folder.hold`: a second
    run of the folder is refused with :class:`~advloop.flows.run_folder.RunFolderBusy`) and
    refuses, with :class:`~advloop.flows.config.ConfigError`, a resume whose data settings differ
    from the folder's (:func:`advloop.flows.run_folder.resume_problems`).

    The flow run ends Completed with the stop explanation as its message (the summary is
    its result); too many failed labels fail it with :class:`advloop.flows.steps.LabellingError`,
    a full disk with :class:`advloop.flows.interruptions.DiskFullError`. SIGINT (Ctrl-C) ends it
    Cancelled and SIGTERM (a batch system's preemption) Crashed, each with a message that
    says what is kept and how to resume (:func:`advloop.flows.interruptions.interrupted_message`).
    """
    layout = RunLayout(config.run_dir())
    try:
        with run_folder.hold(layout.root):
            problems = run_folder.resume_problems(config)
            if problems:
                raise ConfigError(str(layout.root), problems)
            run_folder.write_fingerprint(config)
            return _run_loop(config, layout, table or GenerationTable())
    except (KeyboardInterrupt, TerminationSignal) as err:
        if interruptions.requested_by_runner(err):
            raise  # a cancellation asked for in the UI: Prefect's engine ends it Cancelled
        return interruptions.interrupted_state(err, layout)  # type: ignore[return-value]
    except Exception as err:
        if interruptions.is_disk_full(err):
            raise interruptions.DiskFullError(interruptions.disk_full_message(err, layout)) from err
        raise


def _run_loop(config: RunConfig, layout: RunLayout, table: GenerationTable) -> Completed:
    logger = get_run_logger()
    system = config.system.name
    config_sha = run_folder.record_config(config)
    t_start = time.time()
    hours = config.budget.max_wall_hours
    deadline = t_start + hours * 3600 if hours is not None else None
    _tag_flow_run(system)

    with runners.open_clusters(config) as clusters:
        initial = _label_initial(config, table, logger, clusters)
        _enforce_failures(config, initial, "initial", None, logger)
        logger.info("initial dataset: %d structures labelled, %d failed, %d already known",
                    initial.added, initial.failed, initial.skipped_known)

        done = {r["generation"]: r for r in steps.read_generation_records(layout.root)}
        records: list[dict] = []
        decision: steps.StopDecision | None = None
        table.header()
        for g in range(config.budget.max_generations + 1):
            labels_used = sum(r.get("labels_added", 0) for r in records)
            final = g == config.budget.max_generations or labels_used >= config.budget.max_labels
            record = done.get(g)
            if record is not None and not final and steps.only_trained(record):
                record = None  # the last generation of a smaller budget: explore from it now
            fresh = record is None
            if fresh:
                if _past(deadline):
                    decision = steps.wall_time_stop(config, max(time.time() - t_start, hours * 3600))
                    break
                t0 = time.time()
                outcome = run_generation(config, g, config.budget.max_labels - labels_used, final,
                                         deadline, table, clusters)
                if outcome.interrupted:
                    decision = steps.wall_time_stop(config, max(time.time() - t_start, hours * 3600))
                    break
                record = outcome.record
                record["dataset_size"] = len(Dataset(layout.dataset))
                t1 = time.time()
                record.update(seconds=t1 - t0, **split_generation(outcome.clock, t0, t1),
                              config_sha256=config_sha)
                steps.append_generation_record(config, record)
            else:
                restored = steps.restore_generation(config, record)
                if restored:
                    logger.warning("generation %d: %d labelled structures were missing from the "
                                   "dataset; appended again from the label store", g, restored)
            records.append(record)
            table.row(record)
            logger.info("generation %d: %s", g, json.dumps(record))
            if fresh:
                artifacts.publish_generation_table(system, records)
                events.emit(events.generation_finished_event(system, record))
            decision = steps.decide(config, records, time.time() - t_start)
            if decision is not None:
                break
    if decision is None:  # the generation budget was lowered below a finished run's
        decision = steps.StopDecision("max_generations", "generation budget spent "
                                      f"(budget.max_generations = {config.budget.max_generations})")

    summary = {
        "system": system,
        "stop_reason": decision.reason,
        "stop_explanation": decision.explanation,
        "generations": len(records),
        "final_committee_generation": records[-1]["generation"] if records else None,
        "dataset_size": len(Dataset(layout.dataset)),
        "labels_initial": initial.added + initial.skipped_known,
        "labels_explored": sum(r.get("labels_added", 0) for r in records),
        "labels_failed": initial.failed + sum(r.get("labels_failed", 0) for r in records),
        "strategy": config.exploration.kind,
        "level_of_theory": level_of_theory(config.labels),
        "wall_seconds": time.time() - t_start,
        "run_dir": str(layout.root),
    }
    run_folder.write_atomic(layout.summary, json.dumps(summary, indent=2))
    table.footer(summary)
    artifacts.publish_summary(summary, records, config.convergence.force_std_threshold)
    events.emit(events.run_finished_event(summary))
    logger.info("stopped: %s", summary["stop_explanation"])
    return Completed(message=summary["stop_explanation"], data=summary)


def _config_file_run_name() -> str:
    """``<system>-<UTC date and time>`` for a run of a config file (a scheduled run)."""
    import yaml
    from prefect.runtime import flow_run

    path = Path(flow_run.parameters["config_path"])
    try:
        name = str(yaml.safe_load(path.read_text())["system"]["name"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        name = path.stem  # the flow body reports what is wrong with the file
    return f"{name}-{time.strftime('%Y%m%dT%H%MZ', time.gmtime())}"


def completed_with_reason(state) -> Completed:
    """A Completed state carrying a finished run's summary and its stop message, so that
    an entrypoint flow that wraps :func:`run_active_learning` shows why the run stopped."""
    return Completed(message=state.message, data=state.result())


@flow(name="advloop-run-config", flow_run_name=_config_file_run_name)
def run_config_file(config_path: str, output_dir: str | None = None) -> dict:
    """Deployment entrypoint: validate a config file, then run it (its state message says
    why the run stopped, as the run's own does)."""
    state = run_active_learning(validate_config(Path(config_path), output_dir), return_state=True)
    if not state.is_completed():
        return state  # type: ignore[return-value]  # interrupted: its message says so
    return completed_with_reason(state)  # type: ignore[return-value]
