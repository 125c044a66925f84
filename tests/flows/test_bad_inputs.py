"""The bad-input corpus (tests/data/bad_inputs, indexed by cases.yaml): each case is refused
by `advloop validate` and by `advloop run --output-dir out` with exit status 2, a message
that names the problem and the fix, no traceback, and nothing computed or written.

Most cases drive the command line in this process (typer's CliRunner: about 0.1 s a
command; a case's own ``labels.python`` modules are written to a folder put on ``sys.path``
for it, without bytecode files, and forgotten after it); the cases about permissions run it in a real process (5-10 s a command, most
of it importing torch, schnetpack and PySCF), which also checks the exit status and that
Prefect's home folder is never made. As root, which reads and writes anything, those
processes run without the capabilities that let root ignore file modes (setpriv).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from advloop.flows.cli import app
from advloop.flows.config import ConfigError
from advloop.flows.validation import validate_config
from tests.flows.prefect_server import clean_env

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "data" / "bad_inputs"
CASES: dict[str, dict] = yaml.safe_load((CORPUS / "cases.yaml").read_text())
# Cases whose file modes root ignores: run in a real process, without root's override.
PERMISSION_CASES = {
    name
    for name, case in CASES.items()
    if {"unreadable", "read_only_dir"} & set(case.get("setup", {}))
}
_UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@cache
def _process_prefix() -> list[str] | None:
    """What runs a process subject to file modes: nothing for a user, setpriv without the
    capabilities to override them for root; None where root cannot drop them."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    done = subprocess.run([*_UNPRIVILEGED, "true"], capture_output=True)
    return _UNPRIVILEGED if done.returncode == 0 else None


def _prepare(name: str, tmp_path: Path, monkeypatch=None) -> tuple[Path, Path]:
    """A copy of the corpus and an empty working folder with the case's setup made; returns
    the config to pass and the working folder. A case's ``python_module`` modules (written
    here, importable while ``monkeypatch`` lasts) need ``monkeypatch``; the test forgets
    them once they have been imported (:func:`_forget_modules`)."""
    case = CASES[name]
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS, corpus)
    work = tmp_path / "work"
    work.mkdir()
    setup = case.get("setup", {})
    if "unreadable" in setup:
        (corpus / setup["unreadable"]).chmod(0)
    if "file" in setup:
        (work / setup["file"]).parent.mkdir(parents=True, exist_ok=True)
        (work / setup["file"]).write_text("not a folder\n")
    if "read_only_dir" in setup:
        (work / setup["read_only_dir"]).mkdir()
        (work / setup["read_only_dir"]).chmod(0o555)
    if "python_module" in setup:
        modules = tmp_path / "python_path"
        modules.mkdir()
        for module, source in setup["python_module"].items():
            (modules / f"{module}.py").write_text(source)
        monkeypatch.setattr(sys, "dont_write_bytecode", True)  # no __pycache__: nothing written
        monkeypatch.syspath_prepend(str(modules))
    return corpus / case.get("config", f"{name}.yaml"), work


def _forget_modules(name: str) -> None:
    """Drop the case's ``python_module`` modules from ``sys.modules``."""
    for module in CASES[name].get("setup", {}).get("python_module", {}):
        sys.modules.pop(module, None)


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, mode, and for files size and mtime."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(root))] = (
            (stat.S_IFMT(st.st_mode), st.st_mode)
            if path.is_dir()
            else (stat.S_IFMT(st.st_mode), st.st_mode, st.st_size, st.st_mtime_ns)
        )
    return out


def _restore_modes(root: Path) -> None:
    """Give back what a case took away, so that pytest can remove its folder."""
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _check_refusal(name: str, command: str, exit_code: int, output: str) -> None:
    assert exit_code == 2, f"{name}: advloop {command} exited {exit_code}:\n{output}"
    assert "Traceback" not in output, f"{name}: advloop {command} printed a traceback:\n{output}"
    longest = max(map(len, output.splitlines()), default=0)  # values echoed are cut short
    assert longest <= 600, f"{name}: advloop {command} printed a line of {longest} characters"
    for expected in CASES[name]["expect"]:
        assert expected in output, f"{name}: advloop {command} did not say {expected!r}:\n{output}"


