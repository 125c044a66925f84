"""The crash-detection automation (flows/automations.py, `advloop automations create`):
what it is, that creating it is idempotent on a real server, and that it marks a flow
run killed with `kill -9` Crashed while leaving a live one (heartbeats flowing) alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from advloop.flows.automations import (
    CRASH_AUTOMATION,
    DEFAULT_HEARTBEAT_SECONDS,
    crash_automation,
    ensure_automation,
    ensure_crash_automation,
    signature,
)
from advloop.flows.cli import app
from tests.flows.prefect_server import clean_env, prefect_server


def test_the_automation_is_prefects_heartbeat_recipe():
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture

    automation = crash_automation()
    assert automation.name == CRASH_AUTOMATION and automation.enabled
    trigger = automation.trigger
    assert isinstance(trigger, EventTrigger)
    assert trigger.posture == Posture.Proactive and trigger.threshold == 1
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    assert trigger.expect == {"prefect.flow-run.*"}  # the next heartbeat or any state change
    assert trigger.for_each == {"prefect.resource.id"}  # each flow run on its own
    assert trigger.match.root == {"prefect.resource.id": ["prefect.flow-run.*"]}
    assert trigger.within == timedelta(seconds=DEFAULT_HEARTBEAT_SECONDS) == timedelta(minutes=9)
    (action,) = automation.actions
    assert isinstance(action, ChangeFlowRunState) and action.type == "change-flow-run-state"
    assert action.state == StateType.CRASHED and "540 s" in action.message

    assert crash_automation(120).trigger.within == timedelta(seconds=120)
    with pytest.raises(ValueError, match="at least 60"):
        crash_automation(59)
    # what the server receives
    data = automation.model_dump(mode="json", exclude={"id"})
    assert data["trigger"]["type"] == "event" and data["trigger"]["within"] == 540.0
    assert data["actions"] == [
        {
            "type": "change-flow-run-state",
            "name": None,
            "state": "CRASHED",
            "message": action.message,
            "force": False,
        }
    ]


def test_the_command_checks_its_option_before_contacting_a_server():
    result = CliRunner().invoke(app, ["automations", "create", "--heartbeat-seconds", "10"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --heartbeat-seconds 10 is too short")


def test_the_command_without_a_server_says_how_to_set_one():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = CliRunner().invoke(app, ["automations", "create"])
    assert result.exit_code == 2
    assert "no Prefect server configured: set PREFECT_API_URL" in result.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with prefect_server(
        tmp_path_factory.mktemp("prefect-automations"),
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
    ) as running:
        yield running


def _on(url: str):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: url})


def _named(name: str) -> list:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return [a for a in client.read_automations() if a.name == name]


@pytest.mark.slow
@pytest.mark.system
def test_creating_it_again_changes_nothing_and_leaves_one(server):
    from prefect.client.orchestration import get_client

    with _on(server.url):
        first = ensure_crash_automation(300)
        assert first.outcome == "created"
        again = ensure_crash_automation(300)
        assert again.outcome == "unchanged" and again.automation.id == first.automation.id
        (stored,) = _named(CRASH_AUTOMATION)
        assert signature(stored) == signature(crash_automation(300))

        # another N updates the same automation
        changed = ensure_crash_automation(600)
        assert changed.outcome == "updated" and changed.automation.id == first.automation.id
        (stored,) = _named(CRASH_AUTOMATION)
        assert stored.trigger.within == timedelta(seconds=600)
        assert signature(stored) == signature(crash_automation(600))

        # a copy made by hand (or by a concurrent call) is removed
        from prefect.events.schemas.automations import AutomationCore

        with get_client(sync_client=True) as client:
            client.create_automation(
                AutomationCore(**crash_automation(120).model_dump(exclude={"id"}))
            )
        assert len(_named(CRASH_AUTOMATION)) == 2
        fixed = ensure_automation(crash_automation(600))
        assert fixed.removed == 1 and len(_named(CRASH_AUTOMATION)) == 1

        # the command does the same
        result = CliRunner().invoke(app, ["automations", "create", "--heartbeat-seconds", "600"])
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"unchanged automation '{CRASH_AUTOMATION}' (")
        assert "no heartbeat or state change for 600 s is marked Crashed" in result.stdout
        result = CliRunner().invoke(app, ["automations", "create"])
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"updated automation '{CRASH_AUTOMATION}' (")
        (stored,) = _named(CRASH_AUTOMATION)
        assert signature(stored) == signature(crash_automation())
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 180}):
            result = CliRunner().invoke(
                app, ["automations", "create", "--heartbeat-seconds", "200"]
            )
        assert result.exit_code == 0
        assert "less than twice the heartbeat interval set here (180 s" in result.stderr


# A flow that sleeps, run in its own process against the server with heartbeats every
# 30 s (the shortest Prefect allows).
_SLEEPER = """
import sys, time
from prefect import flow

