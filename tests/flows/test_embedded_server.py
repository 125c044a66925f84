"""Prefect's embedded server as ``advloop run`` starts it: in a session of its own, its
output in ``embedded-server.log`` under PREFECT_HOME (readable by its owner only), none of
it on the run's terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.flows.stand_in import subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.system]

CODE = """
import os
from advloop.flows.cli import use_prefect_defaults
use_prefect_defaults()
from advloop.flows import embedded_server
embedded_server.start()
from prefect import flow
from prefect.server.api.server import SubprocessASGIServer

@flow(name="advloop-server-check")
def check(x: int) -> int:
    return 2 * x

server = SubprocessASGIServer().server_process
print("result", check(21), "server session", os.getsid(server.pid) != os.getsid(0))
"""


def test_the_servers_output_goes_to_its_log_not_the_terminal(tmp_path: Path) -> None:
    home = tmp_path / "prefect-home"
    done = subprocess.run(
        [sys.executable, "-c", CODE],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(home),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "result 42 server session True" in done.stdout
    log = home / "embedded-server.log"
    assert log.exists() and (log.stat().st_mode & 0o777) == 0o600
    assert "uvicorn" not in done.stderr and "Traceback" not in done.stderr
