"""Prefect's embedded server for ``advloop run``, out of reach of the terminal's signals.

With no ``PREFECT_API_URL``, Prefect starts a temporary server (uvicorn, SQLite under
``PREFECT_HOME``) as a child process in the caller's process group. Ctrl-C at a terminal
and ``scancel`` send their signal to the whole group, so that server stopped at the same
moment as the run, and the run could no longer record why it stopped: its flow runs
stayed ``Running`` and the terminal filled with connection errors.

:func:`start` starts that same server (Prefect's ``SubprocessASGIServer``, registered
where Prefect's clients look for it, as Prefect's own test harness does) in a session of
its own, so a signal to the run's group reaches the run alone; on Linux the server is
also told to stop when the process that started it dies (``PR_SET_PDEATHSIG``), so a run
killed with SIGKILL does not leave it behind. Prefect stops it when the run exits. The
server's own output (its errors, and the noise of its shutdown) goes to
``embedded-server.log`` in ``PREFECT_HOME``, not to the run's terminal.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

__all__ = ["start"]

_PR_SET_PDEATHSIG = 1
_POPEN = threading.Lock()


def _die_with_parent() -> None:  # runs in the child, between fork and exec
    os.setsid()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start() -> None:
    """Start Prefect's embedded server in a session of its own, unless a server is
    configured (``PREFECT_API_URL``) or one is running already. Call from the main
    thread (on Linux the server stops when the thread that started it ends)."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return
    server = SubprocessASGIServer()  # the instance Prefect's clients use
    if server.running:
        return
    settings = get_current_settings()
    log_path = Path(settings.home).expanduser() / "embedded-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a")  # noqa: SIM115
    popen = subprocess.Popen
    with _POPEN:
        # the class stands in for a partial of itself while the server starts
        subprocess.Popen = functools.partial(  # type: ignore[misc, assignment]
            popen, preexec_fn=_die_with_parent, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            server.start(timeout=settings.server.ephemeral.startup_timeout_seconds)
        except Exception as err:
            raise RuntimeError(
                f"Prefect's embedded server did not start: {err}; its output is in {log_path}"
            ) from err
        finally:
            subprocess.Popen = popen  # type: ignore[misc]
            log.close()  # the server holds its own copy of the file
