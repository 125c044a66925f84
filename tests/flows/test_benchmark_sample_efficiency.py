"""`python -m benchmarks.sample_efficiency --quick` runs from nothing and reports every field."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.sample_efficiency import ERRORS, STABILITY, main

STRATEGIES = {"adversarial", "md", "random"}


@pytest.mark.slow
def test_quick_mode_reports_every_field_per_system_and_strategy(tmp_path):
    out = tmp_path / "sample_efficiency.json"
    record = main(["--quick", "--output", str(out)])
    assert json.loads(out.read_text()) == record
    assert (tmp_path / "double_well.json").exists() and (tmp_path / "ammonia_xtb.json").exists()
    assert set(record["systems"]) == set(ERRORS)
    for system, entry in record["systems"].items():
        assert set(entry["strategies"]) == STRATEGIES
        for strategy, s in entry["strategies"].items():
            assert s["seeds"] and len(s["labels"]["per_seed"]) == len(s["seeds"])
            assert s["labels"]["mean"] > 0
            for key in ERRORS[system]:
                stats = s["errors"][key]
                assert all(math.isfinite(v) and v >= 0 for v in stats["per_seed"]), (system, key)
            if STABILITY[system]:
                assert 0.0 <= s["stability"]["mean"] <= 1.0
            else:
                assert s["stability"] is None
            for curve in s["curves"].values():
                labels = [row["n_labels"] for row in curve]
                assert labels == sorted(labels)  # labels only ever accumulate
