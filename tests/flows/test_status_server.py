"""`advloop status --server` finds each flow run's run folder from the flow run's own
parameters (the loop's RunConfig, a submission's output_dir and YAML, a scheduled run's
config file), not from ./runs, and says what that folder holds or why it cannot be read
from here; checked on Prefect's test server with a real run (EMT labels) written
outside ./runs."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from advloop.flows.cli import app
from advloop.flows.server_runs import (
    CONFIG_FILE_FLOW,
    LOOP_FLOW,
    NamedFolder,
    deployment_workdir,
    named_folder,
)
from tests.flows.configs import EXAMPLES
from tests.flows.prefect_server import EMT_RUN_CONFIG


def _emt_config(path: Path, name: str, output_dir: str) -> Path:
    text = EMT_RUN_CONFIG.format(name=name, structures=EXAMPLES / "structures" / "nh3.xyz")
    path.write_text(text.replace("output_dir: runs", f"output_dir: {output_dir}"))
    return path


def test_a_flow_runs_parameters_name_its_run_folder(tmp_path):
    here = tmp_path / "here"
    loop = {"config": {"system": {"name": "a"}, "output_dir": "/scratch/runs"}}
    assert named_folder(LOOP_FLOW, loop) == NamedFolder("a", Path("/scratch/runs/a"))
    relative = named_folder(
        LOOP_FLOW, {"config": {"system": {"name": "a"}, "output_dir": "out"}}, here
    )
    assert relative.path == here / "out" / "a" and "relative output_dir 'out'" in relative.note
    submitted = {"config_yaml": "system: {name: b}\n", "output_dir": "/shared/runs"}
    assert named_folder("advloop-submission", submitted).path == Path("/shared/runs/b")
    config = _emt_config(tmp_path / "c.yaml", "c", str(tmp_path / "c-runs"))
    by_file = named_folder(CONFIG_FILE_FLOW, {"config_path": str(config), "output_dir": None})
    assert by_file == NamedFolder("c", tmp_path / "c-runs" / "c")
    gone = named_folder(CONFIG_FILE_FLOW, {"config_path": "/nowhere/c.yaml", "output_dir": None})
    assert (
        gone.path is None
        and gone.note == "config file /nowhere/c.yaml not visible from this machine"
    )
    assert named_folder(LOOP_FLOW, {"config": "<unserializable>"}).system is None
    # a deployment's flow runs start in its pull step's folder (prefect deploy) or its path
    pulled = SimpleNamespace(
        pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": "/c"}}],
        path=None,
    )
    assert deployment_workdir(pulled) == Path("/c")
    assert deployment_workdir(SimpleNamespace(pull_steps=None, path="/served")) == Path("/served")
    assert deployment_workdir(SimpleNamespace(pull_steps=[], path=".")) is None
    by_checkout = named_folder(CONFIG_FILE_FLOW, {"config_path": "c.yaml"}, workdir=tmp_path)
    assert by_checkout.path == tmp_path / "c-runs" / "c"


@pytest.mark.slow
def test_status_server_reads_the_folders_the_flow_runs_name(prefect_backend, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    from advloop.flows.active_learning import run_active_learning, run_config_file
    from advloop.flows.deployments import TAG, Submission, run_submission
    from advloop.flows.report import GenerationTable
    from advloop.flows.validation import validate_config

    # a finished run (the loop flow) written to elsewhere/, not ./runs
    done = validate_config(
        _emt_config(tmp_path / "done.yaml", "status-done", str(tmp_path / "elsewhere"))
    )
    summary = run_active_learning(done, GenerationTable(io.StringIO()))
    # a submission whose folder is on a worker's disk, and a scheduled run of a config file
    # whose (relative) output_dir exists here but whose run has not started
    far = _emt_config(tmp_path / "far.yaml", "status-far", "/nonexistent-scratch/runs")
    packed = Submission.pack(far, validate_config(far, run_folder=False))
    # (as prefect deploy of infra/prefect.yaml makes it: paths relative to the checkout
    # its pull step names)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    _emt_config(checkout / "later.yaml", "status-later", "later-runs")
    with get_client(sync_client=True) as client:
        client.create_flow_run(
            run_submission,
            name="status-far",
            parameters=packed.parameters(),
            tags=[TAG, "status-far"],
            state=Scheduled(),
        )
        deployment = client.create_deployment(
            client.create_flow(run_config_file),
            "status-later",
            parameters={"config_path": "later.yaml", "output_dir": None},
            tags=[TAG, "status-later"],
            pull_steps=[
                {"prefect.deployments.steps.set_working_directory": {"directory": str(checkout)}}
            ],
        )
        client.create_flow_run_from_deployment(
            deployment,
            name="random-name",  # what the server's scheduler calls it until it starts
            tags=["auto-scheduled", TAG, "status-later"],
            state=Scheduled(),
        )
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # no ./runs here, nor the checkout's files

    listing = CliRunner().invoke(app, ["status", "--server"])
    assert listing.exit_code == 0, listing.output
    lines = listing.stdout.splitlines()
    assert "no run folders in runs" in lines[0]

    def below(first_column: str) -> tuple[list[str], str]:
        (i,) = [i for i, line in enumerate(lines) if line.split()[:1] == [first_column]]
        return lines[i].split(), lines[i + 1].strip()

    row, folder = below("status-done")
    assert row[1:4] == ["status-done", LOOP_FLOW, "Completed"]
    assert folder.startswith(f"run folder {tmp_path / 'elsewhere' / 'status-done'}: stopped: ")
    assert summary["stop_reason"] in folder and f"{summary['dataset_size']} structures" in folder
    assert "last activity" in folder
    row, folder = below("status-far")
    assert row[1:4] == ["status-far", "advloop-submission", "Scheduled"]
    assert folder == (
        "run folder /nonexistent-scratch/runs/status-far: not visible from this machine "
        "(no folder /nonexistent-scratch/runs here)"
    )
    row, folder = below("random-name")
    assert row[1:4] == ["status-later", CONFIG_FILE_FLOW, "Scheduled"]
    assert folder == (
        f"run folder {checkout / 'later-runs' / 'status-later'} (relative output_dir "
        f"'later-runs', read from the deployment's working directory {checkout}): not made "
        "yet (the flow run has not started)"
    )
    # the generation sub-flows and the submission's own loop are parts of these runs
    assert "advloop-generation" not in listing.stdout

    # one run, not under ./runs: found through its flow run's parameters
    one = CliRunner().invoke(app, ["status", "status-done", "--server"])
    assert one.exit_code == 0, one.output
    first = one.stdout.splitlines()[0]
    assert first.startswith(f"status-done: stopped: {summary['stop_reason']} (last activity")
    assert first.endswith(f"run folder {tmp_path / 'elsewhere' / 'status-done'}")
    assert "σF att. mean" in one.stdout  # its generations
    # one whose folder is not visible: the server's flow runs, and why
    unseen = CliRunner().invoke(app, ["status", "status-far", "--server"])
    assert unseen.exit_code == 0, unseen.output
    assert unseen.stdout.startswith("no run folder yet: ")
    assert "not visible from this machine" in unseen.stdout
