"""`advloop serve`'s deployments, built without a server and without blocking."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advloop.flows.cli import app
from advloop.flows.config import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ammonia.yaml"


def test_builder_gives_the_submissions_and_a_scheduled_deployment(tiny_config, tmp_path):
    from prefect.flows import load_flow_from_entrypoint

    from advloop.flows.deployments import DEFAULT_DEPLOYMENT, build_deployments

    submissions, scheduled = build_deployments([tiny_config], cron="0 2 * * *")
    assert f"{submissions.flow_name}/{submissions.name}" == DEFAULT_DEPLOYMENT
    assert submissions.schedules == [] and submissions.parameters == {}
    assert submissions.entrypoint == "advloop.flows.deployments.run_submission"

    assert (scheduled.flow_name, scheduled.name) == ("advloop-run-config", "nh3-tiny")
    (schedule,) = scheduled.schedules
    assert schedule.schedule.cron == "0 2 * * *" and schedule.active
    assert scheduled.parameters == {
        "config_path": str(tiny_config.resolve()),
        "output_dir": str(tmp_path / "runs"),
    }
    assert set(scheduled.tags) == {"advloop", "nh3-tiny"}
    # what a worker or the serving process will load
    assert load_flow_from_entrypoint(scheduled.entrypoint).name == "advloop-run-config"
    assert load_flow_from_entrypoint(submissions.entrypoint).name == "advloop-submission"


def test_the_project_file_deploys_the_flows_serve_builds(tmp_path, monkeypatch):
    """infra/prefect.yaml (``prefect deploy``) names the same module-path entrypoints as
    ``advloop serve``, and a worker can load them wherever advloop is installed."""
    import yaml
    from prefect.flows import load_flow_from_entrypoint

    from advloop.flows.deployments import build_deployments

    project = yaml.safe_load((EXAMPLE.parents[1] / "infra" / "prefect.yaml").read_text())
    monkeypatch.chdir(tmp_path)  # the example's output_dir, runs/, is relative
    entrypoints = {d["name"]: d["entrypoint"] for d in project["deployments"]}
    submissions, scheduled = build_deployments([EXAMPLE])
    assert entrypoints == {"submissions": submissions.entrypoint, "ammonia": scheduled.entrypoint}
    assert entrypoints["submissions"] == "advloop.flows.deployments.run_submission"
    names = {name: load_flow_from_entrypoint(e).name for name, e in entrypoints.items()}
    assert names == {"submissions": "advloop-submission", "ammonia": "advloop-run-config"}


def test_builder_relative_output_dir_becomes_absolute(tmp_path, monkeypatch):
    from advloop.flows.deployments import build_deployments

    monkeypatch.chdir(tmp_path)
    _, scheduled = build_deployments([EXAMPLE], cron="30 1 * * 1", timezone="Europe/Berlin")
    assert scheduled.name == "ammonia"
    assert scheduled.parameters["output_dir"] == str(tmp_path / "runs")
    assert scheduled.schedules[0].schedule.timezone == "Europe/Berlin"


def test_builder_refuses_bad_input(tiny_config, tmp_path):
    from advloop.flows.deployments import build_deployments

    with pytest.raises(ValueError, match="Invalid cron string"):
        build_deployments([tiny_config], cron="every night")
    with pytest.raises(ValueError, match="both run system 'nh3-tiny'"):
        build_deployments([tiny_config, tiny_config])
    bad = tmp_path / "bad.yaml"
    bad.write_text("system: {name: x, structures: missing.xyz}\n")
    with pytest.raises(ConfigError, match="missing.xyz"):
        build_deployments([bad])


def test_serve_command_serves_the_built_deployments(tiny_config, monkeypatch):
    """(tests/flows/test_schedules.py serves them on real servers.)"""
    import datetime
    import threading

    import prefect

    import advloop.flows.deployments as deployments
    from advloop.flows import schedule_names

    served, watched = {}, {}

    def serve(*d, **kw):
        served.update(deployments=d, **kw)
        for thread in threading.enumerate():  # the schedules' report, printed meanwhile
            if thread.name == "advloop-schedules":
                thread.join(10)

    def watch(names, before):
        watched.update(names=names, before=before)
        yield names[0], datetime.datetime(2031, 1, 2, 2, 0, tzinfo=datetime.timezone.utc)

    def keep_naming(systems, stop):
        named.update(systems=systems, stopped_after_serve=stop.wait(30))

    named: dict = {}
    monkeypatch.setattr(prefect, "serve", serve)
    monkeypatch.setattr(schedule_names, "keep_naming", keep_naming)
    monkeypatch.setattr(deployments, "server_client", contextlib.nullcontext)
    monkeypatch.setattr(deployments, "schedule_ids", lambda names: frozenset({"earlier"}))
    monkeypatch.setattr(deployments, "watch_schedules", watch)
    monkeypatch.setattr(deployments, "api_url", lambda: "http://user:secret@127.0.0.1:4200/api")
    result = CliRunner().invoke(
        app, ["serve", "--config", str(tiny_config), "--cron", "15 3 * * *", "--limit", "2"]
    )
    assert result.exit_code == 0, result.output
    names = [f"{d.flow_name}/{d.name}" for d in served["deployments"]]
    assert names == ["advloop-submission/submissions", "advloop-run-config/nh3-tiny"]
    assert served["deployments"][1].schedules[0].schedule.cron == "15 3 * * *"
    assert served["limit"] == 2
    assert "serving advloop-run-config/nh3-tiny, cron '15 3 * * *'" in result.stdout
    assert "secret" not in result.output and "http://127.0.0.1:4200/api" in result.stdout
    # the scheduled deployment's next run, once the server has made it
    assert watched == {"names": ["advloop-run-config/nh3-tiny"], "before": frozenset({"earlier"})}
    assert (
        result.stdout.splitlines()[-1]
        == "next run of advloop-run-config/nh3-tiny: 2031-01-02 02:00 UTC"
    )
    # the scheduled runs are named after their system until serving stops
    for thread in threading.enumerate():
        if thread.name == "advloop-schedule-names":
            thread.join(30)
    assert named == {
        "systems": {"advloop-run-config/nh3-tiny": "nh3-tiny"},
        "stopped_after_serve": True,
    }


def test_serve_command_refuses_bad_input_without_serving(tiny_config, tmp_path, monkeypatch):
    import prefect

    monkeypatch.setattr(prefect, "serve", lambda *a, **k: pytest.fail("served"))
    result = CliRunner().invoke(
        app, ["serve", "--config", str(tiny_config), "--cron", "61 * * * *"]
    )
    assert result.exit_code == 2 and "Invalid cron string" in result.stderr
    result = CliRunner().invoke(
        app, ["serve", "--config", str(tiny_config), "--timezone", "Mars/Base"]
    )
    assert result.exit_code == 2 and "Invalid timezone" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("system: {name: x, structures: missing.xyz}\n")
    result = CliRunner().invoke(app, ["serve", "--config", str(bad)])
    assert result.exit_code == 2 and "missing.xyz" in result.stderr
