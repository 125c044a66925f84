"""The adversarial active-learning loop as a Prefect flow.

Each generation: train the committee (members in parallel), attack, decide whether to
stop, select, label with DFT, append. Schwalbe-Koda, Tan & Gómez-Bombarelli, Nat.
Commun. 12, 5104 (2021). Tasks are thin wrappers over :mod:`flows.steps`; they pass
configs, indices and metrics, never models or arrays.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from calculators.factory import level_of_theory
from flows import steps
from flows.config import RunConfig, validate_config
from flows.report import GenerationTable
from flows.timing import Timed, split_generation, timed
from potentials.dataset import Dataset
from potentials.run_layout import RunLayout

_task = task(cache_policy=NO_CACHE)

label_initial = _task(steps.initial_dataset, name="label-initial-dataset")
# The generation's steps report the interval their bodies ran in, so that the flow can
# tell compute from orchestration (flows/timing.py).
train_member = _task(timed("training", steps.train_step), name="train-member",
                     task_run_name="train-gen{generation}-member{member}")
explore = _task(timed("exploration", steps.explore_step), name="explore",
                task_run_name="explore-gen{generation}")
select = _task(timed("selection", steps.select_step), name="select-candidates",
               task_run_name="select-gen{generation}")
label = _task(timed("labelling", steps.label_step), name="label-candidates",
              task_run_name="label-gen{generation}")


def _check_failures(config: RunConfig, report: steps.LabelReport, what: str) -> None:
    computed = report.requested - report.skipped_known
    if computed and report.failed / computed > config.budget.max_failure_ratio:
        raise steps.LabellingError(
            f"{report.failed} of {computed} {what} DFT labels failed, above "
            f"budget.max_failure_ratio = {config.budget.max_failure_ratio}: "
            + "; ".join(report.failures[:3]))


def _train_committee(config: RunConfig, generation: int,
                     clock: list[Timed]) -> dict[str, float]:
    futures = [train_member.submit(config, generation, k) for k in range(config.committee.n_members)]
    results = [f.result() for f in futures]
    clock.extend(results)
    metrics = [r.value for r in results]
    keys = ("val_forces_mae", "val_energy_mae", "seconds", "epochs")
    return {k: sum(m[k] for m in metrics) / len(metrics) for k in keys if all(k in m for m in metrics)}


def _run(step, clock: list[Timed], *args):
    """Call a timed task, keep its interval, return its value."""
    result = step(*args)
    clock.append(result)
    return result.value


@flow(name="advloop-active-learning", flow_run_name="{config.system.name}", log_prints=False)
def run_active_learning(config: RunConfig, table: GenerationTable | None = None) -> dict:
    """Run (or resume) the loop for a validated config; returns the run summary."""
    logger = get_run_logger()
    layout = RunLayout(config.run_dir())
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.config.write_text(config.to_yaml())
    table = table or GenerationTable()
    t_start = time.perf_counter()

    initial = label_initial(config)
    _check_failures(config, initial, "initial")
    logger.info("initial dataset: %d structures labelled, %d failed, %d already known",
                initial.added, initial.failed, initial.skipped_known)

    done = {r["generation"]: r for r in steps.read_generation_records(layout.root)}
    labels_used, below, reason = 0, 0, None
    table.header()
    g = 0
    for g in range(config.budget.max_generations + 1):
        if g in done:
            record = done[g]
        else:
            t0, clock = time.time(), []
            record = {"generation": g,
                      **{f"train_{k}": v for k, v in _train_committee(config, g, clock).items()}}
            final = g == config.budget.max_generations or labels_used >= config.budget.max_labels
            if not final:
                rep = _run(explore, clock, config, g)
                record.update(attack_sigma_f_mean=rep.sigma_f_mean, attack_sigma_f_max=rep.sigma_f_max,
                              attack_stopped=rep.n_stopped, attack_seeds=rep.n_seeds)
                if rep.sigma_f_mean >= config.convergence.force_std_threshold:
                    sel = _run(select, clock, config, g, config.budget.max_labels - labels_used)
                    lab = _run(label, clock, config, g, sel.selected)
                    _check_failures(config, lab, "adversarial")
                    record.update(selected=len(sel.selected), labels_added=lab.added,
                                  labels_failed=lab.failed, selection_threshold=sel.threshold,
                                  rejected=sel.rejected_counts(),
                                  **{f"calibration_{k}": v for k, v in lab.calibration.items()})
            record["dataset_size"] = len(Dataset(layout.dataset))
            t1 = time.time()
            record.update(seconds=t1 - t0, **split_generation(clock, t0, t1))
            steps.append_generation_record(config, record)
        labels_used += record.get("labels_added", 0)
        table.row(record)
        logger.info("generation %d: %s", g, json.dumps(record))

        if "attack_sigma_f_mean" not in record:
            reason = "max_generations" if g == config.budget.max_generations else "max_labels"
            break
        below = below + 1 if record["attack_sigma_f_mean"] < config.convergence.force_std_threshold else 0
        if below >= config.convergence.patience:
            reason = "converged"
            break
        if record.get("selected", 0) == 0:
            reason = "no_candidates"
            break

    summary = {
        "system": config.system.name,
        "stop_reason": reason,
        "stop_explanation": _EXPLANATIONS[reason].format(config=config),
        "generations": g + 1,
        "final_committee_generation": g,
        "dataset_size": len(Dataset(layout.dataset)),
        "labels_initial": initial.added + initial.skipped_known,
        "labels_explored": labels_used,
        "strategy": config.exploration.strategy,
        "level_of_theory": level_of_theory(config.labels, config.dft, config.periodic_dft),
        "wall_seconds": time.perf_counter() - t_start,
        "run_dir": str(layout.root),
    }
    layout.summary.write_text(json.dumps(summary, indent=2))
    table.footer(summary)
    logger.info("stopped: %s", summary["stop_explanation"])
    return summary


_EXPLANATIONS = {
    "converged": "converged: the attacked geometries' mean force uncertainty stayed below "
                 "{config.convergence.force_std_threshold} eV/Å for "
                 "{config.convergence.patience} generation(s)",
    "max_generations": "generation budget spent (budget.max_generations = "
                       "{config.budget.max_generations})",
    "max_labels": "label budget spent (budget.max_labels = {config.budget.max_labels})",
    "no_candidates": "no attacked geometry passed selection (all below the uncertainty "
                     "threshold, near-duplicates or unphysical)",
}


@flow(name="advloop-run-config")
def run_config_file(config_path: str, output_dir: str | None = None) -> dict:
    """Deployment entrypoint: validate a config file, then run it."""
    return run_active_learning(validate_config(Path(config_path), output_dir))
