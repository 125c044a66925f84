"""Each exploration strategy through the plain generation steps (no Prefect): explore,
select, label with real PySCF (RHF/STO-3G) and append with the strategy's provenance;
labelling split into one step per structure and one append, as the flow runs it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml

from advloop.flows.config import RunConfig
from advloop.flows.run_folder import RunLayout
from advloop.flows.steps import (
    append_labels,
    evaluate_step,
    explore_step,
    generation_candidates,
    initial_dataset,
    label_batch,
    label_one,
    select_step,
    train_step,
)
from advloop.flows.validation import validate_config
from advloop.potentials.committee import Committee
from advloop.potentials.dataset import Dataset


@pytest.fixture(scope="module")
def prepared_run(tmp_path_factory):
    """A run folder with its initial labels and a trained generation-0 committee."""
    from tests.flows.conftest import EXAMPLES, TINY_CONFIG

    root = tmp_path_factory.mktemp("explore")
    path = root / "tiny.yaml"
    path.write_text(
        TINY_CONFIG.format(
            name="nh3", structures=EXAMPLES / "structures" / "nh3.xyz", output_dir=root / "runs"
        )
    )
    config = validate_config(path)
    initial_dataset(config)
    for member in range(config.committee.n_members):
        train_step(config, 0, member)
    return config


def _with(config, tmp_path, **sections):
    """A copy of the prepared run (dataset and committee) under new settings: each of
    ``sections`` updates that section, except ``labels`` and ``exploration``, which it
    replaces (a kind and that kind's settings)."""
    data = yaml.safe_load(config.to_yaml())
    for name, v in sections.items():
        data[name] = v if name in ("labels", "exploration") else {**data[name], **v}
    new = RunConfig.model_validate({**data, "output_dir": str(tmp_path / "runs")})
    shutil.copytree(config.run_dir(), new.run_dir())
    return new


# committee MD whose fixed trust window takes every sampled frame
WIDE_MD = {
    "temperature": 800.0,
    "n_steps": 40,
    "sample_interval": 5,
    "trust_mode": "fixed",
    "trust_lower": 0.0,
    "trust_upper": 50.0,
}


@pytest.mark.parametrize(
    "strategy, extra",
    [
        ("random", {"std": 0.08, "n_per_seed": 2}),
        ("md", WIDE_MD),
        ("adversarial", {"n_steps": 5}),
    ],
)
def test_strategy_explores_selects_and_labels(prepared_run, tmp_path, strategy, extra):
    config = _with(prepared_run, tmp_path, exploration={"kind": strategy, "n_seeds": 3, **extra})
    report = explore_step(config, 0)
    candidates = generation_candidates(config, 0)
    trace = RunLayout(config.run_dir()).exploration_trace(0)
    assert trace.exists() == (strategy == "adversarial")
    if strategy == "adversarial":
        with np.load(trace) as t:
            assert t["objective"].shape == t["sigma"].shape == (6, 3)  # n_steps + 1, seeds
    expected = {"random": 6, "adversarial": 3}.get(strategy)
    if expected is not None:
        assert report.n_candidates == len(candidates) == expected
    assert report.n_candidates >= 1 and report.n_seeds == 3
    assert np.all(np.isfinite(candidates.sigma_f_mean)) and np.all(candidates.sigma_f_mean > 0)
    assert np.all((0 <= candidates.parent) & (candidates.parent < 6))  # dataset indices

    selected = select_step(config, 0, max_selected=2)
    assert 1 <= len(selected.selected) <= 2
    labelled = label_batch(config, 0, selected.selected)
    provenance = Dataset(RunLayout(config.run_dir()).dataset).provenance()
    assert labelled.added == len(selected.selected)
    assert [p.strategy for p in provenance[6:]] == [strategy] * labelled.added


def test_previous_seeds_start_from_the_last_generations_labels(prepared_run, tmp_path):
    config = _with(
        prepared_run,
        tmp_path,
        exploration={"kind": "random", "n_seeds": 2, "seeds": "previous", "std": 0.08},
    )
    explore_step(config, 0)
    labelled = label_batch(config, 0, select_step(config, 0, max_selected=2).selected)
    assert labelled.added == 2
    for member in range(config.committee.n_members):
        train_step(config, 1, member)
    explore_step(config, 1)
    assert sorted(set(generation_candidates(config, 1).parent.tolist())) == labelled.indices


def test_labels_one_structure_at_a_time_then_one_append(prepared_run, tmp_path):
    config = _with(
        prepared_run, tmp_path, exploration={"kind": "random", "n_seeds": 3, "std": 0.08}
    )
    explore_step(config, 0)
    sel = select_step(config, 0, max_selected=3)
    assert sel.n_above >= len(sel.selected) >= 2
    assert sel.sigma_f_max >= sel.sigma_f_mean > 0
    layout = RunLayout(config.run_dir())
    before = len(Dataset(layout.dataset))

    first = label_one(config, 0, sel.selected[0])
    assert first.ok and not first.cached and len(first.key) == 64
    assert len(Dataset(layout.dataset)) == before  # labelling writes the label store only
    assert label_one(config, 0, sel.selected[0]).cached  # and never computes a label twice

    partial = append_labels(config, 0, sel.selected)  # as if the other tasks had failed
    assert partial.added == 1 and partial.failed == len(sel.selected) - 1
    assert "no label in the store" in partial.failures[0]
    for index in sel.selected[1:]:
        assert label_one(config, 0, index).ok
    rest = append_labels(config, 0, sel.selected)
    # the report is of the batch as a whole: the label appended before counts as added
    assert (rest.added, rest.skipped_known, rest.failed) == (len(sel.selected), 0, 0)
    assert rest.indices == list(range(before, before + len(sel.selected)))
    assert len(Dataset(layout.dataset)) == before + len(sel.selected)
    again = append_labels(config, 0, sel.selected)  # appending again writes nothing...
    assert len(Dataset(layout.dataset)) == before + len(sel.selected)
    assert (again.added, again.indices) == (rest.added, rest.indices)  # ...and reports the same
    provenance = Dataset(layout.dataset).provenance()[before:]
    assert [p.strategy for p in provenance] == ["random"] * len(sel.selected)
    assert evaluate_step(config, 0, rest.indices)["n"] == len(sel.selected)


def test_relabelling_reads_the_label_store_instead_of_computing(prepared_run, tmp_path):
    config = _with(prepared_run, tmp_path)
    layout = RunLayout(config.run_dir())
    before = Dataset(layout.dataset).arrays()
    layout.dataset.unlink()  # the dataset is lost; the label store is not
    report = initial_dataset(config)
    assert report.cached == report.added == 6
    after = Dataset(layout.dataset).arrays()
    np.testing.assert_array_equal(after.energy, before.energy)
    np.testing.assert_array_equal(after.forces, before.forces)


def test_initial_structures_are_regenerated_exactly_for_an_older_run_folder(prepared_run, tmp_path):
    """A run folder from before the initial structures were kept in the run folder (or
    one whose copy was lost): they are generated again from the config's seed, equal to
    the labelled ones to the bit, so nothing is labelled again."""
    from advloop.flows.run_folder import read_initial
    from advloop.flows.steps import append_initial, prepare_initial

    config = _with(prepared_run, tmp_path)
    layout = RunLayout(config.run_dir())
    kept = np.stack([a.positions for a in read_initial(layout)])
    layout.initial_structures.unlink()
    assert prepare_initial(config) == []  # every structure already in the dataset
    np.testing.assert_array_equal(np.stack([a.positions for a in read_initial(layout)]), kept)
    stored = Dataset(layout.dataset).arrays()
    np.testing.assert_array_equal(
        stored.positions[: len(kept) * kept.shape[1]], kept.reshape(-1, 3)
    )
    size = len(Dataset(layout.dataset))
    report = append_initial(config)  # appends nothing, and reports the batch as before
    assert len(Dataset(layout.dataset)) == size
    assert (report.added, report.indices) == (len(kept), list(range(len(kept))))


def test_tblite_labels_a_run(prepared_run, tmp_path):
    config = _with(prepared_run, tmp_path, labels={"kind": "tblite"})
    RunLayout(config.run_dir()).dataset.unlink()
    report = initial_dataset(config)
    assert report.added == 6 and report.cached == 0  # another level of theory: new labels
    provenance = Dataset(RunLayout(config.run_dir()).dataset).provenance()
    assert {p.level_of_theory for p in provenance} == {"GFN2-xTB"}


def test_failed_scf_is_recorded_and_the_loop_goes_on(prepared_run, tmp_path):
    from advloop.flows.loop import check_failures
    from advloop.flows.steps import LabellingError

    config = _with(
        prepared_run,
        tmp_path,
        exploration={"kind": "random", "n_seeds": 3, "std": 0.08},
        labels={
            "kind": "pyscf",
            "method": "RHF",
            "basis": "STO-3G",
            "max_cycle": 1,
            "scf_ladder": ["default"],
            "conv_tol": 1e-12,
        },
    )
    explore_step(config, 0)
    selected = select_step(config, 0, max_selected=2).selected
    before = len(Dataset(RunLayout(config.run_dir()).dataset))
    report = label_batch(config, 0, selected)  # no exception: failures are outcomes
    assert report.failed == len(selected) and report.added == 0
    assert all("SCFConvergenceError" in f for f in report.failures)
    assert len(Dataset(RunLayout(config.run_dir()).dataset)) == before
    with pytest.raises(LabellingError, match="max_failure_ratio"):
        check_failures(config, report, "explored", 0)
    lenient = config.model_copy(
        update={"budget": config.budget.model_copy(update={"max_failure_ratio": 1.0})}
    )
    check_failures(lenient, report, "explored", 0)  # within the limit: the run goes on


def test_a_periodic_cell_runs_through_every_step(tmp_path):
    """A 4-atom fcc Cu cell labelled by EMT (a stand-in oracle; the test is about cells
    and periodic images in training, the attack, selection and the dataset)."""
    from ase.build import bulk
    from ase.io import write

    from tests.flows.conftest import TINY_CONFIG

    write(tmp_path / "cu.extxyz", bulk("Cu", "fcc", a=3.6, cubic=True))
    path = tmp_path / "cu.yaml"
    path.write_text(
        TINY_CONFIG.format(
            name="cu", structures=tmp_path / "cu.extxyz", output_dir=tmp_path / "runs"
        ).replace("labels: {kind: pyscf, method: RHF, basis: STO-3G}", "labels: {kind: emt}")
    )
    config = validate_config(path)
    initial_dataset(config)
    for member in range(config.committee.n_members):
        train_step(config, 0, member)
    explore_step(config, 0)
    selected = select_step(config, 0, max_selected=2).selected
    report = label_batch(config, 0, selected)
    assert report.added == len(selected) >= 1
    data = Dataset(RunLayout(config.run_dir()).dataset).arrays()
    assert data.pbc.all() and np.allclose(data.cell, np.eye(3) * 3.6)
    candidates = generation_candidates(config, 0)
    assert candidates.pbc.all() and np.allclose(candidates.cells, np.eye(3) * 3.6)
    # calibration predicts the new labels with their periodic images
    new = data.subset(report.indices)
    pred = Committee.from_checkpoints(
        RunLayout(config.run_dir()).committee_checkpoints(0)
    ).predict_arrays(new.numbers, new.positions, new.n_atoms, new.cell, new.pbc)
    errors = np.linalg.norm(pred.forces_mean - new.forces, axis=1)
    calibration = evaluate_step(config, 0, report.indices)
    assert calibration["observed_mean"] == pytest.approx(errors.mean(), rel=1e-5)


def test_periodic_cells_need_a_periodic_labeller(tmp_path):
    from ase.build import bulk
    from ase.io import write

    from advloop.flows.config import ConfigError
    from tests.flows.conftest import TINY_CONFIG

    write(tmp_path / "cu.extxyz", bulk("Cu", "fcc", a=3.6, cubic=True))
    path = tmp_path / "cu.yaml"
    path.write_text(
        TINY_CONFIG.format(
            name="cu", structures=tmp_path / "cu.extxyz", output_dir=tmp_path / "runs"
        )
    )
    with pytest.raises(ConfigError, match="pyscf_periodic or tblite"):
        validate_config(path)


def test_attack_pools_with_a_diverse_element_weighted_selection(prepared_run, tmp_path):
    config = _with(
        prepared_run,
        tmp_path,
        exploration={"kind": "adversarial", "n_seeds": 3, "n_steps": 6, "pool_every": 2},
        selection={"method": "diverse", "weighting": "element", "max_selected": 2},
    )
    report = explore_step(config, 0)
    candidates = generation_candidates(config, 0)
    # three endpoints and, for every seed still attacked there, the geometries of steps 2, 4
    assert 3 < len(candidates) <= 9 and report.n_candidates == len(candidates)
    per_seed_peak = [
        candidates.sigma_f_mean[candidates.parent == p].max() for p in set(candidates.parent)
    ]
    assert report.sigma_f_mean == pytest.approx(np.mean(per_seed_peak))
    selected = select_step(config, 0, max_selected=2)
    assert 1 <= len(selected.selected) <= 2
    assert set(selected.rejected) | set(selected.selected) == set(range(len(candidates)))
    assert set(selected.rejected_counts()) <= {
        "below_threshold",
        "duplicate",
        "redundant",
        "over_cap",
        "known",
    }


def test_md_frame_seeds_start_where_dynamics_goes(prepared_run, tmp_path):
    data = Dataset(RunLayout(prepared_run.run_dir()).dataset).arrays()
    config = _with(
        prepared_run,
        tmp_path,
        system={"temperature": 600.0},
        exploration={
            "kind": "random",
            "n_seeds": 2,
            "seeds": "md_frames",
            "seed_md_steps": 30,
            "std": 1e-4,
        },
    )
    explore_step(config, 0)
    candidates = generation_candidates(config, 0)
    lowest = np.argsort(data.energy / data.n_atoms, kind="stable")[:2]
    assert sorted(set(candidates.parent.tolist())) == sorted(lowest.tolist())
    starts = candidates.starts
    for k, parent in enumerate(candidates.parent):
        seed = data.subset([int(parent)]).positions
        moved = candidates.positions[starts[k] : starts[k + 1]] - seed
        # 30 fs of dynamics at 600 K moves the atoms by far more than the 1e-4 Å noise
        assert np.sqrt(np.mean(np.sum(moved**2, axis=1))) > 1e-2


def test_md_frame_seeds_need_the_application_temperature(prepared_run, tmp_path):
    with pytest.raises(ValueError, match="system.temperature"):
        _with(prepared_run, tmp_path, exploration={"kind": "random", "seeds": "md_frames"})


def test_calibration_scale_comes_from_labels_earlier_committees_had_not_seen(
    prepared_run, tmp_path
):
    from advloop.flows import run_folder
    from advloop.flows.records import GenerationRecord
    from advloop.flows.steps import calibration_scale
    from advloop.potentials.uncertainty import conformal_scale

    config = _with(
        prepared_run,
        tmp_path,
        convergence={
            "criterion": "calibrated_error",
            "force_error_tolerance": 1e3,
            "coverage": 0.8,
            "min_calibration_labels": 4,
        },
    )
    explore_step(config, 0)
    labelled = label_batch(config, 0, select_step(config, 0, max_selected=2).selected)
    cal = evaluate_step(config, 0, labelled.indices)
    assert len(cal["sigmas"]) == len(cal["errors"]) == labelled.added == 2
    assert np.mean(cal["sigmas"]) == pytest.approx(cal["predicted_mean"])
    assert np.mean(cal["errors"]) == pytest.approx(cal["observed_mean"])
    root = config.run_dir()
    run_folder.append_generation(
        root,
        GenerationRecord(0, calibration_sigmas=cal["sigmas"], calibration_errors=cal["errors"]),
    )
    assert np.isnan(calibration_scale(config, 1))  # 2 labels, fewer than 4
    sigmas, errors = [0.1, 0.2, 0.3, 0.4], [0.3, 0.1, 0.9, 0.4]
    run_folder.append_generation(
        root, GenerationRecord(1, calibration_sigmas=sigmas, calibration_errors=errors)
    )
    expected = conformal_scale(
        np.array(cal["errors"] + errors), np.array(cal["sigmas"] + sigmas), 0.8
    )
    assert calibration_scale(config, 2) == pytest.approx(expected)
    assert np.isnan(calibration_scale(config, 1))  # generation 1's own labels do not count
    # with that scale, every candidate's bound is far below a 1000 eV/Å tolerance: none
    # is worth labelling, and each says why
    for member in range(config.committee.n_members):
        train_step(config, 2, member)
    report = explore_step(config, 2)
    assert report.calibration_scale == pytest.approx(expected)
    assert report.error_bound == pytest.approx(expected * report.sigma_f_mean)
    selected = select_step(config, 2, max_selected=2)
    assert selected.selected == []
    assert all("calibrated error bound" in r.detail for r in selected.rejected.values())


def test_a_generation_short_of_candidates_says_so(prepared_run, tmp_path, caplog):
    import logging

    from advloop.flows.loop import LocalJobs, run_generation

    config = _with(
        prepared_run,
        tmp_path,
        exploration={"kind": "random", "n_seeds": 1, "n_per_seed": 1, "std": 0.05},
        selection={"max_selected": 3},
    )
    with caplog.at_level(logging.WARNING, logger="advloop.flows.loop"):
        out = run_generation(config, LocalJobs(), 0, max_selected=10, final=False)
    record = out.record
    assert record.selection_cap == 3 and record.selected == 1
    assert any(
        "gave only 1 candidates worth labelling, fewer than the 3" in r.getMessage()
        for r in caplog.records
    )


def test_hybrid_attack_and_md_candidates_compete_in_one_selection(prepared_run, tmp_path, caplog):
    import logging

    from advloop.flows.loop import LocalJobs, run_generation

    md = {**WIDE_MD, "max_frames_per_seed": 2}
    config = _with(
        prepared_run,
        tmp_path,
        exploration={
            "kind": "hybrid",
            "n_seeds": 3,
            "seeds": "lowest_energy",
            "attack": {"n_steps": 6, "pool_every": 0},
            "md": md,
        },
        selection={"max_selected": 4, "percentile": 0.0},
    )
    assert config.exploration.attack.min_distance_factor == config.geometry.min_distance_factor
    with caplog.at_level(logging.INFO, logger="advloop.progress"):
        report = explore_step(config, 0)
    progress = [r.getMessage() for r in caplog.records if r.name == "advloop.progress"]
    assert any(line.startswith("attack gen 0: step 0 of 6") for line in progress)
    assert any(line.startswith("committee MD gen 0: step 0 of 40") for line in progress)
    candidates = generation_candidates(config, 0)
    # the attack's three endpoints first, then two window frames of each seed's MD
    assert report.sources == {"adversarial": 3, "md": 6}
    assert len(candidates) == report.n_candidates == 9
    assert candidates.parent[:3].tolist() == sorted(candidates.parent[3:].tolist())[::2]
    assert RunLayout(config.run_dir()).exploration_trace(0).exists()
    # MD frames sit on a thermal trajectory, not at the attack's endpoints
    starts = candidates.starts
    first_md = candidates.positions[starts[3] : starts[4]]
    assert not np.allclose(first_md, candidates.positions[starts[0] : starts[1]])
    assert report.source_of([0, 2, 3, 8]) == {"adversarial": 2, "md": 2}

    out = run_generation(config, LocalJobs(), 0, max_selected=4, final=False)
    record = out.record
    assert sum(record.selected_sources.values()) == record.selected == record.labels_added
    assert set(record.selected_sources) == {"adversarial", "md"}
    provenance = Dataset(RunLayout(config.run_dir()).dataset).provenance()
    assert [p.strategy for p in provenance[6:]] == ["hybrid"] * record.labels_added


def test_hybrid_parts_take_the_geometry_section(prepared_run, tmp_path):
    with pytest.raises(ValueError, match="set geometry.min_distance_factor instead"):
        _with(
            prepared_run,
            tmp_path,
            exploration={"kind": "hybrid", "md": {"min_distance_factor": 0.3}},
        )
    config = _with(
        prepared_run,
        tmp_path,
        exploration={"kind": "hybrid", "attack": {"n_steps": 7}},
        geometry={"min_distance_factor": 0.4},
    )
    assert config.exploration.attack.pool_every == 10  # the run's default, not the library's
    assert config.exploration.attack.n_steps == 7
    assert config.exploration.md.min_distance_factor == 0.4
    assert RunConfig.model_validate(yaml.safe_load(config.to_yaml())) == config
    # a hybrid made from an attack config keeps that attack, with MD's defaults beside it
    hybrid = prepared_run.exploring("hybrid", md={"temperature": 900.0}).exploration
    assert hybrid.attack.n_steps == prepared_run.exploration.n_steps == 5
    assert (hybrid.md.temperature, hybrid.n_seeds) == (900.0, prepared_run.exploration.n_seeds)
