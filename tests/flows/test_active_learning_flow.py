"""End to end: the active-learning flow on NH3 under Prefect's test harness, with real
PySCF labels (RHF/STO-3G to keep it cheap) and real schnetpack committees; what the
Prefect server holds afterwards (flow runs, artifacts, events) is read back through its
API."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from ase.io import read
from ase.units import Hartree
from pyscf import gto, scf
from typer.testing import CliRunner

from advloop.calculators.committee_calculator import CommitteeCalculator
from advloop.flows.cli import app
from advloop.flows.report import GenerationTable
from advloop.flows.run_folder import RunLayout, read_generations
from advloop.flows.validation import validate_config
from advloop.potentials.dataset import Dataset


@pytest.mark.slow
def test_tiny_run_end_to_end_and_resume(prefect_backend, tiny_config, tmp_path):
    from advloop.flows.active_learning import run_active_learning

    config = validate_config(tiny_config)
    stream = io.StringIO()
    summary = run_active_learning(config, GenerationTable(stream))

    layout = RunLayout(config.run_dir())
    assert summary["stop_reason"] == "max_generations"
    assert json.loads(layout.summary.read_text()) == summary
    printed = stream.getvalue()
    assert "σF att. mean" in printed and "generation budget spent" in printed
    # progress lines of the local reporter (plain lines: the stream is not a terminal)
    assert "gen 0: member 0 trained" in printed and "gen 1: member 1 trained" in printed
    assert (
        f"gen 0: {summary['labels_explored']} of {summary['labels_explored']} labels done"
        in printed
    )

    _check_prefect_server(summary)
    _check_figures(summary, RunLayout(config.run_dir()))

    # Dataset: 6 initial + the adversarial labels, with provenance.
    dataset = Dataset(layout.dataset)
    provenance = dataset.provenance()
    assert summary["labels_explored"] >= 1
    assert len(dataset) == 6 + summary["labels_explored"]
    adversarial = [i for i, p in enumerate(provenance) if p.strategy == "adversarial"]
    assert len(adversarial) == summary["labels_explored"]
    for i in adversarial:
        assert provenance[i].generation == 0
        assert 0 <= provenance[i].parent < 6
        assert provenance[i].level_of_theory == "RHF/STO-3G"

    # A stored label is the DFT energy of its geometry, computed independently here.
    atoms = dataset.to_atoms([adversarial[0]])[0]
    mol = gto.M(
        atom=[(s, p) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
        basis="STO-3G",
        unit="Angstrom",
        verbose=0,
    )
    assert atoms.get_potential_energy() == pytest.approx(scf.RHF(mol).kernel() * Hartree, abs=1e-5)

    # Calibration of the committee's spread on the structures it had not seen.
    records = [json.loads(line) for line in layout.generations.read_text().splitlines()]
    assert records[0]["calibration_n"] == summary["labels_explored"]
    assert records[0]["calibration_observed_mean"] > 0

    # Each generation's wall time is split into compute phases and orchestration.
    phases = ("training", "exploration", "selection", "labelling", "orchestration")
    for record in records:
        split = [record[f"seconds_{p}"] for p in phases]
        assert min(split) >= 0 and sum(split) == pytest.approx(record["seconds"], rel=1e-6)
        assert record["seconds_training"] > 0
    assert records[0]["seconds_labelling"] > 0 and records[1]["seconds_labelling"] == 0
    assert "calib" in printed

    # Committees of generation 0 and the final generation 1 are on disk and load as a calculator.
    assert layout.trained_generations() == [0, 1]
    # bootstrap (on in the tiny config): members train on resamples with repeats
    from advloop.potentials.checkpoint import checkpoint_metrics

    metrics = [checkpoint_metrics(p) for p in layout.committee_checkpoints(0)]
    assert any(m["n_train_unique"] < m["n_train"] for m in metrics)
    calc = CommitteeCalculator.from_run(layout.root)
    probe = atoms.copy()
    probe.calc = calc
    assert np.isfinite(probe.get_potential_energy())
    assert calc.results["forces_std"].shape == (4,)

    # Export: ase.io.read gives the DFT energies and forces back.
    out = tmp_path / "data.extxyz"
    result = CliRunner().invoke(
        app, ["export", str(layout.root), "--format", "extxyz", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    frames = read(str(out), ":")
    assert len(frames) == len(dataset)
    arrays = dataset.arrays()
    assert [f.get_potential_energy() for f in frames] == pytest.approx(list(arrays.energy))
    assert np.allclose(np.concatenate([f.get_forces() for f in frames]), arrays.forces)

    spk_db = tmp_path / "data.db"
    result = CliRunner().invoke(
        app, ["export", str(layout.root), "--format", "schnetpack", "-o", str(spk_db)]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {len(dataset)} structures" in result.output

    # Re-running the finished run recomputes nothing: same dataset, same checkpoints.
    mtimes = {p: p.stat().st_mtime_ns for p in layout.root.glob("committee/*/*.pt")}
    again = run_active_learning(config, GenerationTable(io.StringIO()))
    assert again["dataset_size"] == summary["dataset_size"]
    assert Dataset(layout.dataset).hashes() == dataset.hashes()
    assert {p: p.stat().st_mtime_ns for p in layout.root.glob("committee/*/*.pt")} == mtimes
    # it ran no generation, so its figures were published once, at the end
    assert [len(v) for v in _figure_artifacts().values()] == [2, 2, 2]

    # A larger generation budget continues the finished run: its last committee (which
    # only trained) now explores, and one more generation trains.
    longer = config.model_copy(
        update={"budget": config.budget.model_copy(update={"max_generations": 2})}
    )
    extended = run_active_learning(longer, GenerationTable(io.StringIO()))
    assert extended["stop_reason"] == "max_generations" and extended["generations"] == 3
    assert extended["dataset_size"] > summary["dataset_size"]
    assert layout.trained_generations() == [0, 1, 2]
    assert {
        p: p.stat().st_mtime_ns for p in layout.root.glob("committee/gen_00[01]/*.pt")
    } == mtimes

    # A generation whose next step would start past the wall-time deadline stops there
    # (its committee is on disk already; exploring would be the next step).
    from advloop.flows.active_learning import PrefectJobs, generation_flow

    cut = generation_flow(
        longer, 2, 5, False, time.time(), PrefectJobs(GenerationTable(io.StringIO()))
    )
    assert cut.interrupted and not cut.record.explored
    assert not layout.candidates(2).exists()


def _figure_artifacts() -> dict[str, list]:
    """Every version of each figure artifact of nh3-tiny, by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from advloop.flows.artifacts import FIGURES

    keys = [f"nh3-tiny-{what}" for what in FIGURES]
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys))
        )
    return {key: [a for a in found if a.key == key] for key in keys}


