"""A real Prefect backend for flow tests: Prefect's test harness (a temporary local server
on SQLite) with PREFECT_HOME in a temporary folder, so results and the database never leak
between test sessions."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.flows.configs import EXAMPLES, TINY_CONFIG  # noqa: F401  (fixtures below; tests import them)

_HOME = tempfile.mkdtemp(prefix="advloop-prefect-")
# Must be set before prefect is imported (tests import it lazily, inside fixtures/tests).
os.environ["PREFECT_HOME"] = _HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

@pytest.fixture(scope="session")
def prefect_backend():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
    shutil.rmtree(_HOME, ignore_errors=True)




@pytest.fixture
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_CONFIG.format(name="nh3-tiny", structures=EXAMPLES / "structures" / "nh3.xyz",
                                       output_dir=tmp_path / "runs"))
    return path
