"""The active-learning loop as Prefect flows: the loop of :mod:`advloop.flows.loop`, with
its steps as tasks.

One flow run per run (named after the system) holds one sub-flow run per generation
(``<system>-gen<NNN>``) that runs :func:`advloop.flows.loop.run_generation` with
:class:`PrefectJobs`: the committee's members train in parallel tasks, the attack and the
selection are a task each, each selected structure is labelled in its own task (with
retries and a time limit, into the content-addressed label store), one task appends the
generation's labels to the dataset (the one writer of the HDF5 file) and one evaluates
the committee's calibration on them. The loop decides when the run stops
(:func:`advloop.flows.loop.decide`). Schwalbe-Koda, Tan & Gómez-Bombarelli, Nat. Commun.
12, 5104 (2021).

Members train and labels are computed on the task runners of ``config.runners``
(:mod:`advloop.flows.runners`): by default in the generation flow's threads; on any other runner
(a process pool, a Dask cluster, Slurm jobs) in a sub-flow of the generation
(``<system>-gen<NNN>-training`` / ``-labelling``) with that task runner, on clusters
started once per run.

Tasks are thin wrappers over :mod:`advloop.flows.steps`; they pass configs, indices,
structures and metrics, never models or datasets. Every flow run is tagged with the
system's name. The observers of the loop's records are the terminal table
(:mod:`advloop.flows.report`), the UI's artifacts (:mod:`advloop.flows.artifacts`) and
the events automations act on (:mod:`advloop.flows.events`). The run's final state is
Completed with the reason it stopped as its message; calling :func:`run_active_learning`
returns the summary as a dict (``summary.json``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import ParamSpec, TypeVar
from uuid import UUID

from prefect import Task, flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal
from prefect.futures import PrefectFuture, as_completed
from prefect.states import Completed, State

from advloop.flows import artifacts, durations, events, interruptions, run_folder, runners, steps
from advloop.flows.config import RunConfig, ThreadsRunner
from advloop.flows.loop import (
    ActiveLearningLoop,
    GenerationOutcome,
    mean_member_metrics,
    run_generation,
)
from advloop.flows.progress import UI_ONLY, Throttled
from advloop.flows.report import GenerationTable, labels_line, member_line
from advloop.flows.run_folder import INITIAL, RunLayout
from advloop.flows.timing import Timed, timed
from advloop.flows.validation import validate_config

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _task(
    fn: Callable[_P, _R], name: str, task_run_name: str | Callable[[], str] | None = None
) -> Task[_P, _R]:
    """``fn`` as a Prefect task, never caching its result."""
    return task(name=name, task_run_name=task_run_name, cache_policy=NO_CACHE)(fn)


def _label_task_name() -> str:
    from prefect.runtime import task_run

    p = task_run.parameters
    return (
        f"label-initial-{p['index']}"
        if p["generation"] == INITIAL
        else f"label-gen{p['generation']}-candidate{p['index']}"
    )


def _labelling_flow_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    batch = "initial" if p["generation"] == INITIAL else f"gen{p['generation']:03d}"
    return f"{p['config'].system.name}-{batch}-labelling"


prepare_initial = _task(steps.prepare_initial, name="prepare-initial-structures")
append_initial = _task(steps.append_initial, name="append-initial-labels")
# The generation's steps report the interval their bodies ran in, so that the loop can
# tell compute from orchestration (flows/timing.py).
train_member = _task(
    timed("training", steps.train_step),
    name="train-member",
    task_run_name="train-gen{generation}-member{member}",
)
explore = _task(
    timed("exploration", steps.explore_step),
    name="explore",
    task_run_name="explore-gen{generation}",
)
select = _task(
    timed("selection", steps.select_step),
    name="select-candidates",
    task_run_name="select-gen{generation}",
)
label_structure = _task(
    timed("labelling", steps.label_one), name="label-structure", task_run_name=_label_task_name
)
append_labels = _task(
    timed("labelling", steps.append_labels),
    name="append-labels",
    task_run_name="append-labels-gen{generation}",
)
evaluate = _task(
    timed("labelling", steps.evaluate_step),
    name="evaluate-calibration",
    task_run_name="evaluate-gen{generation}",
)


def _run(step, clock: list[Timed], *args):
    """Call a timed task, keep its interval, return its value."""
    result = step(*args)
    clock.append(result)
    return result.value


def _train_committee(
    config: RunConfig, generation: int, clock: list[Timed], table: GenerationTable
) -> dict[str, float]:
    n = config.committee.n_members
    table.training_started(generation, n)
    futures = [train_member.submit(config, generation, k) for k in range(n)]
    member = {id(f): k for k, f in enumerate(futures)}
    results = []
    logger = get_run_logger()
    for done, future in enumerate(as_completed(futures), start=1):
        results.append(future.result())
        table.member_trained(generation, member[id(future)], done, n, results[-1].value)
        line = member_line(generation, member[id(future)], done, n, results[-1].value)
        logger.info("%s", line, extra=UI_ONLY)
    clock.extend(results)
    return mean_member_metrics([r.value for r in results])


def _label_selected(
    config: RunConfig,
    generation: int,
    selected: list[int],
    clock: list[Timed],
    table: GenerationTable,
    logger: logging.Logger | logging.LoggerAdapter,
) -> list[steps.LabelResult]:
    """One labelling task per selected candidate, at most ``compute.label_workers`` at once;
    progress goes to the UI and the local reporter as each finishes. A task that fails for
    good (after its retries) is logged and counted; its label stays missing."""
    compute = config.compute
    label = label_structure.with_options(
        retries=compute.label_retries,
        retry_delay_seconds=compute.label_retry_delay_seconds,
        timeout_seconds=compute.label_timeout_seconds,
    )
    progress = artifacts.LabelProgress(config.system.name, generation, len(selected))
    table.labelled(generation, 0, len(selected))
    started = time.monotonic()
    # the lines the terminal shows, in the UI's log: each label that finishes, at most
    # one line per PROGRESS_SECONDS but the last
    throttled = Throttled(str, logger=logger, extra=UI_ONLY)
    structures = dict(zip(selected, steps.selected_structures(config, generation, selected)))
    pending = list(selected)
    running: list[PrefectFuture[Timed[steps.LabelResult]]] = []
    results: list[steps.LabelResult] = []
    failed = 0
    while pending or running:
        while pending and len(running) < compute.label_workers:
            index = pending.pop(0)
            running.append(label.submit(config, generation, index, structures[index]))
        future: PrefectFuture = next(as_completed(running))
        running.remove(future)
        try:
            result = future.result()
        except Exception as err:  # the task's final state; its own log holds the traceback
            if interruptions.is_disk_full(err):
                raise
            failed += 1
            logger.warning(
                "labelling task %s failed after its retries: %s", future.task_run_id, err
            )
        else:
            clock.append(result)
            results.append(result.value)
            failed += not result.value.ok
        done = len(selected) - len(pending) - len(running)
        eta = durations.eta(done, len(selected), time.monotonic() - started)
        progress.update(done, failed, eta)
        table.labelled(generation, done, len(selected), failed, eta)
        line = labels_line(generation, done, len(selected), failed, eta)
        if done == len(selected):
            logger.info("%s", line, extra=UI_ONLY)
        else:
            throttled(line)
    return results


@flow(
    name="advloop-training",
    flow_run_name="{config.system.name}-gen{generation:03d}-training",
    log_prints=False,
)
def train_committee(
    config: RunConfig, generation: int, table: GenerationTable | None = None
) -> tuple[dict[str, float], list[Timed]]:
    """A generation's members trained on the task runner of ``runners.training``: the
    committee's mean metrics and the intervals the members trained in."""
    _tag_flow_run(config.system.name)
    clock: list[Timed] = []
    return _train_committee(config, generation, clock, table or GenerationTable()), clock


