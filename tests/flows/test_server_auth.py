"""A Prefect server with basic auth (PREFECT_SERVER_API_AUTH_STRING) and CSRF protection
(PREFECT_SERVER_CSRF_PROTECTION_ENABLED), as infra/server/README.md sets one up: it
refuses clients without the auth string, `advloop submit` without it fails in one line
with exit status 2, and with it a submission runs on a process worker while the auth
string shows up in no output, log or file. Where nginx is installed, also
infra/server/nginx.conf in front of such a server: UI, API and websockets over TLS."""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.flows.prefect_server import (
    BIN,
    EMT_RUN_CONFIG,
    TINY_FLOW,
    clean_env,
    free_port,
    prefect_server,
)

pytestmark = [pytest.mark.slow, pytest.mark.system]

# Made per test session, passed in environment variables only, never written to a file.
AUTH = f"advloop-test:{secrets.token_urlsafe(18)}"
_SECRET_FORMS = (AUTH, AUTH.split(":", 1)[1], base64.b64encode(AUTH.encode()).decode())
_UUID = re.compile(r"\(([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\)")
_POOL = "advloop-auth-test"


def _assert_secret_free(text: str, where: str) -> None:
    for form in _SECRET_FORMS:
        assert form not in text, f"the auth string (or a form of it) appears in {where}"


def _authenticated(url: str):
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: AUTH})


