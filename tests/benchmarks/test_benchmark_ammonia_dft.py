"""The DFT repeat of the ammonia benchmark runs the real Prefect flow with PySCF labels
and reports errors and the per-generation time split for every strategy."""

from __future__ import annotations

import math

import pytest

from benchmarks.ammonia_dft import PHASES, STRATEGIES, run


@pytest.mark.slow
def test_tiny_dft_run_reports_errors_and_timings(prefect_backend, tmp_path):
    out = run([0], generations=1, labels_per_generation=2, quick=True, n_frames=2, root=tmp_path)
    assert out["oracle"]["method"] == "RHF/STO-3G"
    assert 0.05 < out["oracle"]["barrier_eV"] < 0.5  # a real inversion barrier
    assert set(out["runs"]) == set(STRATEGIES) == set(out["summary"])
    for strategy, by_seed in out["runs"].items():
        rows = by_seed["0"]
        assert [r["generation"] for r in rows] == [0, 1]
        assert rows[0]["n_labels"] == 12 and rows[1]["n_labels"] > 12, strategy
        for row in rows:
            assert math.isfinite(row["barrier_error_kcal_mol"])
            assert row["force_rmse_1000K"] > 0
        first = rows[0]
        split = sum(first[f"seconds_{p}"] for p in PHASES)
        assert split == pytest.approx(first["seconds"], rel=1e-6)
        assert first["seconds_labelling"] > 0 and first["seconds_orchestration"] >= 0
    timing = out["seconds_per_generation"]
    assert timing["generations"] == 2
    assert 0 <= timing["orchestration_fraction"] < 1