@flow(name="advloop-labelling", flow_run_name=_labelling_flow_name, log_prints=False)
def label_candidates(
    config: RunConfig, generation: int, selected: list[int], table: GenerationTable | None = None
) -> tuple[list[steps.LabelResult], list[Timed]]:
    """A generation's ``selected`` candidates (or initial structures, for ``INITIAL``)
    labelled on the task runner of ``runners.labelling`` into the label store: the
    results and the intervals they ran in."""
    _tag_flow_run(config.system.name)
    clock: list[Timed] = []
    results = _label_selected(
        config, generation, selected, clock, table or GenerationTable(), get_run_logger()
    )
    return results, clock


def _phase_runner(
    config: RunConfig, phase: runners.Phase, clusters: runners.ClusterAddresses | None
):
    """The task runner of a phase's sub-flow; None: the phase's tasks run in the
    generation flow's own thread pool (``threads``, no sub-flow)."""
    settings = getattr(config.runners, phase)
    if isinstance(settings, ThreadsRunner):
        return None
    runners.check_api_reachable(config)
    return runners.task_runner(settings, phase, getattr(clusters, phase) if clusters else None)


class PrefectJobs:
    """The loop's jobs (:class:`advloop.flows.loop.Jobs`) as Prefect tasks and flows, on
    the task runners of ``config.runners`` and the run's Dask ``clusters``
    (:func:`advloop.flows.runners.open_clusters`; None: a phase starts its own). The
    ``table`` shows members and labels as they finish."""

    def __init__(self, table: GenerationTable, clusters: runners.ClusterAddresses | None = None):
        self.table, self.clusters = table, clusters
        self.clock: list[Timed] = []

    def label_initial(self, config: RunConfig) -> steps.LabelReport:
        """The initial dataset, labelled as a generation's candidates are: one task per
        structure not yet in it, on the labelling runner, then one append."""
        todo = prepare_initial(config)
        if todo:
            self._label(config, INITIAL, todo)
        return append_initial(config)

    def train(self, config: RunConfig, generation: int) -> dict[str, float]:
        runner = _phase_runner(config, "training", self.clusters)
        if runner is None:
            return _train_committee(config, generation, self.clock, self.table)
        with runners.api_for_workers():
            metrics, intervals = train_committee.with_options(task_runner=runner)(
                config, generation, self.table
            )
        self.clock.extend(intervals)
        return metrics

    def explore(self, config: RunConfig, generation: int) -> steps.ExploreReport:
        return _run(explore, self.clock, config, generation)

    def select(self, config: RunConfig, generation: int, max_selected: int) -> steps.SelectReport:
        return _run(select, self.clock, config, generation, max_selected)

    def _label(
        self, config: RunConfig, generation: int, selected: list[int]
    ) -> list[steps.LabelResult]:
        runner = _phase_runner(config, "labelling", self.clusters)
        if runner is None:
            return _label_selected(
                config, generation, selected, self.clock, self.table, get_run_logger()
            )
        with runners.api_for_workers():
            results, intervals = label_candidates.with_options(task_runner=runner)(
                config, generation, selected, self.table
            )
        self.clock.extend(intervals)
        return results

    def label(self, config: RunConfig, generation: int, selected: list[int]) -> steps.LabelReport:
        results = self._label(config, generation, selected)
        return replace(
            _run(append_labels, self.clock, config, generation, selected),
            cached=sum(r.cached for r in results),
        )

    def evaluate(
        self, config: RunConfig, generation: int, indices: list[int]
    ) -> dict[str, float | list[float]]:
        return _run(evaluate, self.clock, config, generation, indices)

    def generation(
        self,
        config: RunConfig,
        generation: int,
        max_selected: int,
        final: bool,
        deadline: float | None,
    ) -> GenerationOutcome:
        return generation_flow(config, generation, max_selected, final, deadline, self)


