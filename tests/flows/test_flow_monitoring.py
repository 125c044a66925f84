"""What a run reports, as plain functions (no Prefect server): artifact keys, the
generation table, the learning-curve image and summary, the events' contents, the
failure-ratio event, and the local reporter's progress output."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import xml.etree.ElementTree as ET
from dataclasses import replace

import numpy as np
import pytest

from advloop.flows import events
from advloop.flows.artifacts import (
    TABLE_COLUMNS,
    LiveState,
    artifact_key,
    generation_rows,
    live_markdown,
    summary_markdown,
)
from advloop.flows.figures import learning_curve_svg
from advloop.flows.records import GenerationRecord, RunSummary
from advloop.flows.report import GenerationTable

RECORDS = [
    GenerationRecord.from_dict(r)
    for r in [
        {
            "generation": 0,
            "dataset_size": 8,
            "labels_added": 2,
            "labels_failed": 0,
            "attack_sigma_f_mean": 0.31,
            "attack_sigma_f_max": 0.9,
            "selected_sigma_f_mean": 0.4,
            "selected_sigma_f_max": 1.1,
            "train_val_energy_mae": 0.02,
            "train_val_forces_mae": 0.42,
            "calibration_spearman": float("nan"),
            "calibration_ratio": 0.7,
            "seconds": 12.0,
        },
        {
            "generation": 1,
            "dataset_size": 10,
            "labels_added": 2,
            "attack_sigma_f_mean": 0.12,
            "train_val_forces_mae": 0.25,
        },
        {"generation": 2, "dataset_size": 10, "train_val_forces_mae": 0.2},  # final: trained only
    ]
]
SUMMARY = RunSummary(
    **{
        "system": "NH3_tiny.v2",
        "stop_reason": "max_generations",
        "stop_explanation": "generation budget spent (budget.max_generations = 2)",
        "generations": 3,
        "final_committee_generation": 2,
        "dataset_size": 10,
        "labels_initial": 6,
        "labels_explored": 4,
        "labels_failed": 0,
        "strategy": "adversarial",
        "level_of_theory": "RHF/STO-3G",
        "wall_seconds": 42.0,
        "run_dir": "runs/NH3_tiny.v2",
    }
)


def test_artifact_keys_follow_prefects_rules():
    assert artifact_key("NH3_tiny.v2", "generations") == "nh3-tiny-v2-generations"
    assert artifact_key("a--b_", "summary") == "a-b-summary"
    for name in ("x", "Zeolite.CHA_2x2", "9-lives"):
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", artifact_key(name, "labelling"))


def test_generation_table_rows_are_json_with_every_column():
    rows = generation_rows(RECORDS)
    assert [list(r) for r in rows] == [list(TABLE_COLUMNS)] * 3
    assert rows[0]["sigma_f_selected_max_eV_A"] == 1.1 and rows[0]["val_energy_mae_eV"] == 0.02
    assert rows[0]["calibration_spearman"] is None  # NaN is not JSON
    assert rows[2]["labels_added"] is None and rows[2]["sigma_f_attacked_mean_eV_A"] is None
    json.dumps(rows, allow_nan=False)


def test_learning_curve_is_an_svg_with_both_series():
    svg = ET.fromstring(learning_curve_svg(RECORDS, threshold=0.05))
    ns = "{http://www.w3.org/2000/svg}"
    assert svg.tag == f"{ns}svg"
    colours = [c.get("fill") for c in svg.iter(f"{ns}circle") if c.get("class") == "point"]
    assert colours.count("#d62728") == 2 and colours.count("#1f77b4") == 3  # σF, MAE points
    assert len(list(svg.iter(f"{ns}polyline"))) == 2
    assert any("threshold" in (t.text or "") for t in svg.iter(f"{ns}text"))
    ET.fromstring(learning_curve_svg([]))  # a run with no generation still draws axes


def test_summary_markdown_embeds_the_curve_as_a_data_uri_and_a_table():
    text = summary_markdown(SUMMARY, RECORDS, threshold=0.05)
    assert text.startswith("# NH3_tiny.v2: max_generations")
    assert SUMMARY.stop_explanation in text
    uri = re.search(r"\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", text)
    assert uri and base64.b64decode(uri.group(1)).decode().startswith("<svg")
    assert "| 0 | 0.31 | 0.42 | 2 |" in text and "| 2 | - | 0.2 | 0 |" in text
    assert "| resumed |" not in text
    resumed = summary_markdown(replace(SUMMARY, resumed="resumed: found 2 generations"), RECORDS)
    assert "| resumed | resumed: found 2 generations |" in resumed


def test_the_live_summary_says_where_a_running_run_stands():
    live = LiveState("nh3", "running", "generation 1 finished", 5, 10, threshold=0.05)
    records = [RECORDS[0], replace(RECORDS[1], seconds=18.0, labels_failed=1)]
    text = live_markdown(live, records)
    assert text.startswith("# nh3: running\n\n**generation 1 finished**")
    assert "| generations finished | 2 (budget 5) |" in text
    # the last generation's σF, falling from 0.31, against the convergence threshold
    assert (
        "| σF of the attacked geometries, last | 0.12 eV/Å (falling) against the threshold 0.05 |"
        in text
    )
    assert "| validation force MAE, last | 0.25 eV/Å |" in text
    assert "| labels added / failed | 4 / 1 (budget left: 6) |" in text
    # 12 s and 18 s per generation: 3 generations left take about 45 s
    assert "| time per generation | 15 s: about 45 s to the generation budget |" in text
    assert "](data:image/svg+xml;base64," in text and "| 1 | 0.12 | 0.25 | 2 |" in text
    ended = live_markdown(LiveState("nh3", "failed", "RuntimeError: x", 2, 10), records)
    assert ended.startswith("# nh3: failed") and "the generation budget is spent" in ended
    assert "against the threshold" not in ended


def test_events_name_the_run_and_carry_json_safe_records():
    record = GenerationRecord.from_dict(
        {
            **RECORDS[0].to_dict(),
            "rejected": {"known": np.int64(3)},
            "ok": np.bool_(True),
            "sigma": np.float32(0.5),
            "bad": float("inf"),
        }
    )  # keys of another version kept
    ev = events.generation_finished_event("nh3", record)
    assert ev.event == "advloop.generation.finished"
    assert ev.resource == {"prefect.resource.id": "advloop.run.nh3", "prefect.resource.name": "nh3"}
    assert ev.payload["rejected"] == {"known": 3} and ev.payload["ok"] is True
    assert ev.payload["calibration_spearman"] is None and ev.payload["bad"] is None
    json.dumps(ev.payload, allow_nan=False)

    assert events.run_finished_event(SUMMARY).event == "advloop.run.stopped"
    for reason in ("converged", "few_candidates"):
        done = events.run_finished_event(replace(SUMMARY, stop_reason=reason))
        assert done.event == "advloop.run.converged" and done.payload["stop_reason"] == reason
    fail = events.failure_ratio_event(
        "nh3", 3, failed=3, requested=4, max_failure_ratio=0.5, failures=[f"f{k}" for k in range(9)]
    )
    assert fail.event == "advloop.labels.failure-ratio-exceeded"
    assert fail.payload["failure_ratio"] == 0.75 and len(fail.payload["failures"]) == 5


def test_too_many_failed_labels_emit_an_event_then_fail(monkeypatch):
    from advloop.flows import active_learning
    from advloop.flows.config import RunConfig
    from advloop.flows.loop import check_failures
    from advloop.flows.steps import LabellingError, LabelReport

    sent = []
    monkeypatch.setattr(active_learning.events, "emit", sent.append)
    config = RunConfig.model_validate({"system": {"name": "nh3", "structures": "nh3.xyz"}})
    report = LabelReport(
        requested=4,
        added=1,
        failed=3,
        skipped_known=0,
        seconds=1.0,
        failures=["SCFConvergenceError"] * 3,
    )
    with pytest.raises(LabellingError, match="3 of 4 adversarial") as raised:
        check_failures(config, report, "adversarial", 2)
    active_learning._emit_failure_event(config, raised.value)  # as the flow does, then fails
    [ev] = sent
    assert ev.event == events.LABEL_FAILURES and ev.payload["generation"] == 2
    assert ev.payload["failed"] == 3 and ev.payload["requested"] == 4
    check_failures(config, LabelReport(4, 3, 1, 0, 1.0, ["x"]), "adversarial", 2)  # within the
    # budget.max_failure_ratio: no error, so nothing is sent


def test_reporter_prints_plain_progress_lines_off_a_terminal():
    stream = io.StringIO()
    table = GenerationTable(stream)
    assert not table.live
    table.training_started(0, 2)
    table.member_trained(0, 1, 1, 2, {"val_forces_mae": 0.1234})
    table.labelled(0, 0, 3)
    table.labelled(0, 1, 3)
    table.labelled(0, 3, 3, failed=1)
    table.row(RECORDS[0])
    lines = stream.getvalue().splitlines()
    assert lines[:5] == [
        "gen 0: training 2 committee members",
        "gen 0: member 1 trained, 1 of 2 (val F MAE 0.1234 eV/Å)",
        "gen 0: labelling 3 structures",
        "gen 0: 1 of 3 labels done",
        "gen 0: 3 of 3 labels done, 1 failed",
    ]


def test_reporter_draws_a_progress_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    table = GenerationTable(stream)
    assert table.live
    table.training_started(4, 2)
    table.labelled(4, 1, 2)
    assert table._progress is not None and "gen 4: labelling" in stream.getvalue()
    table.member_trained(4, 0, 1, 2, {})
    table.member_trained(4, 1, 2, 2, {})
    assert table._progress is not None  # until every bar is finished
    table.labelled(4, 2, 2)
    assert table._progress is None  # a finished bar removes itself
    table.labelled(5, 1, 2)
    table.row(RECORDS[1])  # a table row ends any bar still shown
    assert table._progress is None
    assert "gen 4: 1 of 2 labels done" not in stream.getvalue()  # no plain lines


def test_label_lines_say_how_long_the_rest_will_take():
    from advloop.flows import durations
    from advloop.flows.report import labels_line

    assert labels_line(3, 0, 8) == "gen 3: labelling 8 structures"
    eta = durations.eta(2, 8, 120.0)  # 60 s per label so far, 6 to go
    assert eta == "about 6 min left"
    assert labels_line(3, 2, 8, 1, eta) == "gen 3: 2 of 8 labels done, 1 failed, about 6 min left"
    assert durations.eta(0, 8, 5.0) is None and durations.eta(8, 8, 5.0) is None
    assert durations.duration(59) == "59 s" and durations.duration(3 * 3600) == "3.0 h"
    assert durations.ago(90) == "90 s ago"


def test_a_failure_to_publish_the_figures_is_logged_not_raised(monkeypatch, tmp_path, caplog):
    from advloop.flows import active_learning
    from advloop.flows.config import RunConfig
    from advloop.potentials.dataset import Dataset

    config = RunConfig.model_validate(
        {"system": {"name": "nh3", "structures": "nh3.xyz"}, "output_dir": str(tmp_path)}
    )
    assert not active_learning._publish_figures(config, RECORDS)  # no dataset yet
    Dataset.create(config.run_dir() / "dataset.h5")

    def down(*args, **kwargs):
        raise ConnectionError("server down")

    monkeypatch.setattr(active_learning.artifacts, "publish_figures", down)
    logger = logging.getLogger(active_learning.__name__)  # advloop's loggers do not propagate
    logger.addHandler(caplog.handler)
    try:
        assert not active_learning._publish_figures(config, RECORDS)
    finally:
        logger.removeHandler(caplog.handler)
    assert "could not publish the run's figures: server down" in caplog.text
