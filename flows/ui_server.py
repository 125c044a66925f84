"""``advloop ui``: the Prefect UI on the database of Prefect's embedded server, where
``advloop run`` records its runs when no server is configured.

``advloop run`` starts a temporary server (:mod:`advloop.flows.embedded_server`) that
stops with the run, so the runs it recorded (SQLite, ``PREFECT_HOME/prefect.db``) have
no UI afterwards, and a running run's server listens on a port nobody is told. This
module starts ``prefect server start --no-services`` on that same database, on
127.0.0.1 and a free port, with the UI told its own API address
(``PREFECT_SERVER_UI_API_URL``: unset, the UI would call port 4200 whatever port the
server has). No services: the scheduler and the other loops belong to whichever server
records the runs, and two of them on one SQLite database would fight over its lock.

The server is recorded in ``PREFECT_HOME/advloop-ui.json`` while it serves, so a second
``advloop ui`` reuses it rather than starting another.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LocalUIError", "UIServer", "embedded_database", "flow_run_page", "serve_ui"]


class LocalUIError(Exception):
    """``advloop ui`` cannot serve what was asked; the message says why and what to do."""


def embedded_database() -> Path:
    """The SQLite file of Prefect's embedded server (``PREFECT_HOME/prefect.db``).

    Raises :class:`LocalUIError` when a server is configured (``PREFECT_API_URL``: runs
    are recorded there, and its own UI shows them), when the database is not SQLite
    (``PREFECT_API_DATABASE_CONNECTION_URL``: a server of its own), or when there is no
    database (no run was ever recorded on this machine)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        from advloop.flows.deployments import display_url

        ui = settings.ui_url or str(settings.api.url).removesuffix("/api")
        raise LocalUIError(
            f"error: a Prefect server is configured (PREFECT_API_URL="
            f"{display_url(str(settings.api.url))}): runs are recorded there; open its UI "
            f"at {display_url(str(ui))} (or advloop status RUN --server for the run's page). "
            "advloop ui serves the embedded server's database, used when PREFECT_API_URL "
            "is unset"
        )
    url = settings.server.database.connection_url
    text = url.get_secret_value() if url is not None else ""
    if text and not text.startswith("sqlite"):
        raise LocalUIError(
            "error: PREFECT_API_DATABASE_CONNECTION_URL names a database of a server of its "
            "own: start that server (prefect server start) and open its UI"
        )
    db = Path(text.split("///", 1)[1]) if "///" in text else Path(settings.home) / "prefect.db"
    db = db.expanduser()
    if not db.is_file() or db.stat().st_size == 0:
        raise LocalUIError(
            f"error: no run was recorded on this machine's embedded database: {db} "
            f"{'is empty' if db.is_file() else 'does not exist'} (PREFECT_HOME="
            f"{Path(settings.home).expanduser()}); advloop run records there when "
            "PREFECT_API_URL is unset"
        )
    return db


@dataclass(frozen=True)
class UIServer:
    """A Prefect server serving the embedded database's UI."""

    url: str  # http://127.0.0.1:<port>, the UI; the API is url + "/api"
    pid: int
    log: Path
    process: subprocess.Popen | None = None  # None: an earlier advloop ui's, reused

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    @property
    def ours(self) -> bool:
        """Whether this process started it (and stops it)."""
        return self.process is not None

    def stopped(self) -> bool:
        """Whether the server this process started has exited."""
        return self.process is not None and self.process.poll() is not None


def _healthy(url: str, timeout: float = 3.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=timeout) as answer:
            return answer.status == 200
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reusable(record: Path, db: Path) -> UIServer | None:
    """The server an earlier ``advloop ui`` recorded for ``db``, if it still answers."""
    try:
        data = json.loads(record.read_text())
        pid, url, log = int(data["pid"]), str(data["url"]), Path(data["log"])
        same = Path(data["database"]) == db
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return UIServer(url, pid, log) if same and _healthy(url) else None


@contextlib.contextmanager
def serve_ui(db: Path, timeout: float = 180.0) -> Iterator[UIServer]:
    """A Prefect server (API and UI, no services) on the embedded database ``db``: an
    earlier ``advloop ui``'s if it still serves ``db``, else one started here on
    127.0.0.1 and a free port, in a session of its own (a terminal's Ctrl-C reaches this
    process, which stops it) that dies with this process; its output goes to
    ``advloop-ui.log`` beside ``db``. Stopped (SIGTERM, then SIGKILL after 20 s) when the
    block ends, if started here. Raises :class:`LocalUIError` if it does not answer
    within ``timeout`` s."""
    from advloop.flows.embedded_server import _die_with_parent

    home = db.parent
    record = home / "advloop-ui.json"
    reused = _reusable(record, db)
    if reused is not None:
        yield reused
        return
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = home / "advloop-ui.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_UI_")}
    env.update(
        PREFECT_SERVER_UI_API_URL=f"{url}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED=env.get("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
    )
    with open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
            + ["--port", str(port), "--no-services"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(url):
            if proc.poll() is not None:
                raise LocalUIError(
                    f"error: the Prefect server for the UI exited ({proc.returncode}); its "
                    f"output is in {log_path}"
                )
            if time.monotonic() > deadline:
                raise LocalUIError(
                    f"error: the Prefect server for the UI did not answer within {timeout:.0f} "
                    f"s; its output is in {log_path}"
                )
            time.sleep(0.5)
        record.write_text(
            json.dumps({"pid": proc.pid, "url": url, "log": str(log_path), "database": str(db)})
        )
        yield UIServer(url, proc.pid, log_path, proc)
    finally:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            if json.loads(record.read_text()).get("pid") == proc.pid:
                record.unlink()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def flow_run_page(server: UIServer, system: str | None) -> tuple[str, Any]:
    """The UI page of the newest advloop flow run of ``system`` (tagged with it or named
    after it; every system's if None) on ``server``, and that flow run.

    Raises :class:`LocalUIError` if the database holds none."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from advloop.flows.server_runs import top_flow_runs

    with temporary_settings({PREFECT_API_URL: server.api_url}):
        runs = top_flow_runs(system, limit=1)
    if not runs:
        what = f"run {system!r}" if system else "any advloop run"
        raise LocalUIError(
            f"error: {what} was never recorded on this machine's embedded database (no flow "
            "run of it there): it ran against another server (PREFECT_API_URL set at the "
            "time) or with another PREFECT_HOME"
        )
    run = runs[0].flow_run
    return f"{server.url}/runs/flow-run/{run.id}", run
