"""The orchestration benchmark's quick mode: labelling on 1 and 2 Dask workers through the
labelling sub-flow, and a small real run whose generations' time is split into compute
and orchestration; every field of the record it writes."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.orchestration import PHASES, record, run


def _load(values) -> None:
    assert len(values) == 3 and all(v >= 0 for v in values)


def test_quick_mode_reports_every_field(prefect_backend, tmp_path):
    results = run(quick=True, root=tmp_path)
    out = json.loads(json.dumps(record(results, ["--quick"], True, 12.5)))  # as written

    assert set(out) == {
        "command",
        "machine",
        "versions",
        "date",
        "mode",
        "seconds",
        "load_average",
        "labelling",
        "parallel_efficiency",
        "overhead",
        "overhead_fraction",
    }
    assert out["command"].endswith("-m benchmarks.orchestration --quick")
    assert out["machine"]["cpu_count"] >= 1 and "omp_num_threads" in out["machine"]
    assert set(out["versions"]) == {
        "python",
        "prefect",
        "prefect_dask",
        "distributed",
        "torch",
        "pyscf",
        "tblite",
    }
    assert out["versions"]["prefect"] == "3.8.8"
    assert out["mode"] == "quick" and out["seconds"] == 12.5 and out["date"]
    _load(out["load_average"]["start"])
    _load(out["load_average"]["end"])

    labelling = out["labelling"]
    assert labelling["n_structures"] == 4 and labelling["warm_up_structures_per_worker"] == 1
    assert labelling["molecule"] == "NH3" and labelling["level_of_theory"] == "GFN2-xTB"
    for workers in (1, 2):
        part = labelling[f"workers_{workers}"]
        assert set(part) == {
            "seconds",
            "seconds_cluster_start",
            "seconds_label_compute_sum",
            "seconds_per_label_mean",
            "worker_busy_fraction",
            "server_busy_retries",
            "load_average_before",
            "load_average_after",
        }
        assert part["worker_busy_fraction"] == pytest.approx(
            part["seconds_label_compute_sum"] / (workers * part["seconds"])
        )
        assert part["server_busy_retries"] >= 0
        assert part["seconds"] > part["seconds_label_compute_sum"] > 0
        assert part["seconds_cluster_start"] > 0
        assert part["seconds_per_label_mean"] == pytest.approx(
            part["seconds_label_compute_sum"] / 4
        )
        _load(part["load_average_before"])
        _load(part["load_average_after"])
    t1, t2 = labelling["workers_1"]["seconds"], labelling["workers_2"]["seconds"]
    assert labelling["speedup"] == pytest.approx(t1 / t2)
    assert (
        out["parallel_efficiency"]
        == labelling["parallel_efficiency"]
        == pytest.approx(t1 / (2 * t2))
    )

    overhead = out["overhead"]
    assert overhead["runners"] == {"training": "threads", "labelling": "threads"}
    assert overhead["settings"]["n_members"] == 2 and overhead["settings"]["labels"] == "RHF/STO-3G"
    assert overhead["stop_reason"] == "max_generations"
    generations = overhead["generations"]
    assert [g["generation"] for g in generations] == [0, 1]
    for g in generations:
        split = [g[f"seconds_{p}"] for p in PHASES]
        assert min(split) >= 0 and sum(split) == pytest.approx(g["seconds"], rel=1e-6)
        assert g["overhead_fraction"] == pytest.approx(g["seconds_orchestration"] / g["seconds"])
        assert 0 < g["overhead_fraction"] < 1 and g["seconds_training"] > 0
    assert generations[0]["labels_added"] == 2 and generations[0]["seconds_labelling"] > 0
    assert (
        out["overhead_fraction"]
        == overhead["overhead_fraction"]
        == pytest.approx(sum(g["overhead_fraction"] for g in generations) / 2)
    )
    assert overhead["overhead_fraction_of_total"] == pytest.approx(
        sum(g["seconds_orchestration"] for g in generations)
        / sum(g["seconds"] for g in generations)
    )
    assert overhead["seconds_orchestration_mean"] == pytest.approx(
        sum(g["seconds_orchestration"] for g in generations) / 2
    )
    assert overhead["run_wall_seconds"] > sum(g["seconds"] for g in generations)
    assert overhead["server_busy_retries"] >= 0
    _load(overhead["load_average_before"])
    _load(overhead["load_average_after"])
    assert all(math.isfinite(v) for v in (out["parallel_efficiency"], out["overhead_fraction"]))