def _check_figures(summary: dict, layout: RunLayout) -> None:
    """The figures' artifacts: one version after generation 0 (the only one that added
    labels; the final generation only trained), drawn from the run folder's records and
    dataset."""
    import base64
    import re
    import xml.etree.ElementTree as ET

    by_key = _figure_artifacts()
    assert [len(versions) for versions in by_key.values()] == [1, 1, 1], by_key

    def marks(key: str, kind: str) -> list[ET.Element]:
        [artifact] = by_key[key]
        assert artifact.type == "markdown"
        uri = re.search(r"\]\(data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", artifact.data)
        assert uri, artifact.data[:500]
        svg = ET.fromstring(base64.b64decode(uri.group(1)).decode())
        return [e for e in svg.iter() if e.get("class") == kind]

    [record] = [r for r in read_generations(layout.root) if r.calibration_sigmas]
    n = summary["labels_explored"]
    assert len(record.calibration_sigmas) == n == len(marks("nh3-tiny-calibration", "point"))
    assert len(marks("nh3-tiny-energies", "point")) == summary["dataset_size"]
    assert len(marks("nh3-tiny-geometries", "atom")) == 4 * min(n, 4)  # NH3: 4 atoms each
    assert "geometries of gen 0" in by_key["nh3-tiny-geometries"][0].data


