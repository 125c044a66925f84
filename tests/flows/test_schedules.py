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

pytestmark = [pytest.mark.slow, pytest.mark.system]

ROOT = Path(__file__).resolve().parents[2]
CRON = "0 2 * * *"  # 02:00 UTC daily: the next run is always in the future
FAST_SCHEDULER = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
    "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "2",
}
NO_SCHEDULER = {"PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"}
QUIET = {"PREFECT_SERVER_UI_ENABLED": "false", "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false"}


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
        with prefect_server(
            home, PREFECT_API_DATABASE_CONNECTION_URL=url, **QUIET, **env
        ) as server:
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
    from advloop.flows.deployments import build_deployments

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
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
        ),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
    )


def _next_cron_time(after: datetime.datetime) -> datetime.datetime:
    """The first 02:00 UTC after ``after``."""
    at = after.astimezone(datetime.timezone.utc).replace(hour=2, minute=0, second=0, microsecond=0)
    return at if at > after else at + datetime.timedelta(days=1)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_servers_scheduler_creates_the_runs_of_a_cron_deployment(
    database, tiny_config, tmp_path
):
    with _server(tmp_path / "server-home", database, **FAST_SCHEDULER) as server:
        with _api(server) as client:
            start = datetime.datetime.now(datetime.timezone.utc)
            deployment_id = _apply_scheduled(tiny_config)
            deadline = time.monotonic() + 60
            while not (runs := _scheduled_runs(client, deployment_id)):
                if time.monotonic() > deadline:
                    log = server.log.read_text()
                    pytest.fail(
                        "no scheduled flow run 60 s after the deployment was made "
                        f"(scheduler loop: 2 s); server log:\n{log[-4000:]}"
                    )
                time.sleep(1)
            (schedule,) = client.read_deployment(deployment_id).schedules

    first = runs[0]
    assert first.state.type.value == "SCHEDULED" and first.state_name == "Scheduled"
    assert first.expected_start_time == _next_cron_time(start)
    # made by the server's scheduler from the schedule, not by a client
    assert first.auto_scheduled
    assert first.idempotency_key.startswith(f"scheduled {deployment_id} {schedule.id} ")
    assert first.parameters == {
        "config_path": str(tiny_config.resolve()),
        "output_dir": str(tmp_path / "runs"),
    }
    assert {"advloop", "nh3-tiny"} <= set(first.tags)
    # one run per day, in order
    times = [r.expected_start_time for r in runs]
    assert all(b - a == datetime.timedelta(days=1) for a, b in zip(times, times[1:]))
    log = server.log.read_text()
    assert "Error scheduling deployment" not in log and "InvalidRequestError" not in log


WARNING = (
    "warning: deployment advloop-run-config/nh3-tiny has an active schedule but no "
    "upcoming flow run"
)


@contextlib.contextmanager
def _serving(
    server: PrefectServer,
    tiny_config: Path,
    tmp_path: Path,
    grace: float | None = None,
    cron: str = CRON,
) -> Iterator[tuple[Path, Path]]:
    """`advloop serve --config tiny_config --cron CRON` in a process of its own against
    ``server`` (with advloop.flows.deployments.SCHEDULER_GRACE_S set to ``grace`` if given);
    yields the files its stdout and stderr go to. Stopped with SIGINT (Ctrl-C) after."""
    setup = (
        ""
        if grace is None
        else f"import advloop.flows.deployments as d; d.SCHEDULER_GRACE_S = {grace}; "
    )
    code = setup + "from advloop.flows.cli import app; app(prog_name='advloop')"
    out, err = tmp_path / "serve.out", tmp_path / "serve.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "serve", "--config", str(tiny_config), "--cron", cron],
            cwd=tmp_path,
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            env=clean_env(
                PREFECT_API_URL=server.url,
                PREFECT_HOME=str(tmp_path / "client-home"),
                PYTHONPATH=os.pathsep.join(
                    p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
                ),
            ),
        )
    try:
        yield out, err
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def _wait_for_text(path: Path, text: str, timeout: float, also: Path) -> str:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        if time.monotonic() > deadline:
            pytest.fail(
                f"{text!r} not printed after {timeout:.0f} s; stdout:\n"
                f"{path.read_text()[-3000:]}\nstderr:\n{also.read_text()[-3000:]}"
            )
        time.sleep(0.5)
    return path.read_text()


