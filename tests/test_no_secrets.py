"""No secret is committed: the repository's files (tracked ones, and new ones git would
add) hold no auth string, password, API key or private key, only placeholders such as
``<password>`` or ``${PREFECT_API_DATABASE_PASSWORD}``. Secrets belong in environment
files outside the repository (infra/server/README.md)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: A value that is a placeholder, not a secret: <password>, ${VAR}, $VAR, {field},
#: {{ template }}, ***, ..., xxx, or words that say so.
_PLACEHOLDER = re.compile(
    r"""^(<[^<>]+>|\$\{[^}]+\}|\$[A-Za-z_][A-Za-z0-9_]*|\{\{?[^{}]*\}?\}|\*+|\.\.\.|x{3,}|
    change[-_]?me|replace[-_]?me|your[-_]?(password|secret|token|key)|example|placeholder|
    redacted|secret|password|pass|user)$""",
    re.IGNORECASE | re.VERBOSE,
)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")

_RULES: list[tuple[str, re.Pattern[str]]] = [
    # scheme://user:PASSWORD@host (database URLs, API URLs with basic auth)
    (
        "a password in a URL",
        re.compile(
            r"""[a-z][a-z0-9+.-]*://[^\s/:@'"`<>]+:(?P<value>[^\s@/'"`]+)@""", re.IGNORECASE
        ),
    ),
    # PREFECT_*AUTH_STRING / *PASSWORD / API_KEY given a value (env files, YAML, shell)
    # (in Python, an unquoted name is a variable: {PREFECT_API_AUTH_STRING: AUTH})
    (
        "a Prefect secret setting with a value",
        re.compile(
            r"""\bPREFECT_[A-Z_]*(AUTH_STRING|PASSWORD|API_KEY)\b["']?\]?\s*[=:]\s*"""
            r"""(?P<quote>["'`]?)(?P<value>[^\s"'`,)}]+)"""
        ),
    ),
    # password: "..." / password = '...' / auth_string="..." with a literal
    (
        "a password or auth string literal",
        re.compile(
            r"""\b(password|passwd|auth_string|api_key|secret_key)\b["']?\s*[=:]\s*["'](?P<value>[^"'\s]+)["']""",
            re.IGNORECASE,
        ),
    ),
    ("a Prefect Cloud API key", re.compile(r"\b(?P<value>pn[ub]_[A-Za-z0-9]{20,})")),
    ("a private key", re.compile(r"(?P<value>-----BEGIN [A-Z ]*PRIVATE KEY-----)")),
    ("an AWS access key", re.compile(r"\b(?P<value>AKIA[0-9A-Z]{16})\b")),
    ("a GitHub token", re.compile(r"\b(?P<value>gh[pousr]_[A-Za-z0-9]{36,})\b")),
]

#: Values that look like secrets but are known fakes, each with where it is and why.
_KNOWN_FAKES = {
    # the wrong credentials a test sends to a stub server that refuses everything
    ("tests/flows/test_cli_submit.py", "admin:not-this-one"),
}


def _placeholder(value: str) -> bool:
    """``value``, or each ``:``-separated part of it (user:password), is a placeholder."""
    return bool(_PLACEHOLDER.match(value)) or all(
        _PLACEHOLDER.match(part) for part in value.split(":") if part
    )


def _repository_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of the repository's files")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return [ROOT / name for name in listed.decode().split("\0") if name]


def _text(path: Path) -> str | None:
    """The file's text, or None for a binary, a large or a missing file."""
    try:
        if path.stat().st_size > 2_000_000:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def find_secrets(path: str, text: str) -> list[str]:
    """Problems in the text of the file at ``path`` (relative to the repository), as
    ``path:line: what (value)``, values shortened."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for what, rule in _RULES:
            for match in rule.finditer(line):
                value = match.group("value").rstrip(".;,")
                if (
                    path.endswith(".py")
                    and match.groupdict().get("quote") == ""
                    and _NAME.match(value)
                ):
                    continue  # a Python name: {PREFECT_API_AUTH_STRING: auth}, f(X=auth)
                if _placeholder(value) or (path, value) in _KNOWN_FAKES:
                    continue
                found.append(f"{path}:{number}: {what} ({value[:4]}...)")
    return found


def test_the_repository_holds_no_secrets():
    problems = []
    files = _repository_files()
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        if rel == "tests/test_no_secrets.py":
            continue  # its patterns and fakes
        text = _text(path)
        if text is not None:
            problems += find_secrets(rel, text)
    # environment files hold secrets: only their examples belong in the repository
    problems += [
        f"{p.relative_to(ROOT)}: an environment file (commit a .env.example)"
        for p in files
        if p.name == ".env" or p.suffix == ".env"
    ]
    assert len(files) > 20
    assert not problems, (
        "secrets in the repository (move them to an environment file "
        "outside it, see infra/server/README.md):\n" + "\n".join(problems)
    )


@pytest.mark.parametrize(
    "line",
    [
        "PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://prefect:s3cr3t-Value@db:5432/prefect",
        "export PREFECT_SERVER_API_AUTH_STRING=admin:hunter22",
        "PREFECT_API_AUTH_STRING: 'alice:Tr0ub4dor'",
        'password = "correct-horse-battery"',
        "PREFECT_API_KEY=pnu_abcdefghijklmnopqrstuvwxyz0123",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "https://user:tok3n@example.org/api",
        "PREFECT_SERVER_API_AUTH_STRING=admin:password123",
        "PREFECT_API_AUTH_STRING=user:secretsauce",
    ],
)
def test_a_secret_is_found(line):
    assert find_secrets("x.env.example", line) and find_secrets("x.py", f"'{line}'")


@pytest.mark.parametrize(
    "line",
    [
        "PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://prefect:<password>@127.0.0.1:5432/prefect",
        "postgresql+asyncpg://prefect:${PREFECT_API_DATABASE_PASSWORD}@db/prefect",
        'db_url = f"postgresql+asyncpg://prefect:{password}@127.0.0.1:{pg.port}/prefect"',
        "PREFECT_SERVER_API_AUTH_STRING=<user>:<password>",
        "PREFECT_API_AUTH_STRING=$ADVLOOP_AUTH",
        "PREFECT_API_AUTH_STRING=user:password",
        "postgresql://prefect:change-me@db/prefect",
        "With `PREFECT_SERVER_API_AUTH_STRING=<user>:<password>` on the server",
        "auth_string: Optional[SecretStr] = Field(",
        "http://127.0.0.1:4200/api",
        "with temporary_settings({PREFECT_API_AUTH_STRING: AUTH}):",
    ],
)
def test_a_placeholder_is_not_a_secret(line):
    assert not find_secrets("x.py", line)
