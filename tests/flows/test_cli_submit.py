"""`advloop submit` against a real Prefect server started here (its own PREFECT_HOME),
the submission packed and staged without a server, and the one-line errors for a
missing, unreachable or refusing server."""

from __future__ import annotations

import http.server
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from advloop.flows.cli import app
from advloop.flows.deployments import DEFAULT_DEPLOYMENT, Submission, stage_submission
from advloop.flows.validation import validate_config
from tests.flows.prefect_server import BIN, EMT_RUN_CONFIG, clean_env, free_port
from tests.flows.prefect_server import prefect_server as start_prefect_server

_UUID = re.compile(r"\(([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\)")
# the server-starting helpers, shared with the other server tests
_BIN, _free_port, _env = BIN, free_port, clean_env


def _advloop(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """The CLI in a fresh process, so that Prefect reads PREFECT_API_URL from ``env``."""
    code = "from advloop.flows.cli import app; app(prog_name='advloop')"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """A Prefect server on a free port with its own PREFECT_HOME; yields its API URL.

    The late-runs service is off so that a run stays `Scheduled` while the test reads it,
    the scheduler and the UI because nothing here needs them."""
    with start_prefect_server(
        tmp_path_factory.mktemp("prefect-server"),
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED="false",
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
    ) as server:
        yield server.url


@pytest.fixture(scope="module")
def submissions_deployment(prefect_server):
    """The process work pool and the submissions deployment, made with the builder
    `advloop serve` uses; yields the deployment's id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from advloop.flows.deployments import build_deployments

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name="advloop-test", type="process"))
        (submissions,) = build_deployments()
        yield submissions.apply(work_pool_name="advloop-test")


def _flow_runs(url: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        with get_client(sync_client=True) as client:
            return client.read_flow_runs()


@pytest.mark.slow
@pytest.mark.system
def test_submit_creates_a_scheduled_flow_run(
    prefect_server, submissions_deployment, tiny_config, tmp_path
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    client_home = str(tmp_path / "client-home")
    before = {r.id for r in _flow_runs(prefect_server)}
    done = _advloop(
        ["submit", str(tiny_config)],
        tmp_path,
        PREFECT_API_URL=prefect_server,
        PREFECT_HOME=client_home,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert f"to {DEFAULT_DEPLOYMENT}: flow run 'nh3-tiny'" in done.stdout
    assert f"UI: {prefect_server.removesuffix('/api')}/runs/flow-run/" in done.stdout
    assert "no worker is polling work pool 'advloop-test'" in done.stderr
    run_id = _UUID.search(done.stdout).group(1)

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(run_id)
    assert run.deployment_id == submissions_deployment
    assert run.state.type == StateType.SCHEDULED and run.state_name == "Scheduled"
    assert run.name == "nh3-tiny" and {"advloop", "nh3-tiny"} <= set(run.tags)
    config = validate_config(tiny_config)
    assert run.parameters == Submission.pack(tiny_config, config).parameters()
    assert run.parameters["output_dir"] == str(tmp_path / "runs")  # absolute, as on this side

    # What the worker does with those parameters gives back the submitted config.
    staged = stage_submission(**run.parameters, label="test")
    assert staged.model_dump(exclude={"system"}) == config.model_dump(exclude={"system"})
    assert (
        staged.system.structures
        == tmp_path / "runs" / "nh3-tiny" / "submissions" / "test" / "nh3.xyz"
    )

    # status knows the run from the server before any run folder exists
    status = _invoke_with_api_url(
        prefect_server, ["status", "nh3-tiny", "--server", "--runs-dir", str(tmp_path / "runs")]
    )
    assert status.exit_code == 0, status.output
    assert "no run folder yet" in status.stdout
    (row,) = [line for line in status.stdout.splitlines() if line.startswith("nh3-tiny ")]
    assert row.split()[1:4] == ["nh3-tiny", "advloop-submission", "Scheduled"] and run_id in row

    # A second submission of the same system is refused while the first may still run...
    again = _invoke_with_api_url(prefect_server, ["submit", str(tiny_config)])
    assert again.exit_code == 2 and "already has flow run 'nh3-tiny'" in again.stderr
    assert "--force" in again.stderr

    # ... and a deployment that does not exist is named, with the fix.
    missing = _invoke_with_api_url(
        prefect_server,
        ["submit", str(tiny_config), "--deployment", "advloop-submission/nope", "--force"],
    )
    assert missing.exit_code == 2, missing.output
    assert "no deployment 'advloop-submission/nope'" in missing.stderr
    assert "advloop serve" in missing.stderr
    assert {r.id for r in _flow_runs(prefect_server)} - before == {run.id}


@pytest.mark.slow
@pytest.mark.system
def test_submit_refuses_a_bad_config_before_contacting_the_server(
    prefect_server, submissions_deployment, tmp_path
):
    before = len(_flow_runs(prefect_server))
    bad = tmp_path / "bad.yaml"
    bad.write_text("system: {name: nh3, structures: missing.xyz}\nmodle: {}\n")
    done = _invoke_with_api_url(prefect_server, ["submit", str(bad)])
    assert done.exit_code == 2
    assert "modle: unknown key" in done.stderr
    assert len(_flow_runs(prefect_server)) == before


def _invoke_with_api_url(url: str | None, args: list[str]):
    """The CLI in this process with PREFECT_API_URL set to ``url`` (or unset)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if url is None:
        with temporary_settings(restore_defaults={PREFECT_API_URL}):
            return CliRunner().invoke(app, args)
    with temporary_settings({PREFECT_API_URL: url}):
        return CliRunner().invoke(app, args)


def test_submit_without_a_server_configured_says_how_to_set_one(tiny_config):
    result = _invoke_with_api_url(None, ["submit", str(tiny_config)])
    assert result.exit_code == 2
    assert "no Prefect server configured: set PREFECT_API_URL" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_submit_to_an_unreachable_server_fails_in_one_line(tiny_config):
    url = f"http://127.0.0.1:{_free_port()}/api"  # nothing listens there
    t0 = time.monotonic()
    result = _invoke_with_api_url(url, ["submit", str(tiny_config)])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"error: cannot reach the Prefect server at {url} (ConnectError): start it "
        "(prefect server start --host 127.0.0.1) or fix PREFECT_API_URL"
    )
    assert time.monotonic() - t0 < 60


