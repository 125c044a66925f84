"""The production loop run for a benchmark: advloop's own loop (:mod:`advloop.flows.loop`,
stop rule included) in this process with its plain jobs, each generation's committee
measured between the loop's yields, outside the loop's own timings."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from advloop.flows import run_folder
from advloop.flows.config import RunConfig
from advloop.flows.loop import ActiveLearningLoop, LocalJobs
from advloop.flows.run_folder import RunLayout
from advloop.potentials.committee import Committee

Measure = Callable[[Committee, int], dict]  # (generation's committee, generation) -> metrics


def measured_run(config: RunConfig, measure: Measure, first_row: dict | None = None) -> list[dict]:
    """Run (or resume) ``config``'s loop to its end; one row per generation's committee.

    A row holds ``generation``, ``n_labels`` (the labels the committee trained on), the
    metrics of ``measure``, and timings in s: ``seconds_training``; ``seconds_labelling``,
    the labelling that made the generation's training set (the initial labels for
    generation 0); ``seconds_exploration``, the exploration and selection that followed
    (0 for the last generation, which does not explore); ``seconds_metrics``; and
    ``n_candidates`` and ``n_selected``, what exploration found and selection kept (a
    hybrid's selected per strategy in ``selected_sources``); where the record has them,
    what the stop rules read (``attack_sigma_f_mean``, ``calibration_scale``,
    ``attack_error_bound``) and the mean force error the committee made on the labels the
    generation added (``calibration_observed_mean``). The
    last row also holds the run's ``stop_reason`` (the production stop rule applies: a
    strategy that finds nothing worth labelling ends its run there).

    ``first_row``: generation 0, already labelled, trained and measured in this run folder
    (e.g. shared between strategies of one seed), taken as it is.
    """
    layout = RunLayout(config.run_dir())
    jobs = LocalJobs()
    rows: list[dict] = []
    with run_folder.open_run(config):
        labelling = 0.0
        loop = ActiveLearningLoop(config, jobs)
        for done in loop.irun():
            record = done.record
            if not rows:  # the loop's first job labelled the initial structures
                labelling = jobs.clock[0].end - jobs.clock[0].start
            if record.generation == 0 and first_row is not None:
                row = dict(first_row)
            else:
                committee = Committee.from_checkpoints(
                    layout.committee_checkpoints(record.generation)
                )
                t0 = time.perf_counter()
                metrics = measure(committee, record.generation)
                row = {
                    "generation": record.generation,
                    "n_labels": (record.dataset_size or 0) - record.labels,
                    **metrics,
                    "seconds_training": record.seconds_training or 0.0,
                    "seconds_metrics": time.perf_counter() - t0,
                    "seconds_labelling": labelling,
                }
            row.update(
                seconds_exploration=(record.seconds_exploration or 0.0)
                + (record.seconds_selection or 0.0),
                n_candidates=record.attack_candidates or 0,
                n_selected=record.selected or 0,
            )
            if record.selected_sources is not None:
                row["selected_sources"] = record.selected_sources
            # what the stop rules read, and the error the new labels showed
            for key in (
                "attack_sigma_f_mean",
                "calibration_scale",
                "attack_error_bound",
                "calibration_observed_mean",
            ):
                if record.get(key) is not None:
                    row[key] = record.get(key)
            labelling = record.seconds_labelling or 0.0
            rows.append(row)
    rows[-1]["stop_reason"] = loop.summary().stop_reason
    return rows


def frames_force_rmse(
    committee: Committee, numbers: np.ndarray, frames: Sequence[tuple[np.ndarray, np.ndarray]]
) -> float:
    """Force RMSE (eV/Å, over atoms and components) of the committee mean on oracle
    ``frames`` of one molecule (numbers [n_atoms]): (positions [n_atoms, 3] Å, forces
    [n_atoms, 3] eV/Å) pairs."""
    pred = committee.predict_arrays(
        np.tile(numbers, len(frames)),
        np.concatenate([p for p, _ in frames]),
        np.full(len(frames), len(numbers)),
    )
    forces = np.concatenate([f for _, f in frames])
    return float(np.sqrt(np.mean((pred.forces_mean - forces) ** 2)))
