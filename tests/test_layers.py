"""Import contracts between the packages: data flows one way.

``potentials`` (datasets, models, the committee) is the bottom layer; ``adversarial`` (the
attack, selection, exploration strategies) and ``calculators`` (labellers, the committee
as an ASE calculator) build on it and not on each other; ``flows`` (the loop, Prefect,
configuration, the command line) builds on everything. Only ``flows`` imports the
workflow engine, so the science runs and is tested with no engine at all. Every import
in every module, at the top or inside a function, is read with :mod:`ast`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: package folder -> the advloop packages it may import (besides itself)
ALLOWED = {
    "potentials": set(),
    "adversarial": {"potentials"},
    "calculators": {"potentials"},
    "flows": {"potentials", "adversarial", "calculators"},
}
#: third-party packages of the workflow engine and its executors
ENGINE = ("prefect", "prefect_dask", "dask", "distributed", "dask_jobqueue")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in ``path``; relative imports resolved."""
    package = path.parent.name
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: within the package
                out.append((node.lineno, f"advloop.{package}.{node.module or ''}".rstrip(".")))
            elif node.module:
                out.append((node.lineno, node.module))
    return sorted(out)


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).glob("*.py"))


def test_every_package_is_read() -> None:
    for package in ALLOWED:
        assert len(_modules(package)) >= 5, package
    assert any(
        "import prefect" in p.read_text() or "from prefect" in p.read_text()
        for p in _modules("flows")
    )  # the check below would catch one elsewhere


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_the_layers_below(package: str) -> None:
    bad = []
    for path in _modules(package):
        for line, module in _imports(path):
            parts = module.split(".")
            if parts[0] == "advloop" and len(parts) > 1:
                target = parts[1]
                if target in ALLOWED and target != package and target not in ALLOWED[package]:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
            elif package != "flows" and parts[0] in ENGINE:
                bad.append(
                    f"{path.relative_to(ROOT)}:{line} imports {module} (only flows/ "
                    "may use the workflow engine)"
                )
    assert not bad, "\n".join(bad)


def test_package_root_modules_import_no_subpackage() -> None:
    """Modules at the package root (advloop.constraints and the like) are shared by every
    layer, so they may not depend on any."""
    bad = [
        f"{path.name}:{line} imports {module}"
        for path in sorted((ROOT / "_advloop").glob("*.py"))
        for line, module in _imports(path)
        if module.split(".")[0] == "advloop"
        and len(module.split(".")) > 1
        and module.split(".")[1] in ALLOWED
    ]
    assert not bad, "\n".join(bad)


def test_a_violation_is_caught(tmp_path: Path) -> None:
    """The reader sees imports inside functions and relative ones."""
    (tmp_path / "adversarial").mkdir()
    module = tmp_path / "adversarial" / "m.py"
    module.write_text(
        "def f():\n    from advloop.calculators import factory\n"
        "from . import attack\nimport prefect.states\n"
    )
    assert _imports(module) == [
        (2, "advloop.calculators"),
        (3, "advloop.adversarial"),
        (4, "prefect.states"),
    ]