@flow(name="advloop-heartbeat-check", flow_run_name=sys.argv[1])
def sleeper(seconds: float) -> None:
    time.sleep(seconds)

print(sleeper(float(sys.argv[2]), return_state=True).type.value)
"""


def _flow_run(name: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )
    return runs[0] if runs else None


def _heartbeats(run_id) -> int:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    with get_client(sync_client=True) as client:
        # limit: the client's default (100) is above what the 3.8.8 server accepts (50)
        page = client.read_events(
            EventFilter(
                event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
                resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"]),
            ),
            limit=50,
        )
    return page.total


def _until(probe, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout:.0f} s")
        time.sleep(2)
    return found


@pytest.mark.slow
@pytest.mark.system
def test_a_killed_flow_run_is_marked_crashed_and_a_live_one_is_not(server, tmp_path):
    """kill -9 one flow run's process: with heartbeats every 30 s and N = 70 s, the server
    marks it Crashed about 70 s after its last heartbeat; another run that sleeps 100 s
    (past N, heartbeats flowing) completes untouched."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    seconds = 70
    env = clean_env(
        PREFECT_API_URL=server.url,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30",
        PREFECT_HOME=str(tmp_path / "home"),
    )
    with _on(server.url):
        assert ensure_crash_automation(seconds).automation.trigger.within == timedelta(seconds=70)
        procs = {
            name: subprocess.Popen(
                [sys.executable, "-c", _SLEEPER, name, length],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            for name, length in (("victim", "900"), ("survivor", "100"))
        }
        try:
            victim = _until(
                lambda: (r := _flow_run("victim")) and r.state.is_running() and r,
                180,
                "the victim flow run Running",
            )
            _until(lambda: _heartbeats(victim.id) >= 1, 60, "the victim's first heartbeat")
            os.killpg(procs["victim"].pid, signal.SIGKILL)
            killed = time.monotonic()
            procs["victim"].wait(30)

            crashed = _until(
                lambda: (r := _flow_run("victim")).state.is_crashed() and r,
                seconds + 120,
                "the killed flow run Crashed",
            )
            assert (
                time.monotonic() - killed >= seconds - 35
            )  # not before N after its last heartbeat
            assert (
                crashed.state.message
                == f"advloop: no heartbeat from this flow run for {seconds} s; marked Crashed"
            )

            out, _ = procs["survivor"].communicate(timeout=300)
            assert procs["survivor"].returncode == 0 and out.strip().endswith("COMPLETED"), out[
                -3000:
            ]
            survivor = _flow_run("survivor")
            assert survivor.state.type == StateType.COMPLETED
            with get_client(sync_client=True) as client:
                history = [s.type for s in client.read_flow_run_states(survivor.id)]
            assert StateType.CRASHED not in history
            assert _heartbeats(survivor.id) >= 3  # it did live past N on heartbeats
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(30)
