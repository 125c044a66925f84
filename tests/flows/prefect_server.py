"""Real servers for tests: a Prefect server (``prefect server start`` on 127.0.0.1, a free
port, its own PREFECT_HOME) and a throwaway PostgreSQL cluster (``initdb``/``pg_ctl`` in a
temporary folder). Used by test_cli_submit.py, test_server_postgres.py,
test_server_auth.py, test_automations.py and test_ui_browser.py.

Secrets the tests make (auth strings, database passwords) are random per run, passed in
environment variables only, and never written to a file.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any PREFECT_API_* or PREFECT_UI_* setting (so that a child
    process talks to the server the test names, with the credentials the test names),
    with one thread per process and no telemetry, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_", "PREFECT_UI_"))}
    env.update(OMP_NUM_THREADS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


#: A flow with one task, for ``python -c TINY_FLOW <flow run name>`` against a server
#: (PREFECT_API_URL): prints ``flow run <id> COMPLETED 42``. Its task run reaches the
#: server only as events (over the events websocket).
TINY_FLOW = """
import sys
from prefect import flow, task

@task
def double(x: int) -> int:
    return 2 * x

@flow(name="advloop-server-check", flow_run_name=sys.argv[1])
def check(x: int) -> int:
    return double(x)

state = check(21, return_state=True)
print("flow run", state.state_details.flow_run_id, state.type.value, state.result())
"""


#: A tiny run with EMT labels (a stand-in for DFT: these tests are about servers and
#: workers, not the numbers), for configs submitted to a server: format ``name`` and
#: ``structures`` (relative to the config file).
EMT_RUN_CONFIG = """
system: {{name: {name}, structures: {structures}}}
initial_data: {{n_structures: 6, displacement: 0.05, seed: 0}}
labels: {{kind: emt}}
model: {{n_atom_basis: 16, n_interactions: 2, n_rbf: 10, cutoff: 4.0}}
committee: {{n_members: 2, seed: 0}}
training: {{max_epochs: 10, warm_start_epochs: 5, batch_size: 6}}
exploration: {{kind: adversarial, n_seeds: 4, n_steps: 5, temperature: 1000.0}}
selection: {{percentile: 0, rmsd_threshold: 0.001, max_selected: 2}}
convergence: {{force_std_threshold: 1.0e-6}}
budget: {{max_generations: 1, max_labels: 10}}
output_dir: runs
"""


@dataclass(frozen=True)
class PrefectServer:
    url: str  # the API URL, http://127.0.0.1:<port>/api
    home: Path  # its PREFECT_HOME
    log: Path  # its stdout and stderr

    @property
    def base(self) -> str:
        """The server's root URL (the UI), ``http://127.0.0.1:<port>``."""
        return self.url.removesuffix("/api")


@contextlib.contextmanager
def prefect_server(
    home: Path, timeout: float = 240, port: int | None = None, **env: str
) -> Iterator[PrefectServer]:
    """``prefect server start --host 127.0.0.1`` on ``port`` (default: a free one) with
    PREFECT_HOME ``home`` and the settings in ``env``; waits for ``/api/health`` (which
    answers without credentials even when the server has an auth string) and stops the
    server after."""
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/api"
    log_path = home / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=clean_env(PREFECT_HOME=str(home), **env),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prefect server exited: {log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"prefect server not healthy after {timeout:.0f} s: "
                    f"{log_path.read_text()[-3000:]}"
                )
            time.sleep(1)
        yield PrefectServer(url=url, home=home, log=log_path)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        log.close()


# ---------------------------------------------------------------------------------------
# PostgreSQL

#: Debian's package with the server binaries (initdb, pg_ctl, postgres) and psql.
POSTGRES_APT = "postgresql"


