"""The run's records as types, and the run folder's formats: generation records read and
written as generations.jsonl holds them, candidates kept exactly, reject reasons typed,
and files of advloop 0.1 still read."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.io import write

from advloop.adversarial.selection import Rejection
from advloop.adversarial.structures import Candidates
from advloop.flows import run_folder
from advloop.flows.artifacts import TABLE_COLUMNS
from advloop.flows.records import RECORD_FIELDS, GenerationRecord, RunSummary
from advloop.flows.report import _COLUMNS
from advloop.flows.run_folder import RunLayout

# A record as advloop 0.1 wrote it to generations.jsonl.
OLD_LINE = {
    "generation": 0,
    "train_val_forces_mae": 0.4,
    "train_val_energy_mae": 0.02,
    "train_seconds": 1.5,
    "train_epochs": 12.0,
    "train_divergence_retries": 0,
    "attack_sigma_f_mean": 0.3,
    "attack_sigma_f_max": 0.9,
    "attack_stopped": 1,
    "attack_seeds": 4,
    "attack_candidates": 4,
    "selected": 2,
    "selection_threshold": 0.1,
    "candidates_above_threshold": 3,
    "selected_sigma_f_mean": 0.4,
    "selected_sigma_f_max": 0.8,
    "rejected": {"over_cap": 1, "known": 1},
    "labels_added": 2,
    "labels_failed": 0,
    "labels_cached": 0,
    "calibration_n": 2,
    "calibration_spearman": 1.0,
    "calibration_ratio": 0.7,
    "calibration_predicted_mean": 0.4,
    "calibration_observed_mean": 0.6,
    "dataset_size": 8,
    "seconds": 9.0,
    "seconds_training": 3.0,
    "seconds_exploration": 2.0,
    "seconds_selection": 0.5,
    "seconds_labelling": 3.0,
    "seconds_orchestration": 0.5,
    "config_sha256": "0123456789abcdef",
}


def test_a_generation_record_reads_and_writes_the_jsonl_format(tmp_path):
    record = GenerationRecord.from_dict(OLD_LINE)
    assert record.explored and record.labels == 2 and record.rejected == {"over_cap": 1, "known": 1}
    assert record.to_dict() == OLD_LINE  # the same line, key for key
    final = GenerationRecord(1, train_val_forces_mae=0.3, dataset_size=8)
    assert not final.explored and final.labels == 0
    assert final.to_dict() == {"generation": 1, "train_val_forces_mae": 0.3, "dataset_size": 8}

    run_folder.append_generation(tmp_path, record)
    run_folder.append_generation(tmp_path, final)
    assert run_folder.read_generations(tmp_path) == [record, final]
    lines = RunLayout(tmp_path).generations.read_text().splitlines()
    assert json.loads(lines[0]) == OLD_LINE


def test_keys_of_another_version_are_kept_not_lost():
    line = {**OLD_LINE, "future_metric": 3.5}
    record = GenerationRecord.from_dict(line)
    assert record.extra == {"future_metric": 3.5} and record.to_dict() == line


def test_tables_name_their_columns_by_record_field():
    assert set(TABLE_COLUMNS.values()) <= RECORD_FIELDS
    assert {key for _, key, _ in _COLUMNS} <= RECORD_FIELDS


def test_the_summary_round_trips_through_summary_json(tmp_path):
    summary = RunSummary(
        "nh3",
        "converged",
        "converged: ...",
        3,
        2,
        20,
        12,
        8,
        0,
        "adversarial",
        "RHF/STO-3G",
        42.0,
        str(tmp_path),
    )
    assert summary.converged
    run_folder.write_summary(tmp_path, summary)
    assert run_folder.read_summary(tmp_path) == summary
    RunLayout(tmp_path).summary.write_text('{"system": ')  # cut short
    assert run_folder.read_summary(tmp_path) is None


def _candidates() -> Candidates:
    rng = np.random.default_rng(0)
    positions = rng.normal(size=(6, 3)) * 1.234567891234
    return Candidates(
        np.array([7, 1, 1, 7, 1, 1]),
        positions,
        np.array([3, 3]),
        np.zeros((2, 3, 3)),
        np.zeros((2, 3), dtype=bool),
        np.array([5, 9]),
        np.array([0.3, 0.2]),
        np.array([0.9, 0.5]),
        np.array([1.0, 2.0]),
        {9: "atoms 0 and 1 at 0.20 Å"},
    )


def test_candidates_are_kept_exactly(tmp_path):
    layout = RunLayout(tmp_path)
    kept = _candidates()
    run_folder.write_candidates(layout, 3, kept, {"n_seeds": 2})
    read, report = run_folder.read_candidates(layout, 3)
    assert report == {"n_seeds": 2}
    np.testing.assert_array_equal(read.positions, kept.positions)  # to the bit
    np.testing.assert_array_equal(read.parent, kept.parent)
    assert read.stopped == kept.stopped and list(read.n_atoms) == [3, 3]
    [second] = run_folder.candidate_structures(read, [1])
    assert second.get_chemical_formula() == "H2N" and np.array_equal(
        second.positions, kept.positions[3:]
    )
    assert run_folder.read_candidates(layout, 4) is None  # not explored


def test_candidates_of_advloop_0_1_are_read(tmp_path):
    """Extended XYZ with the report in the first frame's info, as 0.1 wrote them."""
    layout = RunLayout(tmp_path)
    frames = []
    for k, parent in enumerate((5, 9)):
        atoms = Atoms("NH2", positions=np.arange(9.0).reshape(3, 3) + k)
        atoms.info.update(
            parent=parent, forces_std_mean=0.3 - k / 10, forces_std_max=0.9, score=float(k)
        )
        frames.append(atoms)
    frames[0].info["explore_report"] = json.dumps({"n_seeds": 2, "n_candidates": 2})
    layout.legacy_candidates(1).parent.mkdir(parents=True)
    write(layout.legacy_candidates(1), frames, format="extxyz")
    candidates, report = run_folder.read_candidates(layout, 1)
    assert report["n_candidates"] == 2 and list(candidates.parent) == [5, 9]
    assert candidates.sigma_f_mean == pytest.approx([0.3, 0.2])