def _commands(config: Path) -> dict[str, list[str]]:
    return {
        "validate": ["validate", str(config)],
        "run": ["run", str(config), "--output-dir", "out"],
    }


def test_the_corpus_is_complete():
    """At least 30 cases, each described with a problem and a fix to expect, and every
    config in the corpus belongs to a case."""
    assert len(CASES) >= 30
    for name, case in CASES.items():
        assert case["description"].strip() and len(case["expect"]) >= 2, name
        assert set(case.get("setup", {})) <= {
            "unreadable",
            "file",
            "read_only_dir",
            "python_module",
        }, name
    configs = {p.name for p in CORPUS.glob("*.yaml")} - {"cases.yaml"}
    named = {case.get("config", f"{name}.yaml") for name, case in CASES.items()}
    assert configs <= named, f"configs without a case: {sorted(configs - named)}"


@pytest.mark.parametrize("name", sorted(set(CASES) - PERMISSION_CASES))
def test_bad_input_is_refused(name, tmp_path, monkeypatch):
    config, work = _prepare(name, tmp_path, monkeypatch)
    monkeypatch.chdir(work)
    before = _snapshot(tmp_path)
    runner = CliRunner()
    try:
        for command, args in _commands(config).items():  # validate first: run must not start
            result = runner.invoke(app, args)
            assert result.exception is None or isinstance(result.exception, SystemExit), (
                f"{name}: advloop {command} raised {result.exception!r}"
            )
            _check_refusal(name, command, result.exit_code, result.output)
            assert _snapshot(tmp_path) == before, f"{name}: advloop {command} wrote files"
    finally:
        _forget_modules(name)


@pytest.mark.parametrize("name", sorted(PERMISSION_CASES))
def test_bad_input_is_refused_by_the_real_command(name, tmp_path):
    prefix = _process_prefix()
    if prefix is None:
        pytest.skip("running as root without setpriv: root reads and writes any file")
    config, work = _prepare(name, tmp_path)
    prefect_home = tmp_path / "prefect-home"
    env = clean_env(PREFECT_HOME=str(prefect_home), PYTHONPATH=str(ROOT))
    before = _snapshot(tmp_path)
    try:
        for command, args in _commands(config).items():
            done = subprocess.run(
                [
                    *prefix,
                    sys.executable,
                    "-c",
                    "from advloop.flows.cli import app; app(prog_name='advloop')",
                    *args,
                ],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            _check_refusal(name, command, done.returncode, done.stdout + done.stderr)
            assert _snapshot(tmp_path) == before, f"{name}: advloop {command} wrote files"
            assert not prefect_home.exists(), f"{name}: advloop {command} started Prefect"
    finally:
        _restore_modes(tmp_path)


def test_free_disk_space_is_checked_against_the_real_disk(tmp_path):
    """compute.min_free_disk_mb above the disk's free space refuses the run; below it, or 0
    (off), the config is valid; either way nothing is left in the output folder."""
    free_mb = shutil.disk_usage(tmp_path).free // 1_000_000
    path = tmp_path / "c.yaml"

    def config(min_free_disk_mb: int) -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "system": {
                        "name": "ammonia",
                        "structures": str(CORPUS / "structures" / "nh3.xyz"),
                    },
                    "compute": {"min_free_disk_mb": min_free_disk_mb},
                    "output_dir": str(tmp_path / "runs"),
                }
            )
        )
        return path

    with pytest.raises(
        ConfigError, match=r"MB free on its disk, less than compute.min_free_disk_mb"
    ):
        validate_config(config(free_mb + 100_000))
    for threshold in (1, 0):
        assert validate_config(config(threshold)).compute.min_free_disk_mb == threshold
    assert [p.name for p in tmp_path.iterdir()] == ["c.yaml"]
