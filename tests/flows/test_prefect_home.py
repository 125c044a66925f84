"""PREFECT_HOME is private: the embedded server's database holds every flow run's
parameters (run configs, submitted structures), so advloop's commands make the folder
(mode 0700) and keep the database readable by its owner only, in a process of their own
with PREFECT_HOME in a temporary folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.flows.prefect_server import clean_env

ROOT = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _python(code: str, home: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(PREFECT_HOME=str(home), PYTHONPATH=str(ROOT), **env),
    )


def _advloop(args: list[str], home: Path) -> subprocess.CompletedProcess:
    """``advloop ARGS`` with no Prefect server configured."""
    return _python(f"from advloop.flows.cli import app; app({args!r}, prog_name='advloop')", home)


def test_a_command_makes_prefect_home_private_before_prefect_writes_to_it(tmp_path):
    home = tmp_path / "nested" / "prefect-home"
    # status --server with no server configured: it sets Prefect up, then exits 2
    done = _advloop(["status", "--server", "--runs-dir", str(tmp_path / "runs")], home)
    assert done.returncode == 2 and "no Prefect server configured" in done.stderr
    assert _mode(home) == 0o700
    db = home / "prefect.db"
    assert _mode(db) == 0o600 and db.stat().st_size == 0  # the embedded server's, to be
    assert "readable by other users" not in done.stderr


def test_an_existing_database_others_can_read_is_made_private(tmp_path):
    home = tmp_path / "prefect-home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    for name in ("prefect.db", "prefect.db-wal"):
        (home / name).write_bytes(b"")
        (home / name).chmod(0o644)
    done = _advloop(["status", "--server"], home)
    assert done.returncode == 2
    assert _mode(home / "prefect.db") == 0o600 and _mode(home / "prefect.db-wal") == 0o600
    (note, error) = done.stderr.strip().splitlines()
    assert note == (
        f"advloop: {home / 'prefect.db'} was readable by other users (it holds your "
        "run configs); made prefect.db, prefect.db-wal readable by you only"
    )
    assert error.startswith("error: no Prefect server configured")
    assert _mode(home) == 0o755  # the user's folder keeps its mode; its database does not
    again = _advloop(["status", "--server"], home)
    assert "readable by other users" not in again.stderr


@pytest.mark.slow
@pytest.mark.system
def test_the_embedded_servers_database_stays_private(tmp_path):
    """A flow on Prefect's embedded server (as `advloop run` starts it), in a PREFECT_HOME
    folder that exists with the usual mode 0755: its SQLite files are 0600."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    home.chmod(0o755)
    code = (
        "from advloop.flows.cli import use_prefect_defaults\n"
        "use_prefect_defaults()\n"
        "from prefect import flow\n"
        "@flow(name='advloop-home-check')\n"
        "def check(x: int) -> int:\n"
        "    return 2 * x\n"
        "print('result', check(21))\n"
    )
    done = _python(code, home)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "result 42" in done.stdout
    files = sorted(p.name for p in home.iterdir() if p.name.startswith("prefect.db"))
    assert "prefect.db" in files and (home / "prefect.db").stat().st_size > 0
    assert {name: _mode(home / name) for name in files} == {name: 0o600 for name in files}