def _check_prefect_server(summary: dict) -> None:
    """The flow runs, artifacts and events the tiny run left on the Prefect server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterTags,
    )
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    from advloop.flows.artifacts import TABLE_COLUMNS

    with get_client(sync_client=True) as client:
        # One flow run for the run, one sub-flow run per generation, all tagged with the system.
        runs = {
            r.name: r
            for r in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["nh3-tiny"]))
            )
        }
        assert set(runs) == {"nh3-tiny", "nh3-tiny-gen000", "nh3-tiny-gen001"}
        top = runs["nh3-tiny"]
        assert top.parent_task_run_id is None and top.state.is_completed()
        assert "generation budget spent" in top.state.message  # why it stopped
        for name in ("nh3-tiny-gen000", "nh3-tiny-gen001"):
            assert runs[name].parent_task_run_id is not None and runs[name].state.is_completed()
        # the initial structures labelled by one task each, in the run's own flow run
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [top.id]}))
        assert sorted(t.name for t in task_runs if t.name.startswith("label-")) == sorted(
            f"label-initial-{k}" for k in range(summary["labels_initial"])
        )
        # no task run carries the system tag: a tagged one takes a tag concurrency slot on
        # the server (two writes per task, SQLite lock retries on the embedded server)
        every_task = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": [r.id for r in runs.values()]})
        )
        assert every_task and all("nh3-tiny" not in t.tags for t in every_task)

        # the progress lines the terminal shows reach the UI's logs too
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        logs = [
            log.message
            for log in client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=[r.id for r in runs.values()]))
            )
        ]
        assert any(line.startswith("gen 0: member ") and ", 1 of 2" in line for line in logs)
        n = summary["labels_explored"]
        assert f"gen 0: {n} of {n} labels done" in logs
        assert (
            f"initial: {summary['labels_initial']} of {summary['labels_initial']} labels done"
            in logs
        )

        artifacts = {}
        for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(
                    any_=["nh3-tiny-generations", "nh3-tiny-labelling", "nh3-tiny-summary"]
                )
            )
        ):
            artifacts.setdefault(a.key, []).append(a)
        # The table: a version per generation, the last one with a row for each.
        tables = sorted(artifacts["nh3-tiny-generations"], key=lambda a: a.created)
        assert len(tables) == 2
        rows = json.loads(tables[-1].data)
        assert [r["generation"] for r in rows] == [0, 1]
        assert list(rows[0]) == list(TABLE_COLUMNS)
        assert rows[0]["labels_added"] == summary["labels_explored"]
        assert (
            rows[0]["sigma_f_attacked_mean_eV_A"] > 0 and rows[0]["sigma_f_selected_max_eV_A"] > 0
        )
        assert rows[0]["val_forces_mae_eV_A"] > 0 and rows[1]["labels_added"] is None
        # labelling progress: the initial structures' tasks, then generation 0's
        progress = sorted(artifacts["nh3-tiny-labelling"], key=lambda a: a.created)
        assert [float(p.data) for p in progress] == [100.0, 100.0]
        assert progress[0].description.startswith("initial: ")
        assert progress[1].description.startswith("gen 0: ")
        # the summary: a live version after each generation, before the run ended, then
        # the final one, all one artifact
        summaries = sorted(artifacts["nh3-tiny-summary"], key=lambda a: a.created)
        assert len(summaries) == 3
        assert summaries[0].data.startswith("# nh3-tiny: running\n\n**generation 0 finished**")
        assert summaries[0].created < top.end_time
        markdown = summaries[-1]
        assert "generation budget spent" in markdown.data
        assert "](data:image/svg+xml;base64," in markdown.data

        # Events an automation can act on (the server stores them a moment later).
        wanted = {"advloop.generation.finished": 2, "advloop.run.stopped": 1}
        for _ in range(60):
            page = client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(prefix=["advloop."]),
                    resource=EventResourceFilter(id=["advloop.run.nh3-tiny"]),
                ),
                limit=50,
            )
            found = [e.event for e in page.events]
            if all(found.count(k) >= n for k, n in wanted.items()):
                break
            time.sleep(0.5)
        assert all(found.count(k) == n for k, n in wanted.items()), found
        stopped = next(e for e in page.events if e.event == "advloop.run.stopped")
        assert stopped.payload["stop_reason"] == "max_generations"
        assert any(r.id.startswith("prefect.flow-run.") for r in stopped.related)