@flow(
    name="advloop-generation",
    flow_run_name="{config.system.name}-gen{generation:03d}",
    log_prints=False,
)
def generation_flow(
    config: RunConfig,
    generation: int,
    max_selected: int,
    final: bool,
    deadline: float | None,
    jobs: PrefectJobs,
) -> GenerationOutcome:
    """One generation (:func:`advloop.flows.loop.run_generation`) as a flow run of its own."""
    _tag_flow_run(config.system.name)
    return run_generation(config, jobs, generation, max_selected, final, deadline)


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
    Cancelled, and SIGTERM (a batch system's preemption) and a Python system exit call (a
    calculator calling ``sys.exit()``) Crashed, each with a message that says what is kept
    and how to resume (:func:`advloop.flows.interruptions.interrupted_message`).
    """
    layout = RunLayout(config.run_dir())
    try:
        with run_folder.open_run(config):
            # Prefect makes a returned state the run's own: callers get its result, the
            # summary dict
            return _run_loop(config, table or GenerationTable())  # type: ignore[return-value]
    except (KeyboardInterrupt, TerminationSignal, SystemExit) as err:
        if interruptions.requested_by_runner(err):
            raise  # a cancellation asked for in the UI: Prefect's engine ends it Cancelled
        return _stopped(config, interruptions.interrupted_state(err, layout))  # type: ignore[return-value]
    except steps.LabellingError as err:
        _emit_failure_event(config, err)
        _publish_ending(config, "failed", f"{err} ({_resume_hint(layout)})")
        raise
    except Exception as err:
        interrupt = interruptions.interruption_in(err)
        if interrupt is not None and not interruptions.requested_by_runner(interrupt):
            # the signal landed inside Prefect's engine, which raised its own error for it
            return _stopped(config, interruptions.interrupted_state(interrupt, layout))  # type: ignore[return-value]
        if interruptions.is_disk_full(err):
            message = interruptions.disk_full_message(err, layout)
            _publish_ending(config, "failed", message)
            raise interruptions.DiskFullError(message) from err
        _publish_ending(config, "failed", f"{type(err).__name__}: {err} ({_resume_hint(layout)})")
        raise


def _resume_hint(layout: RunLayout) -> str:
    return f"{interruptions.kept(layout)} are kept in {layout.root}: re-run to resume"


def _stopped(config: RunConfig, state: State) -> State:
    """``state`` (a run stopped by a signal), its message published as the summary."""
    _publish_ending(config, "stopped", state.message or "stopped by a signal")
    return state


def _emit_failure_event(config: RunConfig, err: steps.LabellingError) -> None:
    """``advloop.labels.failure-ratio-exceeded`` for a run stopped by too many failed labels."""
    if err.report is not None:
        report = err.report
        events.emit(
            events.failure_ratio_event(
                config.system.name,
                err.generation,
                report.failed,
                report.requested,
                config.budget.max_failure_ratio,
                report.failures,
            )
        )


def _live(config: RunConfig, state: str, detail: str) -> artifacts.LiveState:
    return artifacts.LiveState(
        system=config.system.name,
        state=state,
        detail=detail,
        max_generations=config.budget.max_generations,
        max_labels=config.budget.max_labels,
        threshold=config.convergence.force_std_threshold,
    )


def _publish_ending(config: RunConfig, state: str, detail: str) -> None:
    """The summary artifact of a run that ends without finishing (failed, stopped by a
    signal), so that the UI says what happened and what is kept; never raises over the
    error that ended the run."""
    try:
        artifacts.publish_live_summary(
            _live(config, state, detail), run_folder.read_generations(config.run_dir())
        )
    except Exception as err:  # the server may be what failed
        logging.getLogger(__name__).warning("could not publish the run's summary: %s", err)


def _run_loop(config: RunConfig, table: GenerationTable) -> State:
    logger = get_run_logger()
    system = config.system.name
    _tag_flow_run(system)
    with runners.open_clusters(config) as clusters:
        loop = ActiveLearningLoop(config, PrefectJobs(table, clusters))
        for done in loop.irun():
            table.row(done.record)
            logger.info(
                "generation %d: %s", done.record.generation, json.dumps(done.record.to_dict())
            )
            if done.fresh:
                artifacts.publish_generation_table(system, loop.records)
                artifacts.publish_live_summary(
                    _live(config, "running", f"generation {done.record.generation} finished"),
                    loop.records,
                )
                events.emit(events.generation_finished_event(system, done.record))
    summary = loop.summary()
    table.footer(summary)
    artifacts.publish_summary(summary, loop.records, config.convergence.force_std_threshold)
    events.emit(events.run_finished_event(summary))
    logger.info("stopped: %s", summary.stop_explanation)
    return Completed(message=summary.stop_explanation, data=summary.to_dict())


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


def completed_with_reason(state: State) -> State:
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
