"""A Prefect server on PostgreSQL, as infra/server/README.md sets one up: a database and
a login role, PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://..., the server on
127.0.0.1 with its services in the same process. A flow runs against it; its state is
read back through the API and, with SQL, from the database itself.

Needs PostgreSQL's server binaries (Debian: apt-get install postgresql); skipped without
them, failed without them when $CI is set."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time
import uuid

import pytest

from tests.flows.prefect_server import (
    TINY_FLOW,
    clean_env,
    postgres_cluster,
    prefect_server,
    require_postgres,
)

pytestmark = [pytest.mark.slow, pytest.mark.system]


def _wait_for(probe, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        if found := probe():
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not seen after {timeout:.0f} s")
        time.sleep(1)


def test_a_prefect_server_on_postgresql_records_a_flow_run(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    bindir = require_postgres()
    password = secrets.token_hex(16)  # never written to a file
    with postgres_cluster(bindir) as pg:
        pg.create_database("prefect", owner="prefect", password=password)
        db_url = f"postgresql+asyncpg://prefect:{password}@127.0.0.1:{pg.port}/prefect"
        with prefect_server(
            tmp_path / "server-home",
            PREFECT_API_DATABASE_CONNECTION_URL=db_url,
            PREFECT_SERVER_UI_ENABLED="false",
        ) as server:
            # Prefect created its tables in PostgreSQL (migrations on start), not in SQLite.
            assert not (server.home / "prefect.db").exists()

            name = f"pg-check-{uuid.uuid4().hex[:8]}"
            done = subprocess.run(
                [sys.executable, "-c", TINY_FLOW, name],
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=300,
                env=clean_env(
                    PREFECT_API_URL=server.url, PREFECT_HOME=str(tmp_path / "client-home")
                ),
            )
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            found = re.search(r"flow run ([0-9a-f-]{36}) COMPLETED 42", done.stdout)
            assert found, done.stdout[-3000:]
            run_id = uuid.UUID(found.group(1))

            # through the API
            with temporary_settings({PREFECT_API_URL: server.url}):
                with get_client(sync_client=True) as client:
                    run = client.read_flow_run(run_id)
            assert run.name == name and run.state.type == StateType.COMPLETED

            # from the database, as the role the server uses
            as_prefect = dict(
                database="prefect", host="127.0.0.1", user="prefect", password=password
            )
            rows = pg.sql(
                "select name, state_type::text, state_name from flow_run where id = $1",
                run_id,
                **as_prefect,
            )
            assert rows == [(name, "COMPLETED", "Completed")]
            (flow_name,) = pg.sql(
                "select f.name from flow f join flow_run r on r.flow_id = f.id where r.id = $1",
                run_id,
                **as_prefect,
            )
            assert flow_name == ("advloop-server-check",)

            # The services run in the server process on PostgreSQL too: the task run
            # (recorded from the client's events) and the flow run's state events.
            tasks = _wait_for(
                lambda: pg.sql(
                    "select name, state_type::text from task_run where flow_run_id = $1",
                    run_id,
                    **as_prefect,
                ),
                60,
                "the task run in table task_run",
            )
            assert [(n.split("-")[0], s) for n, s in tasks] == [("double", "COMPLETED")]
            events = _wait_for(
                lambda: (
                    {
                        e
                        for (e,) in pg.sql(
                            "select event from events where resource_id = $1",
                            f"prefect.flow-run.{run_id}",
                            **as_prefect,
                        )
                    }
                    >= {"prefect.flow-run.Running", "prefect.flow-run.Completed"}
                ),
                60,
                "the flow run's Running and Completed events in table events",
            )
            assert events

        # The database password appears in neither the server's output nor the flow's.
        assert password not in server.log.read_text()
        assert password not in done.stdout + done.stderr