def _status(server: PrefectServer, tmp_path: Path, grace: float | None = None):
    """`advloop status --server` in this process, with SCHEDULER_GRACE_S ``grace``."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import advloop.flows.deployments as deployments
    from advloop.flows.cli import app

    with pytest.MonkeyPatch.context() as patch:
        if grace is not None:
            patch.setattr(deployments, "SCHEDULER_GRACE_S", grace)
        with temporary_settings({PREFECT_API_URL: server.url}):
            result = CliRunner().invoke(
                app, ["status", "--server", "--runs-dir", str(tmp_path / "runs")]
            )
    assert result.exit_code == 0, result.output
    return result


def test_serve_and_status_warn_of_a_schedule_the_server_makes_no_run_of(tiny_config, tmp_path):
    """A server whose scheduler is off never makes a run: `advloop serve` warns (after
    its grace, 5 s here) in one line on stderr, and so does `advloop status --server` once
    the schedule is older than its grace; not before."""
    with _server(tmp_path / "server-home", "sqlite", **NO_SCHEDULER) as server:
        with _serving(server, tiny_config, tmp_path, grace=5) as (out, err):
            _wait_for_text(out, "serving advloop-run-config/nh3-tiny", 120, err)
            stderr = _wait_for_text(err, WARNING, 60, out)
            (line,) = [x for x in stderr.splitlines() if x.startswith("warning: deployment")]
            assert "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED" in line
            assert "server's log" in line and "sqlalchemy>=2.0,<2.1" in line
            assert "next run of" not in out.read_text()

            fresh = _status(server, tmp_path)  # a schedule made seconds ago: give it time
            assert "warning" not in fresh.stderr
            late = _status(server, tmp_path, grace=0)
            assert late.stderr.strip() == line
            assert "no flow runs for advloop on the server" in late.stdout
    assert "Traceback" not in err.read_text()


def test_serve_and_status_say_nothing_of_the_kind_when_the_scheduler_works(tiny_config, tmp_path):
    """With the server's scheduler on, `advloop serve` prints the schedule's next run
    (02:00 UTC) as soon as the server has made it, and nobody warns."""
    with _server(tmp_path / "server-home", "sqlite", **FAST_SCHEDULER) as server:
        with _serving(server, tiny_config, tmp_path) as (out, err):
            start = datetime.datetime.now(datetime.timezone.utc)
            stdout = _wait_for_text(out, "next run of advloop-run-config/nh3-tiny: ", 120, err)
            assert (
                f"next run of advloop-run-config/nh3-tiny: {_next_cron_time(start):%Y-%m-%d} "
                "02:00 UTC" in stdout
            )
            status = _status(server, tmp_path, grace=0)
            assert "warning" not in status.stderr and "warning" not in err.read_text()
            # the scheduler's runs (tagged advloop and nh3-tiny), named by Prefect
            rows = [x.split() for x in status.stdout.splitlines() if "advloop-run-config" in x]
            assert rows and all(
                r[1:4] == ["nh3-tiny", "advloop-run-config", "Scheduled"] for r in rows
            ), status.stdout
        # Ctrl-C paused the schedule: a stopped serve is not a failing scheduler
        assert "warning" not in _status(server, tmp_path, grace=0).stderr
    assert "Traceback" not in err.read_text()


def test_serve_names_the_scheduled_runs_after_their_system(tiny_config, tmp_path):
    """Prefect's scheduler names a schedule's upcoming runs at random (a flow's
    flow_run_name applies only when a run starts, and a 3.8.8 deployment has no name
    template); `advloop serve` renames them `<system>-scheduled-<UTC time>` as they
    appear. A schedule of a run every minute, in an hour at least two hours away so that
    none starts during the test: the scheduler makes its minimum of three runs."""
    from advloop.flows.schedule_names import NAMING_SECONDS, scheduled_run_name

    hour = (datetime.datetime.now(datetime.timezone.utc).hour + 3) % 24
    with _server(tmp_path / "server-home", "sqlite", **FAST_SCHEDULER) as server:
        with _serving(server, tiny_config, tmp_path, cron=f"* {hour} * * *") as (out, err):
            _wait_for_text(out, "next run of advloop-run-config/nh3-tiny: ", 120, err)
            with _api(server) as client:
                deployment = client.read_deployment_by_name("advloop-run-config/nh3-tiny")
                deadline = time.monotonic() + 4 * NAMING_SECONDS + 30
                while True:
                    runs = _scheduled_runs(client, deployment.id)
                    names = [r.name for r in runs]
                    wanted = [scheduled_run_name("nh3-tiny", r.expected_start_time) for r in runs]
                    if runs and names == wanted:
                        break
                    if time.monotonic() > deadline:
                        pytest.fail(f"scheduled runs not named after their system: {names}")
                    time.sleep(1)
            status = _status(server, tmp_path, grace=0)
    times = [r.expected_start_time for r in runs]
    assert len(runs) == 3  # PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS
    assert all(b - a == datetime.timedelta(minutes=1) for a, b in zip(times, times[1:]))
    assert times[0].hour == hour and times[0].minute == 0
    assert names[0] == f"nh3-tiny-scheduled-{times[0]:%Y%m%dT}{hour:02d}00Z"
    for name in names:
        assert any(line.startswith(f"{name} ") for line in status.stdout.splitlines())
    assert "Traceback" not in err.read_text()