def _advloop(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    code = "from advloop.flows.cli import app; app(prog_name='advloop')"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """A server with an auth string and CSRF protection, a process work pool and the
    submissions deployment (made with the builder `advloop serve` uses); yields it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from advloop.flows.deployments import build_deployments

    home = tmp_path_factory.mktemp("prefect-auth-server")
    with prefect_server(
        home,
        PREFECT_SERVER_API_AUTH_STRING=AUTH,
        PREFECT_SERVER_CSRF_PROTECTION_ENABLED="true",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED="false",
        PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
    ) as server:
        with _authenticated(server.url):
            with get_client(sync_client=True) as client:
                client.create_work_pool(WorkPoolCreate(name=_POOL, type="process"))
            (submissions,) = build_deployments()
            submissions.apply(work_pool_name=_POOL)
        yield server
    _assert_secret_free(server.log.read_text(), "the server's log")


def _request(url: str, headers: dict[str, str], post: bool = False) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url,
        data=b"{}" if post else None,
        method="POST" if post else "GET",
        headers={"Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_the_server_answers_only_clients_with_the_auth_string(auth_server):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    url = auth_server.url
    basic = {"Authorization": "Basic " + base64.b64encode(AUTH.encode()).decode()}
    wrong = {"Authorization": "Basic " + base64.b64encode(b"advloop-test:wrong").decode()}
    client_id = str(uuid.uuid4())
    csrf_url = f"{url}/csrf-token?client={client_id}"
    # health (for probes and load balancers) is open; everything else wants the auth string
    assert _request(f"{url}/health", {})[0] == 200
    assert _request(csrf_url, {})[0] == 401
    assert _request(csrf_url, wrong)[0] == 401
    code, body = _request(csrf_url, basic)
    assert code == 200
    csrf = {"Prefect-Csrf-Token": json.loads(body)["token"], "Prefect-Csrf-Client": client_id}
    # a change request (POST, PUT, PATCH, DELETE) needs both the auth string and a CSRF
    # token; the Prefect client (PREFECT_CLIENT_CSRF_SUPPORT_ENABLED) fetches one itself
    assert _request(f"{url}/flows/filter", basic, post=True)[0] == 403
    assert _request(f"{url}/flows/filter", csrf, post=True)[0] == 401
    assert _request(f"{url}/flows/filter", {**basic, **csrf}, post=True)[0] == 200

    with _authenticated(url):
        with get_client(sync_client=True) as client:
            assert client.read_deployment_by_name("advloop-submission/submissions")
    with temporary_settings({PREFECT_API_URL: url}, restore_defaults={PREFECT_API_AUTH_STRING}):
        with get_client(sync_client=True) as client:
            with pytest.raises(PrefectHTTPStatusError, match="401"):
                client.read_flows()


@pytest.mark.parametrize("credentials", [None, "advloop-test:wrong-password"])
def test_submit_without_the_auth_string_fails_in_one_line(
    auth_server, tiny_config, tmp_path, credentials
):
    env = {"PREFECT_API_URL": auth_server.url, "PREFECT_HOME": str(tmp_path / "home")}
    if credentials:
        env["PREFECT_API_AUTH_STRING"] = credentials
    done = _advloop(["submit", str(tiny_config)], tmp_path, **env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr.strip() == (
        f"error: the Prefect server at {auth_server.url} refused the credentials (401): set "
        "PREFECT_API_AUTH_STRING to the server's auth string (self-hosted) or PREFECT_API_KEY "
        "(Prefect Cloud)"
    )
    assert "wrong-password" not in done.stderr


def test_an_authenticated_submission_runs_and_the_auth_string_stays_secret(auth_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.objects import StateType

    structures = tmp_path / "nh3.xyz"
    structures.write_bytes((Path(__file__).parents[2] / "examples/structures/nh3.xyz").read_bytes())
    config = tmp_path / "nh3-auth.yaml"
    config.write_text(EMT_RUN_CONFIG.format(name="nh3-auth", structures="nh3.xyz"))
    env = dict(PREFECT_API_URL=auth_server.url, PREFECT_API_AUTH_STRING=AUTH)

    submitted = _advloop(
        ["submit", str(config)], tmp_path, PREFECT_HOME=str(tmp_path / "h1"), **env
    )
    assert submitted.returncode == 0, submitted.stderr
    run_id = _UUID.search(submitted.stdout).group(1)
    worker = subprocess.run(
        [str(BIN / "prefect"), "worker", "start", "--pool", _POOL, "--run-once"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=500,
        env=clean_env(PREFECT_HOME=str(tmp_path / "h2"), **env),
    )
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    status = _advloop(
        ["status", "nh3-auth", "--server"], tmp_path, PREFECT_HOME=str(tmp_path / "h3"), **env
    )
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("nh3-auth: stopped: max_generations")

    with _authenticated(auth_server.url):
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run_id).state
            runs = [r.id for r in client.read_flow_runs()]
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=runs)))
    assert state.type == StateType.COMPLETED, worker.stdout[-3000:] + worker.stderr[-3000:]
    assert len(runs) >= 2 and len(logs) > 5  # the submission, the loop and their logs

    _assert_secret_free(submitted.stdout + submitted.stderr, "advloop submit's output")
    _assert_secret_free(worker.stdout + worker.stderr, "the worker's output")
    _assert_secret_free(status.stdout + status.stderr, "advloop status's output")
    _assert_secret_free("\n".join(log.message for log in logs), "the flow runs' logs")
    run_dir = tmp_path / "runs" / "nh3-auth"
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert (run_dir / "summary.json") in files
    for path in files:
        _assert_secret_free(path.read_bytes().decode("latin-1"), str(path))


# ---------------------------------------------------------------------------------------
# infra/server/nginx.conf: TLS in front of the server (runs where nginx is installed)


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for 127.0.0.1 it signed: (ca.pem, cert, key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "advloop test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths[2].chmod(0o600)
    return paths


def _nginx_config(
    example: str, prefix: Path, upstream: int, http: int, https: int, cert: Path, key: Path
) -> str:
    """infra/server/nginx.conf, with this test's ports, certificate and folders, in a
    main config of its own."""
    replace = {
        "server 127.0.0.1:4200;": f"server 127.0.0.1:{upstream};",
        "listen 80;": f"listen 127.0.0.1:{http};",
        "listen [::]:80;": "",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https} ssl http2;",
        "listen [::]:443 ssl http2;": "",
        "/etc/ssl/advloop/prefect.example.org.fullchain.pem": str(cert),
        "/etc/ssl/advloop/prefect.example.org.key": str(key),
        "/var/log/nginx/prefect.access.log": str(prefix / "access.log"),
        "prefect.example.org": "127.0.0.1",
    }
    for old, new in replace.items():
        assert old in example, f"infra/server/nginx.conf no longer has {old!r}: update this test"
        example = example.replace(old, new)
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"pid {prefix / 'nginx.pid'};\nerror_log {prefix / 'error.log'};\ndaemon off;\n"
        f"events {{}}\nhttp {{\n{temp}\n    access_log {prefix / 'access.log'};\n"
        f"{example}\n}}\n"
    )


def test_the_tls_proxy_example_serves_the_ui_api_and_websockets(tmp_path):
    """nginx with infra/server/nginx.conf in front of a server with an auth string: the UI,
    the API and the events websocket (a flow's task run reaches the server only as events)
    work over TLS with a private CA (PREFECT_API_SSL_CERT_FILE); plain HTTP redirects."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_SSL_CERT_FILE, temporary_settings

    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if nginx is None:
        pytest.skip(
            "nginx is not installed (apt-get install nginx): the TLS proxy example is not tried"
        )
    # nginx's workers run as another user when started as root: a folder they can enter
    prefix = Path(tempfile.mkdtemp(prefix="advloop-nginx-"))
    prefix.chmod(0o755)
    ca, cert, key = _certificates(prefix)
    http, https = free_port(), free_port()
    proxy = f"https://127.0.0.1:{https}"
    try:
        with prefect_server(
            tmp_path / "home",
            PREFECT_SERVER_API_AUTH_STRING=AUTH,
            PREFECT_SERVER_CSRF_PROTECTION_ENABLED="true",
            PREFECT_SERVER_UI_API_URL=f"{proxy}/api",
            PREFECT_SERVER_API_KEEPALIVE_TIMEOUT="75",
        ) as server:
            upstream = int(server.url.rsplit(":", 1)[1].split("/")[0])
            example = (Path(__file__).parents[2] / "infra/server/nginx.conf").read_text()
            conf = prefix / "nginx.conf"
            conf.write_text(_nginx_config(example, prefix, upstream, http, https, cert, key))
            checked = subprocess.run(
                [nginx, "-t", "-c", str(conf), "-p", str(prefix)], capture_output=True, text=True
            )
            assert checked.returncode == 0, checked.stderr
            proc = subprocess.Popen(
                [nginx, "-c", str(conf), "-p", str(prefix)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                context = ssl.create_default_context(cafile=str(ca))
                deadline = time.monotonic() + 30
                while True:
                    try:
                        with urllib.request.urlopen(
                            f"{proxy}/api/health", context=context, timeout=10
                        ) as answer:
                            assert answer.status == 200
                            break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.5)
                with urllib.request.urlopen(f"{proxy}/", context=context, timeout=30) as answer:
                    assert answer.status == 200 and "text/html" in answer.headers["Content-Type"]
                    assert answer.headers["Strict-Transport-Security"]
                with urllib.request.urlopen(
                    f"{proxy}/ui-settings", context=context, timeout=30
                ) as answer:
                    settings = json.loads(answer.read())
                assert settings["api_url"] == f"{proxy}/api" and settings["auth"] == "BASIC"
                assert settings["csrf_enabled"] is True

                class NoRedirect(urllib.request.HTTPRedirectHandler):
                    def redirect_request(self, *args, **kwargs):
                        return None

                with pytest.raises(urllib.error.HTTPError) as redirect:
                    urllib.request.build_opener(NoRedirect).open(
                        f"http://127.0.0.1:{http}/api/health", timeout=10
                    )
                assert redirect.value.code == 301
                assert redirect.value.headers["Location"] == "https://127.0.0.1/api/health"

                done = subprocess.run(
                    [sys.executable, "-c", TINY_FLOW, "through-the-proxy"],
                    cwd=tmp_path,
                    capture_output=True,
                    text=True,
                    timeout=300,
                    env=clean_env(
                        PREFECT_API_URL=f"{proxy}/api",
                        PREFECT_API_AUTH_STRING=AUTH,
                        PREFECT_API_SSL_CERT_FILE=str(ca),
                        PREFECT_HOME=str(tmp_path / "client-home"),
                    ),
                )
                assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
                found = re.search(r"flow run ([0-9a-f-]{36}) COMPLETED 42", done.stdout)
                assert found, done.stdout[-3000:]
                _assert_secret_free(done.stdout + done.stderr, "the flow's output")

                # the task run exists only if its events came through the websocket
                with (
                    _authenticated(f"{proxy}/api"),
                    temporary_settings({PREFECT_API_SSL_CERT_FILE: str(ca)}),
                ):
                    deadline = time.monotonic() + 60
                    while True:
                        with get_client(sync_client=True) as client:
                            tasks = client.read_task_runs()
                        if [
                            t
                            for t in tasks
                            if t.flow_run_id == uuid.UUID(found.group(1))
                            and t.state
                            and t.state.is_completed()
                        ]:
                            break
                        assert time.monotonic() < deadline, "no task run arrived as events"
                        time.sleep(1)
            finally:
                proc.terminate()
                proc.wait(30)
            _assert_secret_free((prefix / "access.log").read_text(), "nginx's access log")
            assert "/api/events/in" in (prefix / "access.log").read_text()
        _assert_secret_free(server.log.read_text(), "the server's log")
    finally:
        shutil.rmtree(prefix, ignore_errors=True)