class _Refuses(http.server.BaseHTTPRequestHandler):
    """A server that answers 401 to everything, as one with an auth string does."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"detail": "Unauthorized"}')

    do_POST = do_GET

    def log_message(self, *args):
        pass


def test_submit_to_a_server_that_refuses_the_credentials_names_the_setting(tiny_config):
    from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings

    stub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refuses)
    thread = threading.Thread(target=stub.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{stub.server_address[1]}/api"
        with temporary_settings({PREFECT_API_AUTH_STRING: "admin:not-this-one"}):
            result = _invoke_with_api_url(url, ["submit", str(tiny_config)])
    finally:
        stub.shutdown()
        stub.server_close()
    assert result.exit_code == 2
    assert f"the Prefect server at {url} refused the credentials (401)" in result.stderr
    assert "PREFECT_API_AUTH_STRING" in result.stderr
    assert "not-this-one" not in result.output and len(result.stderr.strip().splitlines()) == 1


def test_a_submission_carries_the_config_by_value(tiny_config, tmp_path):
    config = validate_config(tiny_config)
    submission = Submission.pack(tiny_config, config)
    params = submission.parameters()
    assert set(params) == {"config_yaml", "structures_name", "structures_b64", "output_dir"}
    assert (
        params["config_yaml"] == tiny_config.read_text() and params["structures_name"] == "nh3.xyz"
    )

    # The worker needs neither file: stage into another folder after deleting the copy here.
    moved = tmp_path / "elsewhere"
    staged = stage_submission(**{**params, "output_dir": str(moved)}, label="a")
    keep = moved / "nh3-tiny" / "submissions" / "a"
    assert staged.system.structures == keep / "nh3.xyz"
    assert staged.run_dir() == moved / "nh3-tiny"
    assert (keep / "nh3.xyz").read_bytes() == config.system.structures.read_bytes()
    assert validate_config(keep / "config.yaml").committee == config.committee
    assert {oct(p.stat().st_mode & 0o777) for p in keep.iterdir()} == {"0o600"}  # owner's alone


def test_a_submission_too_large_for_the_server_is_refused_before_sending(tiny_config, tmp_path):
    from ase.io import read, write

    from advloop.flows.config import ConfigError
    from advloop.flows.deployments import MAX_SUBMISSION_BYTES

    config = validate_config(tiny_config)
    many = tmp_path / "many.xyz"
    frame = read(config.system.structures)
    write(many, [frame] * (MAX_SUBMISSION_BYTES // 200))  # each frame > 200 bytes of text
    big = config.model_copy(
        update={"system": config.system.model_copy(update={"structures": many})}
    )
    with pytest.raises(ConfigError, match="KiB a submission carries"):
        Submission.pack(tiny_config, big)


def test_a_bad_submission_is_a_config_error(tmp_path):
    from advloop.flows.config import ConfigError

    with pytest.raises(ConfigError, match="not base64"):
        stage_submission(
            "system: {name: a, structures: x.xyz}\n", "x.xyz", "%%%", str(tmp_path), "a"
        )
    with pytest.raises(ConfigError, match="structures_name"):
        stage_submission("system: {name: a, structures: x.xyz}\n", "..", "", str(tmp_path), "a")
    with pytest.raises(ConfigError, match="system section"):
        stage_submission("- a list\n", "x.xyz", "", str(tmp_path), "a")
    with pytest.raises(ConfigError, match=r"(?s)^submitted config: 1 problem.*modle: unknown key"):
        stage_submission(
            "system: {name: a, structures: x.xyz}\nmodle: {}\n", "x.xyz", "", str(tmp_path), "a"
        )


@pytest.mark.slow
@pytest.mark.system
def test_a_process_worker_elsewhere_runs_the_submission(
    prefect_server, submissions_deployment, tmp_path
):
    """Submit from one folder, run a process worker in another: the config and structures
    reach the worker as parameters, the run folder lands where the submitter said."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as client:  # only this test's run for the worker
            for run in client.read_flow_runs():
                client.delete_flow_run(run.id)
    inputs, submitter, worker = (tmp_path / d for d in ("inputs", "submitter", "worker"))
    for d in (inputs, submitter, worker):
        d.mkdir()
    structures = inputs / "nh3.xyz"
    structures.write_bytes((Path(__file__).parents[2] / "examples/structures/nh3.xyz").read_bytes())
    config = inputs / "nh3-emt.yaml"
    config.write_text(EMT_RUN_CONFIG.format(name="nh3-emt", structures="nh3.xyz"))

    done = _advloop(
        ["submit", str(config)],
        submitter,
        PREFECT_API_URL=prefect_server,
        PREFECT_HOME=str(tmp_path / "home-submit"),
    )
    assert done.returncode == 0, done.stderr
    run_id = _UUID.search(done.stdout).group(1)
    structures.unlink()  # the worker must not need the submitter's files
    config.unlink()

    ran = subprocess.run(
        [str(_BIN / "prefect"), "worker", "start", "--pool", "advloop-test", "--run-once"],
        cwd=worker,
        capture_output=True,
        text=True,
        timeout=400,
        env=_env(PREFECT_API_URL=prefect_server, PREFECT_HOME=str(tmp_path / "home-worker")),
    )
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run_id).state
    assert state.type == StateType.COMPLETED, (state, ran.stdout[-3000:] + ran.stderr[-3000:])

    run_dir = submitter / "runs" / "nh3-emt"
    assert (run_dir / "summary.json").is_file() and not (worker / "runs").exists()
    (kept,) = (run_dir / "submissions").iterdir()
    assert kept.name.endswith(run_id[:8]) and (kept / "nh3.xyz").is_file()
    status = _invoke_with_api_url(
        prefect_server, ["status", "nh3-emt", "--server", "--runs-dir", str(submitter / "runs")]
    )
    assert status.exit_code == 0, status.output
    assert status.stdout.startswith("nh3-emt: stopped: max_generations")
    # the submission's flow run (name, system, flow, state), then the folder it names
    lines = status.stdout.splitlines()
    (k,) = [
        i for i, line in enumerate(lines) if line.split()[1:3] == ["nh3-emt", "advloop-submission"]
    ]
    assert lines[k].split()[3] == "Completed", status.stdout
    assert str(run_dir) in lines[k + 1] and "stopped" in lines[k + 1], status.stdout