def postgres_bindir() -> Path | None:
    """The folder of PostgreSQL's ``initdb`` and ``pg_ctl``: $ADVLOOP_PG_BINDIR, else the
    newest /usr/lib/postgresql/<version>/bin (Debian, Ubuntu), else wherever ``initdb``
    is on PATH; None if there is none."""
    candidates = []
    if os.environ.get("ADVLOOP_PG_BINDIR"):
        candidates.append(Path(os.environ["ADVLOOP_PG_BINDIR"]))
    debian = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(
        (Path(p) for p in debian),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    if found := shutil.which("initdb"):
        candidates.append(Path(found).resolve().parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    return None


def require_postgres() -> Path:
    """:func:`postgres_bindir`, or skip the test (fail it when $CI is set: CI installs
    PostgreSQL, so a missing one there is a broken setup, not a reason to skip)."""
    bindir = postgres_bindir()
    if bindir is None:
        message = (
            "PostgreSQL server binaries (initdb, pg_ctl) not found in "
            "/usr/lib/postgresql/*/bin, $ADVLOOP_PG_BINDIR or on PATH; install them "
            f"with: apt-get install -y --no-install-recommends {POSTGRES_APT}"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI is set, so this test must run)")
        pytest.skip(message)
    return bindir


@dataclass(frozen=True)
class PostgresCluster:
    bindir: Path
    root: Path  # holds data/, the socket and postgres.log
    port: int  # TCP, on 127.0.0.1
    superuser: str = "postgres"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    async def _connect(self, database: str = "postgres", **kwargs: Any):
        import asyncpg  # installed with prefect: its PostgreSQL driver

        # as the superuser over the Unix socket (trust), or as kwargs say over TCP
        where = kwargs or {"host": str(self.root), "user": self.superuser}
        return await asyncpg.connect(port=self.port, database=database, **where)

    def sql(
        self, query: str, *args: Any, database: str = "postgres", **connect: Any
    ) -> list[tuple]:
        """Run one statement; return its rows as tuples."""
        import asyncio

        async def run() -> list[tuple]:
            conn = await self._connect(database, **connect)
            try:
                return [tuple(r) for r in await conn.fetch(query, *args)]
            finally:
                await conn.close()

        return asyncio.run(run())

    def create_database(self, name: str, owner: str, password: str) -> None:
        """A login role ``owner`` with ``password`` (scram-sha-256 over TCP) and a
        database ``name`` it owns: what infra/server/README.md has the operator do."""
        literal = "'" + password.replace("'", "''") + "'"
        self.sql(f'CREATE ROLE "{owner}" LOGIN PASSWORD {literal}')
        self.sql(f'CREATE DATABASE "{name}" OWNER "{owner}"')


def _as_cluster_owner() -> dict[str, Any]:
    """subprocess arguments that run initdb/pg_ctl as a user they accept: they refuse
    root, so as root (CI) they run as the ``postgres`` user Debian's package creates."""
    if os.geteuid() != 0:
        return {}
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail(
            "running as root, and there is no 'postgres' user to run initdb as "
            f"(apt-get install {POSTGRES_APT} creates it; or run the tests as "
            "another user)"
        )
    return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}


@contextlib.contextmanager
def postgres_cluster(bindir: Path) -> Iterator[PostgresCluster]:
    """A new PostgreSQL cluster in a temporary folder under the system's temporary
    directory (pytest's own folders are closed to other users), listening on 127.0.0.1
    and a free port; password (scram-sha-256) authentication over TCP, trust on its Unix
    socket. Stopped and deleted after."""
    owner = _as_cluster_owner()
    root = Path(tempfile.mkdtemp(prefix="advloop-pg-"))
    if owner:
        os.chown(root, owner["user"], owner["group"])
    port = free_port()
    cluster = PostgresCluster(bindir=bindir, root=root, port=port)
    data = root / "data"

    def run(*args: str) -> None:
        done = subprocess.run(
            [str(bindir / args[0]), *args[1:]],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=120,
            **owner,
        )
        if done.returncode != 0:
            log = cluster.log.read_text()[-2000:] if cluster.log.is_file() else ""
            pytest.fail(
                f"{args[0]} failed ({done.returncode}): {done.stdout[-2000:]}"
                f"{done.stderr[-2000:]}{log}"
            )

    started = False
    try:
        run(
            "initdb",
            "-D",
            str(data),
            "-U",
            cluster.superuser,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        run(
            "pg_ctl",
            "-D",
            str(data),
            "-l",
            str(cluster.log),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )
        started = True
        yield cluster
    finally:
        if started:
            run("pg_ctl", "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop")
        shutil.rmtree(root, ignore_errors=True)
