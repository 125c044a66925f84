"""`python -m benchmarks.stop_rules`: each rule replayed on learning curves whose σ_F
underestimates the error, as raw committee spreads do."""

from __future__ import annotations

import json

import pytest

from benchmarks.stop_rules import main, replay, stop_row


def _rows(sigmas, bounds, errors):
    return [
        {
            "generation": g,
            "explored_labels": 8 * g,
            "attack_sigma_f_mean": s,
            "attack_error_bound": b,
            "calibration_observed_mean": e,
        }
        for g, (s, b, e) in enumerate(zip(sigmas, bounds, errors))
    ]


# σ_F is a third of the error; the bound (3 σ_F, once calibrated) covers it
CURVE = _rows(
    [0.08, 0.06, 0.04, 0.03, 0.02],
    [float("nan"), float("nan"), 0.13, 0.09, 0.06],
    [0.24, 0.18, 0.12, 0.09, 0.05],
)


def test_a_rule_stops_after_patience_rows_below_the_tolerance():
    assert stop_row(CURVE, "attack_sigma_f_mean", 0.05, 1) == 2
    assert stop_row(CURVE, "attack_sigma_f_mean", 0.05, 2) == 3
    assert stop_row(CURVE, "attack_error_bound", 0.1, 1) == 3  # nan: no bound yet
    assert stop_row(CURVE, "attack_error_bound", 0.01, 1) is None


def test_raw_sigma_stops_early_where_the_calibrated_bound_waits_for_the_error():
    out = replay({"0": CURVE}, [0.1], patience=1)
    sigma = out["sigma"]["tolerances"]["0.1"]["stops"]["0"]
    assert sigma["generation"] == 0 and sigma["premature"]  # σ 0.08 < 0.1, error 0.24
    bound = out["calibrated_error"]["tolerances"]["0.1"]["stops"]["0"]
    assert bound["generation"] == 3 and not bound["premature"]  # bound 0.09, error 0.09
    assert out["sigma"]["coverage"] == 0.0 and out["sigma"]["n_generations"] == 5
    assert out["calibrated_error"]["coverage"] == 1.0
    assert out["calibrated_error"]["n_generations"] == 3


def test_a_stop_where_the_run_itself_ended_is_unknown_not_correct():
    ended = [*CURVE[:2], {**CURVE[2], "calibration_observed_mean": None}]
    out = replay({"0": ended}, [0.05], patience=1)["sigma"]["tolerances"]["0.05"]
    assert out["stops"]["0"]["premature"] is None
    assert (out["stopped"], out["premature"], out["unknown"]) == (1, 0, 1)


def test_reads_a_sample_efficiency_record_and_writes_its_own(tmp_path):
    record = {"command": "x", "systems": {"s": {"runs": {"md": {"0": {"rows": CURVE}}}}}}
    source = tmp_path / "in.json"
    source.write_text(json.dumps(record))
    out = tmp_path / "out.json"
    result = main(["--input", str(source), "--tolerances", "0.1", "--output", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    entry = result["systems"]["s"]["md"]["calibrated_error"]["tolerances"]["0.1"]
    assert (entry["stopped"], entry["premature"]) == (1, 0)
    with pytest.raises(SystemExit):
        main(["--input", str(source), "--tolerances", "-1", "--output", str(out)])
