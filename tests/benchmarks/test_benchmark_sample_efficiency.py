"""`python -m benchmarks.sample_efficiency --quick` runs from nothing and reports every field;
the label-ratio table is computed from the learning curves as defined."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.sample_efficiency import ERRORS, MODULES, STABILITY, label_ratios, main

STRATEGIES = {"adversarial", "md", "random"}


def _entry(curves: dict[str, list[tuple[int, float]]]) -> dict:
    rows = {seed: [{"n_labels": n, "err": v} for n, v in curve] for seed, curve in curves.items()}
    return {
        "curves": rows,
        "labels": {"mean": sum(c[-1][0] for c in curves.values()) / len(curves)},
    }


def test_label_ratio_compares_labels_to_reach_the_adversarial_final_error():
    strategies = {
        "adversarial": _entry(
            {"0": [(10, 1.0), (20, 0.5), (30, 0.2)], "1": [(10, 1.0), (20, 0.3), (30, 0.2)]}
        ),  # target 0.2 at 30
        "md": _entry(
            {
                "0": [(10, 1.0), (30, 0.5), (60, 0.1)],
                "1": [(10, 1.0), (30, 0.4), (60, 0.2), (90, 0.1)],
            }
        ),
        "random": _entry({"0": [(10, 1.0), (90, 0.5)], "1": [(10, 1.0), (90, 0.3)]}),
    }
    out = label_ratios(strategies, "err")
    assert out["target"] == pytest.approx(0.2)
    assert out["adversarial_labels_to_target"] == [30, 30]
    md = out["baselines"]["md"]
    assert md["labels_to_target"] == [60, 60] and md["ratio"] == pytest.approx(2.0)
    assert md["value_at_adversarial_labels"] == pytest.approx(0.45)  # 0.5 and 0.4 at 30 labels
    rnd = out["baselines"]["random"]
    assert rnd["labels_to_target"] == [None, None] and rnd["ratio"] is None
    assert rnd["max_labels"] == 90
    # stability: higher is better
    up = label_ratios(
        {
            "adversarial": _entry({"0": [(5, 0.5), (10, 1.0)]}),
            "md": _entry({"0": [(5, 0.0), (10, 0.5), (20, 1.0)]}),
        },
        "err",
        higher_is_better=True,
    )
    assert up["baselines"]["md"]["labels_to_target"] == [20]
    assert up["baselines"]["md"]["ratio"] == pytest.approx(2.0)


@pytest.mark.slow
def test_quick_mode_reports_every_field_per_system_and_strategy(prefect_backend, tmp_path):
    out = tmp_path / "sample_efficiency.json"
    record = main(["--quick", "--output", str(out)])
    assert json.loads(out.read_text()) == record
    assert all((tmp_path / f"{system}.json").exists() for system in MODULES)
    assert set(record["systems"]) == set(ERRORS) == set(MODULES)
    for system, entry in record["systems"].items():
        assert set(entry["strategies"]) <= STRATEGIES and "adversarial" in entry["strategies"]
        assert set(entry["label_ratios"]) == set(ERRORS[system]) | (
            {STABILITY[system]} if STABILITY[system] else set()
        )
        for ratios in entry["label_ratios"].values():
            assert set(ratios["baselines"]) == set(entry["strategies"]) - {"adversarial"}
        for s in entry["strategies"].values():
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
