"""`advloop ui`: the Prefect UI on the embedded server's database, where `advloop run`
recorded a run (a real run, EMT labels, in a process of its own with its own
PREFECT_HOME): the page it prints answers, a second `advloop ui` reuses its server, Ctrl-C
stops it cleanly; and the refusals (a configured server, a run never recorded here, no
database at all)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advloop.flows.cli import app
from tests.flows.configs import EXAMPLES
from tests.flows.prefect_server import EMT_RUN_CONFIG, clean_env

ROOT = Path(__file__).resolve().parents[2]
ADVLOOP = "from advloop.flows.cli import app; app(prog_name='advloop')"
PAGE = re.compile(r"^ui-run \((\w+)\): (http://127\.0\.0\.1:\d+)/runs/flow-run/([0-9a-f-]{36})$")


def _env(home: Path) -> dict[str, str]:
    """No server configured: `advloop run` records on the embedded server's database in
    ``home``."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return clean_env(PREFECT_HOME=str(home), PYTHONPATH=path)


def test_ui_refuses_when_a_server_is_configured():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: "http://prefect.example.org:4200/api"}):
        result = CliRunner().invoke(app, ["ui", "--no-browser"])
    assert result.exit_code == 2, result.output
    assert (
        "a Prefect server is configured (PREFECT_API_URL=http://prefect.example.org:4200/api)"
        in (result.stderr)
    )
    assert "open its UI at http://prefect.example.org:4200" in result.stderr


@pytest.mark.slow
@pytest.mark.system
def test_ui_serves_the_page_of_a_run_recorded_on_the_embedded_database(tmp_path):
    home = tmp_path / "prefect-home"
    env = _env(home)
    config = tmp_path / "ui-run.yaml"
    text = EMT_RUN_CONFIG.format(name="ui-run", structures=EXAMPLES / "structures" / "nh3.xyz")
    config.write_text(text.replace("output_dir: runs", f"output_dir: {tmp_path / 'elsewhere'}"))

    # nothing recorded yet: refused before any server starts
    empty = subprocess.run(
        [sys.executable, "-c", ADVLOOP, "ui", "--no-browser"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert empty.returncode == 2, empty.stderr
    assert "no run was recorded on this machine's embedded database" in empty.stderr

    done = subprocess.run(
        [sys.executable, "-c", ADVLOOP, "run", str(config)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    out = tmp_path / "ui.out"
    with open(out, "w") as stdout:
        ui = subprocess.Popen(
            [sys.executable, "-c", ADVLOOP, "ui", str(tmp_path / "elsewhere" / "ui-run")]
            + ["--no-browser"],
            cwd=tmp_path,
            env=env,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 300
        while not (match := PAGE.search(out.read_text().split("\n")[0])):
            assert ui.poll() is None, out.read_text()
            assert time.monotonic() < deadline, f"no page printed: {out.read_text()}"
            time.sleep(1)
        state, base, run_id = match.groups()
        assert state == "Completed"
        # as a browser asks for it (Prefect answers page navigations with the UI)
        asked = urllib.request.Request(
            f"{base}/runs/flow-run/{run_id}", headers={"Accept": "text/html"}
        )
        with urllib.request.urlopen(asked, timeout=30) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
            assert page.geturl().endswith(f"/runs/flow-run/{run_id}")
        # the UI is told its own server's API, not port 4200
        with urllib.request.urlopen(f"{base}/ui-settings", timeout=30) as answer:
            assert f'"api_url":"{base}/api"' in answer.read().decode()
        with urllib.request.urlopen(f"{base}/api/flow_runs/{run_id}", timeout=30) as answer:
            assert '"name":"ui-run"' in answer.read().decode().replace(" ", "")

        # a second advloop ui reuses that server; a run never recorded here is refused
        never = subprocess.run(
            [sys.executable, "-c", ADVLOOP, "ui", "never-ran", "--no-browser"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert never.returncode == 2, never.stdout + never.stderr
        assert "'never-ran' was never recorded on this machine's embedded database" in never.stderr
        assert "Traceback" not in never.stderr
    finally:
        ui.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            code = ui.wait(60)
        finally:
            if ui.poll() is None:
                ui.kill()
    printed = out.read_text()
    assert code == 0, printed
    assert printed.rstrip().endswith("advloop ui: stopped") and "Traceback" not in printed
    with pytest.raises(OSError):  # its server stopped with it
        urllib.request.urlopen(f"{base}/api/health", timeout=5)
    assert not (home / "advloop-ui.json").exists()
