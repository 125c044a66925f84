"""Schedules on a real Prefect server: a cron deployment as `advloop serve` builds it gets
a Scheduled flow run from the server's scheduler service, on SQLite and on PostgreSQL
(on SQLAlchemy 2.1 Prefect 3.8.8's scheduler fails every loop, in its log only); and
`advloop serve` and `advloop status --server` warn when an active schedule has no
upcoming run (a server whose scheduler is off), and say nothing of the kind when it has.

The servers' scheduler loops run every 2 s (default 60 s and 5 s) so that the tests take
seconds. PostgreSQL needs its server binaries (Debian: apt-get install postgresql);
skipped without them, failed without them when $CI is set."""

from __future__ import annotations

import contextlib
import datetime
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.flows.prefect_server import (
    PrefectServer,
    clean_env,
    postgres_cluster,
    prefect_server,
    require_postgres,
)

pytestmark = pytest.mark.slow

CRON = "0 2 * * *"  # 02:00 UTC daily: the next run is always in the future
FAST_SCHEDULER = {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
                  "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "2"}
NO_SCHEDULER = {"PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"}
QUIET = {"PREFECT_SERVER_UI_ENABLED": "false",
         "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false"}


@contextlib.contextmanager
def _server(home: Path, database: str, **env: str) -> Iterator[PrefectServer]:
    """A Prefect server on ``database`` ("sqlite": its PREFECT_HOME's prefect.db;
    "postgresql": a throwaway cluster of its own)."""
    if database == "sqlite":
        with prefect_server(home, **QUIET, **env) as server:
            yield server
        return
    bindir = require_postgres()
    password = secrets.token_hex(16)  # never written to a file
    with postgres_cluster(bindir) as pg:
        pg.create_database("prefect", owner="prefect", password=password)
        url = f"postgresql+asyncpg://prefect:{password}@127.0.0.1:{pg.port}/prefect"
        with prefect_server(home, PREFECT_API_DATABASE_CONNECTION_URL=url, **QUIET,
                            **env) as server:
            yield server


@contextlib.contextmanager
def _api(server: PrefectServer) -> Iterator:
    """A synchronous client of ``server``, and this process's PREFECT_API_URL set to it."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: server.url}):
        with get_client(sync_client=True) as client:
            yield client


def _apply_scheduled(tiny_config: Path):
    """The scheduled deployment `advloop serve --config tiny_config --cron CRON` makes,
    registered on the current server (as `prefect.serve` registers it); returns its id."""
    from flows.deployments import build_deployments

    _, scheduled = build_deployments([tiny_config], cron=CRON)
    return scheduled.apply()


def _scheduled_runs(client, deployment_id) -> list:
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC)


def _next_cron_time(after: datetime.datetime) -> datetime.datetime:
    """The first 02:00 UTC after ``after``."""
    at = after.astimezone(datetime.timezone.utc).replace(hour=2, minute=0, second=0,
                                                        microsecond=0)
    return at if at > after else at + datetime.timedelta(days=1)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_servers_scheduler_creates_the_runs_of_a_cron_deployment(database, tiny_config,
                                                                     tmp_path):
    with _server(tmp_path / "server-home", database, **FAST_SCHEDULER) as server:
        with _api(server) as client:
            start = datetime.datetime.now(datetime.timezone.utc)
            deployment_id = _apply_scheduled(tiny_config)
            deadline = time.monotonic() + 60
            while not (runs := _scheduled_runs(client, deployment_id)):
                if time.monotonic() > deadline:
                    log = server.log.read_text()
                    pytest.fail("no scheduled flow run 60 s after the deployment was made "
                                f"(scheduler loop: 2 s); server log:\n{log[-4000:]}")
                time.sleep(1)
            (schedule,) = client.read_deployment(deployment_id).schedules

    first = runs[0]
    assert first.state.type.value == "SCHEDULED" and first.state_name == "Scheduled"
    assert first.expected_start_time == _next_cron_time(start)
    # made by the server's scheduler from the schedule, not by a client
    assert first.auto_scheduled
    assert first.idempotency_key.startswith(f"scheduled {deployment_id} {schedule.id} ")
    assert first.parameters == {"config_path": str(tiny_config.resolve()),
                                "output_dir": str(tmp_path / "runs")}
    assert {"advloop", "nh3-tiny"} <= set(first.tags)
    # one run per day, in order
    times = [r.expected_start_time for r in runs]
    assert all(b - a == datetime.timedelta(days=1) for a, b in zip(times, times[1:]))
    log = server.log.read_text()
    assert "Error scheduling deployment" not in log and "InvalidRequestError" not in log