def test_selections_of_advloop_0_1_get_typed_reasons(tmp_path):
    from advloop.flows.steps import _read_selection

    layout = RunLayout(tmp_path)
    run_folder.write_selection(
        layout,
        0,
        {
            "generation": 0,
            "strategy": "md",
            "hashes": ["h"],
            "report": {
                "selected": [1],
                "threshold": 0.1,
                "rejected": {"0": "over cap", "2": "fragmented into 2"},
            },
        },
    )
    report, strategy = _read_selection(layout, 0)
    assert strategy == "md" and report.rejected == {
        0: Rejection("over_cap", "over cap"),
        2: Rejection("unphysical", "fragmented into 2"),
    }
    assert report.rejected_counts() == {"over_cap": 1, "unphysical": 1}


def test_calibrated_error_criterion_stops_on_the_bound_not_on_raw_sigma(tmp_path):
    from advloop.flows.config import RunConfig
    from advloop.flows.loop import decide
    from advloop.flows.records import GenerationRecord

    config = RunConfig.model_validate(
        {
            "system": {"name": "x", "structures": "x.xyz"},
            "convergence": {
                "criterion": "calibrated_error",
                "force_error_tolerance": 0.1,
                "patience": 2,
            },
            "budget": {"max_generations": 10, "max_labels": 1000},
        }
    )

    def record(g, sigma, bound):
        return GenerationRecord(
            g, attack_sigma_f_mean=sigma, attack_error_bound=bound, selected=2, labels_added=2
        )

    # raw σ tiny, but no calibrated bound yet (too few labels): go on
    assert decide(config, [record(0, 1e-4, None), record(1, 1e-4, None)], 0.0) is None
    # bound below the tolerance once: patience 2 wants two in a row
    assert decide(config, [record(0, 0.5, 0.3), record(1, 0.5, 0.05)], 0.0) is None
    stop = decide(config, [record(0, 0.5, 0.3), record(1, 0.5, 0.05), record(2, 0.5, 0.08)], 0.0)
    assert stop is not None and stop.reason == "converged" and "calibrated" in stop.explanation
    # σ below threshold but bound above tolerance: the error grows, so do not stop
    assert decide(config, [record(0, 1e-4, 0.5), record(1, 1e-4, 0.5)], 0.0) is None
    with pytest.raises(ValueError, match="force_error_tolerance"):
        RunConfig.model_validate(
            {
                "system": {"name": "x", "structures": "x.xyz"},
                "convergence": {"criterion": "calibrated_error"},
            }
        )
