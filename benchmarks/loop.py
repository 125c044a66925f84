"""The active-learning loop as the sample-efficiency benchmarks run it.

advloop's own generation steps (:mod:`advloop.flows.steps`: train, explore, select, label), run
in this process without Prefect so that the committee of every generation can be
measured between its training and the next exploration. :mod:`benchmarks.ammonia_dft`
runs the same loop through the Prefect flow instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from advloop.flows.config import RunConfig
from advloop.flows.steps import explore_step, initial_dataset, label_step, select_step, train_step
from advloop.potentials.committee import Committee
from advloop.potentials.dataset import Dataset
from advloop.potentials.run_layout import RunLayout

Measure = Callable[[Committee, int], dict]  # (generation's committee, generation) -> metrics


def train_and_measure(config: RunConfig, g: int, measure: Measure) -> dict:
    """Train generation ``g``'s members one after the other and measure the committee:
    its row (``generation``, ``n_labels``, the metrics, ``seconds_training`` and
    ``seconds_metrics``)."""
    layout = RunLayout(config.run_dir())
    t0 = time.perf_counter()
    for member in range(config.committee.n_members):
        train_step(config, g, member)
    training = time.perf_counter() - t0
    committee = Committee.from_checkpoints(layout.committee_checkpoints(g))
    t0 = time.perf_counter()
    metrics = measure(committee, g)
    return {"generation": g, "n_labels": len(Dataset(layout.dataset)), **metrics,
            "seconds_training": training, "seconds_metrics": time.perf_counter() - t0}


def generation_zero(config: RunConfig, measure: Measure) -> dict:
    """Label the initial structures, train generation 0 and measure it: the first row of
    :func:`run_loop`."""
    t0 = time.perf_counter()
    initial_dataset(config)
    labelling = time.perf_counter() - t0
    return train_and_measure(config, 0, measure) | {"seconds_labelling": labelling}


def run_loop(config: RunConfig, measure: Measure, first_row: dict | None = None) -> list[dict]:
    """Run ``config.budget.max_generations`` generations; one row per generation's
    committee (generation 0 included).

    ``first_row``: generation 0, already labelled, trained and measured in this run folder
    (a row of :func:`generation_zero`, e.g. shared between strategies of one seed).
    Timings in s: ``seconds_labelling`` is the labelling that made the generation's
    training set, ``seconds_exploration`` the exploration and selection that follow it
    (0 for the last generation, which does not explore); ``n_candidates`` and
    ``n_selected`` count what exploration found and selection kept."""
    rows, labelling = [], 0.0
    for g in range(config.budget.max_generations + 1):
        if g == 0:
            row = dict(first_row) if first_row is not None else generation_zero(config, measure)
        else:
            row = train_and_measure(config, g, measure) | {"seconds_labelling": labelling}
        row.update(seconds_exploration=0.0, n_candidates=0, n_selected=0)
        if g < config.budget.max_generations:
            t0 = time.perf_counter()
            report = explore_step(config, g)
            selected = select_step(config, g, config.selection.max_selected).selected
            row.update(seconds_exploration=time.perf_counter() - t0,
                       n_candidates=report.n_candidates, n_selected=len(selected))
            t0 = time.perf_counter()
            label_step(config, g, selected)
            labelling = time.perf_counter() - t0
        rows.append(row)
    return rows
