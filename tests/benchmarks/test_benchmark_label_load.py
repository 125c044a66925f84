"""The label-load benchmark's quick mode: one generation of 24 EMT label tasks, 4 at once,
through ``advloop run`` with the threads and the processes labelling runner; every field
of the record it writes, all labels added, no failure."""

from __future__ import annotations

import json

import pytest

from benchmarks.label_load import N_INITIAL, N_QUICK, RUNNERS, WORKERS, record, run

ROLES = {"total", "flow", "server", "workers"}


def _load(values) -> None:
    assert len(values) == 3 and all(v >= 0 for v in values)


@pytest.mark.slow
@pytest.mark.system
def test_quick_mode_adds_every_label_and_reports_every_field(tmp_path):
    results = run(quick=True, root=tmp_path)
    out = json.loads(json.dumps(record(results, ["--quick"], True, 12.5)))  # as written

    assert set(out) == {
        "command",
        "machine",
        "versions",
        "date",
        "mode",
        "seconds",
        "level_of_theory",
        "n_labels",
        "label_workers",
        "seeds",
        "run_command",
        "load_average",
        "runs",
    }
    assert out["command"].endswith("-m benchmarks.label_load --quick")
    assert set(out["machine"]) == {
        "platform",
        "processor",
        "cpu_count",
        "nproc",
        "memory_gb",
        "shared",
    }
    assert out["machine"]["cpu_count"] >= out["machine"]["nproc"] >= 1
    assert set(out["versions"]) == {"python", "prefect", "torch", "sqlalchemy", "ase", "psutil"}
    assert out["versions"]["prefect"] == "3.8.8" and out["versions"]["sqlalchemy"]
    assert out["mode"] == "quick" and out["seconds"] == 12.5 and out["date"]
    assert out["level_of_theory"].startswith("EMT") and "stand-in for DFT" in out["level_of_theory"]
    assert out["n_labels"] == N_QUICK and out["label_workers"] == WORKERS
    assert out["seeds"] == {"initial_data.seed": 0, "committee.seed": 0}
    assert out["run_command"] == "advloop run <config>"
    _load(out["load_average"]["start"])
    _load(out["load_average"]["end"])

    assert set(out["runs"]) == set(RUNNERS)
    for runner, part in out["runs"].items():
        assert set(part) == {
            "runner",
            "label_workers",
            "exit_status",
            "stop_reason",
            "candidates",
            "labels_selected",
            "labels_added",
            "labels_failed",
            "labels_stored_gen0",
            "dataset_size",
            "run_wall_seconds",
            "generation_seconds",
            "seconds_labelling",
            "seconds_orchestration",
            "label_window_seconds",
            "label_tasks_per_second",
            "candidates_read_seconds",
            "server",
            "memory",
            "load_average_before",
            "load_average_after",
            "config",
        }
        assert part["runner"] == runner and part["label_workers"] == WORKERS
        assert f"labelling: {runner}" in part["config"] or f"kind: {runner}" in part["config"]
        # every selected structure labelled and appended, none failed, the run finished
        assert part["exit_status"] == 0 and part["stop_reason"] == "max_generations"
        assert part["candidates"] >= part["labels_selected"] == N_QUICK
        assert part["labels_added"] == part["labels_stored_gen0"] == N_QUICK
        assert part["labels_failed"] == 0
        assert part["dataset_size"] == N_INITIAL + N_QUICK
        assert (
            part["run_wall_seconds"] > part["generation_seconds"] >= part["seconds_labelling"] > 0
        )
        assert part["seconds_orchestration"] >= 0 and part["label_window_seconds"] >= 0
        assert part["candidates_read_seconds"] > 0
        _load(part["load_average_before"])
        _load(part["load_average_after"])

        server = part["server"]
        assert set(server) == {
            "client_503_retries",
            "server_retryable_errors",
            "database_is_locked_lines",
            "client_503_retries_during_labelling",
            "server_retryable_statements",
            "failure_lines",
            "examples",
        }
        # A 503 for a locked SQLite database is retried by the client: the benchmark counts
        # those; none may end as a failed task, flow or label.
        assert server["failure_lines"] == 0, server["examples"]
        assert 0 <= server["client_503_retries_during_labelling"] <= server["client_503_retries"]
        statements = sum(server["server_retryable_statements"].values())
        assert statements <= server["server_retryable_errors"]
        if server["database_is_locked_lines"] == 0:
            assert server["server_retryable_errors"] == 0

        memory = part["memory"]
        assert set(memory) == {
            "sample_interval_seconds",
            "n_samples",
            "n_samples_labelling",
            "labelling_start_seconds",
            "labelling_end_seconds",
            "rss_mb_at_labelling_start",
            "rss_mb_at_labelling_end",
            "rss_mb_peak_labelling",
            "rss_mb_peak_run",
            "rss_growth_mb_labelling",
            "rss_growth_mb_per_100_labels",
            "samples_columns",
            "samples",
        }
        assert memory["n_samples"] == len(memory["samples"]) > memory["n_samples_labelling"] >= 2
        assert memory["labelling_end_seconds"] > memory["labelling_start_seconds"] > 0
        for key in (
            "rss_mb_at_labelling_start",
            "rss_mb_at_labelling_end",
            "rss_mb_peak_labelling",
            "rss_mb_peak_run",
            "rss_growth_mb_labelling",
            "rss_growth_mb_per_100_labels",
        ):
            assert set(memory[key]) == ROLES
        assert memory["rss_mb_at_labelling_start"]["flow"] > 0
        assert memory["rss_mb_at_labelling_start"]["server"] > 0  # the embedded server's process
        for role in ROLES:
            assert (
                memory["rss_mb_peak_run"][role]
                >= memory["rss_mb_peak_labelling"][role]
                >= memory["rss_mb_at_labelling_end"][role]
            )
        assert memory["samples_columns"] == [
            "seconds",
            "labels_stored",
            "rss_mb_flow",
            "rss_mb_server",
            "rss_mb_workers",
        ]
        assert max(s[1] for s in memory["samples"]) == N_INITIAL + N_QUICK
    # label tasks in worker processes, not in the run's own
    assert out["runs"]["processes"]["memory"]["rss_mb_at_labelling_end"]["workers"] > 0
