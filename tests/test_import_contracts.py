"""Import contracts: the code is one package, ``advloop``.

The four code folders install as ``advloop.flows``, ``advloop.potentials``,
``advloop.adversarial`` and ``advloop.calculators`` (pyproject.toml's ``package-dir``). A
bare ``potentials`` import would work only where the checkout happens to be on
``sys.path`` (pytest puts it there for the ``tests`` package), would load a second copy of
the module, and collides with a published package of this field. Every Python file of the
project is parsed with :mod:`ast` and may not name the four packages bare: not in an
import, not in Python code held in a string (``python -c`` commands of the tests), not in a
string that names a module (Prefect entrypoints, logger names, forkserver preloads). The
docs, configs and deployment files may not either.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "potentials", "adversarial", "calculators")
#: folders of the checkout that are not the project's source (outputs, environments)
SKIP_DIRS = {"build", "dist", "runs", "test-artifacts", "__pycache__", "node_modules"}


def _project_files(suffixes: tuple[str, ...]) -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(ROOT):
        here = Path(folder)
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".")
            and d not in SKIP_DIRS
            and not d.endswith(".egg-info")
            and not (here / d / "pyvenv.cfg").exists()
        )
        found += [here / f for f in sorted(files) if f.endswith(suffixes)]
    return found


def _bare(name: str | None) -> bool:
    """``flows``, ``flows.cli``: a bare name of one of the four packages."""
    return name is not None and name.split(".")[0] in PACKAGES


def _bare_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, statement) of each import of a bare package name in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if _bare(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _bare(node.module):
            found.append((node.lineno, f"from {node.module} import ..."))
    return found


def _names_a_module(text: str) -> bool:
    """Whether a string is a dotted name of one of the four packages' modules, alone or as
    an entrypoint (``flows.steps``, ``flows.deployments.run_submission``,
    ``flows.cli:app``)."""
    match = re.fullmatch(r"(\w+)\.(\w+)[\w.]*(:\w+)?", text)
    return bool(match) and match[1] in PACKAGES and (ROOT / match[1] / f"{match[2]}.py").is_file()


def _problems(source: str, rel: str) -> list[str]:
    """Each bare package name in the Python ``source`` of the file ``rel``."""
    tree = ast.parse(source, filename=rel)
    problems = [f"{rel}:{line}: {stmt}" for line, stmt in _bare_imports(tree)]
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        text = node.value.strip()
        if _names_a_module(text):
            problems.append(f"{rel}:{node.lineno}: string {text!r} names a bare module")
        elif "import" in text:
            try:
                code = ast.parse(text)
            except SyntaxError:
                continue
            problems += [
                f"{rel}:{node.lineno}: code in a string: {stmt}" for _, stmt in _bare_imports(code)
            ]
    return problems


def test_no_python_file_imports_a_bare_package():
    files = _project_files((".py",))
    assert len(files) > 100 and ROOT / "flows" / "cli.py" in files
    problems = [
        p
        for path in files
        for p in _problems(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]
    assert not problems, (
        "import the namespaced form (advloop.flows, advloop.potentials, "
        "advloop.adversarial, advloop.calculators):\n" + "\n".join(problems)
    )


def test_the_checks_catch_each_bare_form():
    # spelt with a prefix, taken off below, so that this file passes its own check
    code = """
import BARE_flows
import BARE_potentials.dataset as d
from BARE_calculators import CommitteeCalculator
from BARE_adversarial.attack import attack
from advloop.flows import steps
from . import sibling
CLI = ["python", "-c", "from BARE_flows.cli import app; app()"]
ENTRYPOINT = "BARE_flows.deployments.run_submission"
LOGGER = "BARE_calculators.scf_ladder"
FINE = ("advloop.flows.steps", "flows/steps.py", "flows.heartbeat_frequency", "adversarial")
""".replace("BARE_", "")
    problems = _problems(code, "example.py")
    lines = sorted(int(p.split(":")[1]) for p in problems)
    assert lines == [2, 3, 4, 5, 8, 9, 10], problems


# Bare forms in prose and configs: python snippets, `python -m`, Prefect entrypoints as
# module paths or file paths, console-script targets.
_TEXT_PATTERNS = [
    re.compile(rf"(?<![\w.])from\s+({'|'.join(PACKAGES)})(\.\w+)*\s+import\b"),
    re.compile(
        rf"(?<![\w.])import\s+({'|'.join(PACKAGES)})(\.\w+)*(?=\s*(?:$|[;,#)]|\sas\s))", re.M
    ),
    re.compile(rf"-m\s+({'|'.join(PACKAGES)})\."),
    re.compile(rf"(?<![\w./])({'|'.join(PACKAGES)})/\w+\.py:\w+"),
    re.compile(rf"""["'`]({"|".join(PACKAGES)})\.\w+(\.\w+)*[:.]\w+["'`]"""),
]


def test_docs_and_configs_name_the_namespaced_modules():
    files = [
        p
        for p in _project_files(
            (
                ".md",
                ".yaml",
                ".yml",
                ".toml",
                ".cfg",
                ".txt",
                ".env",
                ".example",
                ".service",
                ".conf",
            )
        )
        if "results" not in p.relative_to(ROOT).parts
    ]
    assert ROOT / "README.md" in files and ROOT / "infra" / "prefect.yaml" in files
    problems = []
    for path in files:
        for number, line in enumerate(
            path.read_text(encoding="utf-8", errors="replace").splitlines(), 1
        ):
            if any(pattern.search(line) for pattern in _TEXT_PATTERNS):
                problems.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not problems, "name the namespaced form (advloop.flows...):\n" + "\n".join(problems)


def test_the_installed_package_imports_without_the_checkout_on_the_path(tmp_path):
    """From a folder outside the checkout, with PYTHONPATH ignored (-I): the four
    subpackages import from the installed advloop, and no folder of this checkout is
    importable under a bare name."""
    code = (
        "import importlib.util, sys\n"
        "import advloop.flows.cli, advloop.potentials, advloop.adversarial, advloop.calculators\n"
        f"root = {str(ROOT)!r}\n"
        f"for name in {PACKAGES!r}:\n"
        "    spec = importlib.util.find_spec(name)\n"
        "    if spec is not None and (spec.origin or '').startswith(root):\n"
        "        sys.exit(f'{name} is importable bare: {spec.origin}')\n"
        "print(advloop.flows.cli.__name__, advloop.calculators.CommitteeCalculator.__module__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["advloop.flows.cli", "advloop.calculators.committee_calculator"]


@pytest.mark.parametrize("name", PACKAGES)
def test_each_folder_is_its_advloop_subpackage(name):
    import importlib

    module = importlib.import_module(f"advloop.{name}")
    assert module.__name__ == f"advloop.{name}"
    assert Path(module.__file__).parent.name == name
