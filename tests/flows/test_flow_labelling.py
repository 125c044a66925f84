"""The generation's labelling tasks under Prefect: bounded concurrency, retries, and a
task that fails for good counted as a failed label instead of failing the generation."""

from __future__ import annotations

import io
import threading

from advloop.flows.config import RunConfig
from advloop.flows.report import GenerationTable
from advloop.flows.timing import timed


def test_labelling_tasks_retry_then_count_as_failed(prefect_backend, monkeypatch):
    """No calculator runs: a stand-in for steps.label_one returns a label for structures 0
    and 3, a failed calculation for 1, and raises for 2 on every attempt. The structures
    are read once for the whole batch and each task gets its own."""
    from ase import Atoms
    from prefect import flow, get_run_logger

    from advloop.flows import active_learning, steps

    calls, lock = [], threading.Lock()
    running, peak = [0], [0]

    reads = []

    def selected_structures(config, generation, selected):
        reads.append(list(selected))
        return [Atoms("H", positions=[[float(k), 0.0, 0.0]]) for k in selected]

    def label_one(config, generation, index, atoms):
        assert atoms.positions[0, 0] == index  # the task's own structure
        with lock:
            calls.append(index)
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            if index == 2:
                raise RuntimeError("the node running this label was lost")
            return steps.LabelResult(
                index,
                "0" * 64,
                ok=index != 1,
                cached=False,
                seconds=0.0,
                error="SCFConvergenceError: stand-in" if index == 1 else None,
            )
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(steps, "selected_structures", selected_structures)
    monkeypatch.setattr(
        active_learning,
        "label_structure",
        active_learning._task(timed("labelling", label_one), name="label-structure"),
    )
    config = RunConfig.model_validate(
        {
            "system": {"name": "nh3-labelling", "structures": "nh3.xyz"},
            "compute": {"label_workers": 2, "label_retries": 1, "label_retry_delay_seconds": 0},
        }
    )
    stream = io.StringIO()

    @flow
    def generation():
        clock = []
        results = active_learning._label_selected(
            config, 0, [0, 1, 2, 3], clock, GenerationTable(stream), get_run_logger()
        )
        return results, clock

    results, clock = generation()
    assert sorted(r.index for r in results) == [0, 1, 3]  # 2 has no label
    assert [r.ok for r in sorted(results, key=lambda r: r.index)] == [True, False, True]
    assert calls.count(2) == 2  # one retry
    assert reads == [[0, 1, 2, 3]]  # one read for the batch
    assert peak[0] <= 2  # compute.label_workers
    assert len(clock) == 3 and {c.phase for c in clock} == {"labelling"}
    assert stream.getvalue().splitlines()[-1] == "gen 0: 4 of 4 labels done, 2 failed"
