"""Configuration by kinds: labels and exploration are unions on ``kind``, the geometry
limits one section, an old-style config is refused with the new form of each moved key,
and the schema module imports none of the loading and checking."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ase import Atoms
from ase.io import write
from typer.testing import CliRunner

from advloop.flows.cli import app
from advloop.flows.config import ConfigError, RunConfig
from advloop.flows.validation import load_config, validate_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ammonia.yaml"
ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, data: dict, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def _cu3(tmp_path: Path, labels: dict) -> Path:
    """A config for an odd-electron Cu3 (87 electrons) labelled by ``labels``."""
    write(tmp_path / "cu3.xyz", Atoms("Cu3", positions=[[0, 0, 0], [2.5, 0, 0], [1.25, 2.1, 0]]))
    return _write(
        tmp_path,
        {
            "system": {"name": "cu3", "structures": "cu3.xyz"},
            "labels": labels,
            "output_dir": str(tmp_path / "runs"),
        },
    )


@pytest.mark.parametrize(
    "labels",
    [
        {"kind": "emt"},
        "emt",
        {"kind": "tblite"},
        {"kind": "python", "factory": "ase.calculators.emt:EMT"},
    ],
    ids=["emt", "emt-by-name", "tblite", "python"],
)
def test_odd_electron_cu3_validates_for_labellers_without_a_spin(tmp_path, labels):
    """Before kinds, the PySCF electron count refused every labeller here with a message
    about dft.spin."""
    config = validate_config(_cu3(tmp_path, labels))
    assert config.labels.kind == (labels if isinstance(labels, str) else labels["kind"])


def test_odd_electron_cu3_is_refused_by_pyscf_naming_labels_spin(tmp_path):
    result = CliRunner().invoke(
        app, ["validate", str(_cu3(tmp_path, {"kind": "pyscf", "basis": "def2-SVP"}))]
    )
    assert result.exit_code == 2
    assert "labels.spin (2S = 0) cannot fit 87 electrons" in result.output
    assert "dft." not in result.output
    path = _cu3(tmp_path, {"kind": "pyscf", "method": "UKS", "spin": 1, "basis": "def2-SVP"})
    assert validate_config(path).labels.spin == 1
    with pytest.raises(ConfigError, match=r"labels\.uhf \(the number of unpaired electrons = 2\)"):
        validate_config(_cu3(tmp_path, {"kind": "tblite", "uhf": 2}))


def test_sections_without_a_kind_take_todays_defaults(tmp_path):
    path = _write(
        tmp_path,
        {
            "system": {"name": "a", "structures": "x.xyz"},
            "labels": {"basis": "STO-3G"},
            "exploration": {"n_steps": 7},
        },
    )
    config = load_config(path)
    assert config.labels.kind == "pyscf" and config.labels.basis == "STO-3G"
    assert config.exploration.kind == "adversarial" and config.exploration.n_steps == 7
    bare = load_config(_write(tmp_path, {"system": {"name": "a", "structures": "x.xyz"}}))
    assert bare.labels.level_of_theory == "RKS/PBE/6-31G*"
    assert (bare.exploration.temperature, bare.exploration.n_seeds) == (1000.0, 16)


def test_each_exploration_kind_is_the_settings_its_strategy_reads(tmp_path):
    from advloop.adversarial.attack import AttackSettings
    from advloop.adversarial.baselines import CommitteeMDSettings
    from advloop.adversarial.random_displacement import RandomDisplacementSettings

    base = {"system": {"name": "a", "structures": "x.xyz"}}
    for kind, cls, extra in (
        ("adversarial", AttackSettings, {"n_steps": 3}),
        ("md", CommitteeMDSettings, {"n_steps": 3, "timestep": 1.0}),
        ("random", RandomDisplacementSettings, {"std": 0.1}),
    ):
        config = load_config(_write(tmp_path, {**base, "exploration": {"kind": kind, **extra}}))
        assert isinstance(config.exploration, cls)
        assert all(getattr(config.exploration, k) == v for k, v in extra.items())
    with pytest.raises(
        ConfigError,
        match=r"exploration.std: unknown key for exploration.kind md "
        r"\(a setting of kind random: choose that kind",
    ):
        load_config(_write(tmp_path, {**base, "exploration": {"kind": "md", "std": 0.1}}))
    with pytest.raises(
        ConfigError,
        match=r"labels.uhf: unknown key for labels.kind pyscf \(a "
        r"setting of kind tblite",
    ):
        load_config(_write(tmp_path, {**base, "labels": {"uhf": 1}}))
    with pytest.raises(ConfigError, match=r"labels.spn: unknown key; did you mean 'spin'"):
        load_config(_write(tmp_path, {**base, "labels": {"spn": 1}}))


def test_the_geometry_section_reaches_every_geometry_check(tmp_path):
    base = {
        "system": {"name": "a", "structures": str(EXAMPLE.parent / "structures" / "nh3.xyz")},
        "geometry": {"min_distance_factor": 0.3, "max_bond_factor": 2.5},
    }
    for kind in ("adversarial", "md", "random"):
        config = load_config(_write(tmp_path, {**base, "exploration": {"kind": kind}}))
        for section in (config.exploration, config.selection, config.geometry):
            assert (section.min_distance_factor, section.max_bond_factor) == (0.3, 2.5)
    # the structures a run starts from are checked with the same limit
    (tmp_path / "close.xyz").write_text("2\n\nH 0 0 0\nH 0 0 0.2\n")
    close = {
        "system": {"name": "a", "structures": "close.xyz"},
        "labels": "emt",
        "output_dir": str(tmp_path / "runs"),
    }
    with pytest.raises(ConfigError, match="atoms 0 and 1"):
        validate_config(_write(tmp_path, close))
    assert validate_config(_write(tmp_path, {**close, "geometry": {"min_distance_factor": 0.1}}))
    with pytest.raises(ConfigError, match=r"geometry.max_bond_factor \(0.4\) must be larger"):
        load_config(
            _write(
                tmp_path, {**base, "geometry": {"min_distance_factor": 0.5, "max_bond_factor": 0.4}}
            )
        )


def test_to_yaml_loads_back_to_the_same_config(tmp_path):
    config = load_config(
        _write(
            tmp_path,
            {
                "system": {"name": "a", "structures": "x.xyz"},
                "labels": {"kind": "tblite", "uhf": 1},
                "exploration": {"kind": "md", "n_steps": 5},
                "geometry": {"max_bond_factor": 3.0},
            },
        )
    )
    text = config.to_yaml()
    dumped = yaml.safe_load(text)
    assert list(dumped["labels"])[0] == "kind" and list(dumped["exploration"])[0] == "kind"
    assert "max_bond_factor" not in dumped["exploration"] | dumped["selection"]
    assert load_config(_write(tmp_path, dumped, "again.yaml")).model_dump() == config.model_dump()
    assert RunConfig.model_validate(dumped) == config


def test_counts_are_limited_by_the_kind_they_belong_to(tmp_path):
    base = {"system": {"name": "a", "structures": "x.xyz"}}
    with pytest.raises(
        ConfigError, match="exploration.n_steps: 200000 is above the limit of 100000"
    ):
        load_config(_write(tmp_path, {**base, "exploration": {"n_steps": 200_000}}))
    config = load_config(
        _write(tmp_path, {**base, "exploration": {"kind": "md", "n_steps": 200_000}})
    )
    assert config.exploration.n_steps == 200_000  # committee MD runs for up to 10^7 steps
    with pytest.raises(ConfigError, match="labels.max_cycle: 1000000 is above the limit"):
        load_config(
            _write(tmp_path, {**base, "labels": {"kind": "pyscf_periodic", "max_cycle": 1_000_000}})
        )


def test_an_old_style_config_is_refused_with_the_new_form_of_each_key(tmp_path):
    """Every moved key at once, exit status 2, before any compute, for validate and run."""
    old = {
        "system": {"name": "a", "structures": str(EXAMPLE.parent / "structures" / "nh3.xyz")},
        "labels": {
            "calculator": "python",
            "python": "ase.calculators.emt:EMT",
            "options": {"asap_cutoff": True},
        },
        "periodic_dft": {"ke_cutoff": 100.0},
        "exploration": {"strategy": "random", "n_seeds": 2, "max_bond_factor": 3.0},
        "random": {"std": 0.1, "min_distance_factor": 0.4},
        "attack": {"n_steps": 3},
    }
    path = _write(tmp_path, old)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    problems = err.value.problems
    assert sorted(problems[:-1]) == sorted(
        [
            "labels.calculator: moved to labels.kind",
            "labels.python: moved to labels.factory (with labels.kind: python)",
            "exploration.strategy: moved to exploration.kind",
            "periodic_dft.ke_cutoff: moved to labels.ke_cutoff (with labels.kind: pyscf_periodic); "
            "this run labels with python, which does not read it: drop it, or choose that kind",
            "attack.n_steps: moved to exploration.n_steps (with exploration.kind: adversarial); this "
            "run explores with random, which does not read it: drop it, or choose that kind",
            "random.std: moved to exploration.std (with exploration.kind: random)",
            "random.min_distance_factor: moved to geometry.min_distance_factor",
            "exploration.max_bond_factor: moved to geometry.max_bond_factor",
        ]
    )
    new_form = problems[-1]
    assert (
        "labels: {kind: python, options: {asap_cutoff: true}, factory: 'ase.calculators.emt:EMT'}"
    ) in new_form
    assert "exploration: {kind: random, n_seeds: 2, std: 0.1}" in new_form
    assert "geometry: {min_distance_factor: 0.4, max_bond_factor: 3.0}" in new_form
    out = tmp_path / "out"
    for command in (["validate", str(path)], ["run", str(path), "--output-dir", str(out)]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, result.output
        assert "labels.python: moved to labels.factory" in result.output
    assert not out.exists()
    # written in the new form it shows, the config is valid
    new = {
        "system": old["system"],
        "output_dir": str(tmp_path / "runs"),
        **yaml.safe_load(
            "\n".join(
                part.strip()
                for part in new_form.split("write the moved keys as ")[1]
                .removesuffix(" (see examples/ammonia.yaml)")
                .split("; ")
            )
        ),
    }
    config = validate_config(_write(tmp_path, new, "new.yaml"))
    assert config.labels.kind == "python" and config.exploration.std == 0.1
    assert config.geometry.max_bond_factor == 3.0


def test_the_schema_module_imports_no_loading_or_checks():
    """flows/config.py (the schema) ← flows/inputs.py (reading, checks) ← flows/validation.py:
    importing the schema imports neither of the others (no import circle)."""
    code = (
        "import sys, advloop.flows.config; "
        "print(sorted(m for m in sys.modules if m.startswith('advloop.flows.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "['advloop.flows.config']", done.stdout
    code = "import sys, advloop.flows.inputs; print('advloop.flows.validation' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert done.stdout.strip() == "False"


def test_a_python_labeller_beside_the_config_needs_no_pythonpath(tmp_path, monkeypatch):
    from ase.calculators.emt import EMT

    from advloop.calculators.factory import make_calculator

    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    (tmp_path / "advloop_case_beside.py").write_text(
        "from ase.calculators.emt import EMT\n\n\ndef make(**options):\n    return EMT(**options)\n"
    )
    package = tmp_path / "calcs" / "advloop_case_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "emt.py").write_text("from ase.calculators.emt import EMT as make\n")
    cases = {
        "advloop_case_beside:make": None,  # the config's own folder
        "advloop_case_pkg.emt:make": "calcs",  # labels.path, relative to the config
    }
    try:
        for factory, path in cases.items():
            labels = {"kind": "python", "factory": factory, **({"path": path} if path else {})}
            config = validate_config(_cu3(tmp_path, labels))
            where = tmp_path / (path or "")
            assert config.labels.path == str(where)
            calc, theory, _ = make_calculator(config.labels)
            assert isinstance(calc, EMT)
            assert "path" not in str(theory)  # where the module lies is no level of theory
            assert str(where) not in sys.path  # found there without touching sys.path
        with pytest.raises(ConfigError, match=f"or in {tmp_path}"):
            validate_config(_cu3(tmp_path, {"kind": "python", "factory": "advloop_case_nope:make"}))
    finally:
        for name in ("advloop_case_beside", "advloop_case_pkg", "advloop_case_pkg.emt"):
            sys.modules.pop(name, None)
