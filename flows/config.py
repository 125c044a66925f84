"""Run configuration: small models per concern, composed into one :class:`RunConfig`.

A config is YAML. Relative paths are resolved against the config file's folder. Unknown
keys are errors. :func:`validate_config` checks the file, the structures and the level of
theory together and reports every problem at once, without computing anything.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import yaml
from ase import Atoms
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adversarial.attack import AttackSettings
from adversarial.baselines import CommitteeMDSettings, RandomDisplacementSettings
from adversarial.geometry import check_geometry
from adversarial.seeding import SeedPolicy
from adversarial.selection import SelectionSettings
from calculators.factory import LabelSettings, import_factory
from calculators.pyscf_calculator import PySCFSettings
from calculators.pyscf_periodic import PeriodicPySCFSettings
from potentials.model import ModelSpec
from potentials.training import TrainingSettings

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PositiveInt = Annotated[int, Field(ge=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SystemConfig(_Strict):
    """The system: a name (the run folder's name) and its starting structure(s)."""

    name: str
    structures: Path = Field(description="xyz/extxyz/CIF/... file readable by ase.io.read")

    @model_validator(mode="after")
    def _name_is_safe(self) -> SystemConfig:
        if not _NAME.match(self.name):
            raise ValueError(
                f"system.name {self.name!r} must be 1-64 letters, digits, '_', '-' or '.', "
                "starting with a letter or digit (it names the run folder)")
        return self


class InitialDataConfig(_Strict):
    """How the initial dataset is made: random Gaussian displacements (std in Å) of the
    starting structures, each labelled with DFT."""

    n_structures: PositiveInt = 12
    displacement: float = Field(0.05, gt=0, description="Å")
    seed: int = 0


class ExplorationConfig(_Strict):
    """How each generation looks for new geometries: the strategy (the adversarial attack,
    or one of the baselines it is compared with: random displacement, committee molecular
    dynamics), the seed structures it starts from, and how many."""

    strategy: Literal["adversarial", "random", "md"] = "adversarial"
    seeds: SeedPolicy = "random"
    n_seeds: PositiveInt = 16


class CommitteeConfig(_Strict):
    """Members differ by seed; with ``bootstrap`` each also trains on its own resample
    (with replacement) of the training split. ``warm_start`` starts each member of a new
    generation from its previous weights."""

    n_members: int = Field(4, ge=2)
    seed: int = 0
    warm_start: bool = True
    bootstrap: bool = False


class ConvergenceConfig(_Strict):
    """When the loop has converged (see :func:`flows.steps.decide`).

    - ``force_std_threshold``/``patience``: the mean force uncertainty σ_F (eV/Å) of the
      attacked geometries stayed below the threshold for ``patience`` consecutive
      generations (reason ``converged``);
    - ``min_candidates``: fewer than this many attacked geometries had an uncertainty at
      or above the selection threshold, so a generation would add too little to be worth
      its labels; it stops before labelling them (reason ``few_candidates``; 0: off).
    """

    force_std_threshold: float = Field(0.05, gt=0, description="eV/Å")
    patience: PositiveInt = 1
    min_candidates: int = Field(0, ge=0, description="attacked geometries above the "
                                "selection threshold; fewer stops the run (0: off)")


class BudgetConfig(_Strict):
    """Limits on a run: generations of exploration, new (non-initial) labels, the
    fraction of a generation's DFT labels that may fail before the run stops, and wall
    time.

    ``max_wall_hours`` limits one invocation (``advloop run`` or one flow run), checked
    before each step of a generation: a run that reaches it stops cleanly with reason
    ``max_wall_time`` and writes its summary, and re-running the same config resumes it
    with a fresh allowance. Set it below a batch job's time limit so the job ends with a
    summary instead of being killed.
    """

    max_generations: PositiveInt = 4
    max_labels: PositiveInt = 100
    max_failure_ratio: float = Field(0.5, ge=0, le=1)
    max_wall_hours: float | None = Field(None, gt=0, description="h per invocation; None: no limit")


class ComputeConfig(_Strict):
    """Threads, and how the labelling tasks of a generation run: how many at once (each
    labels one structure), how often a task that raised is retried and after what delay
    (s), and after how long a task is abandoned (s; None: never). A label that is still
    missing after its retries counts as a failed label (see ``budget.max_failure_ratio``)
    and is retried on the next re-run. In Prefect's thread pool a timeout takes effect
    when the calculator returns control to Python (between SCF iterations for PySCF)."""

    torch_threads: PositiveInt = 1
    label_workers: PositiveInt = 1
    label_retries: int = Field(1, ge=0)
    label_retry_delay_seconds: float = Field(10.0, ge=0, description="s")
    label_timeout_seconds: float | None = Field(None, gt=0, description="s; None: no limit")


class RunConfig(_Strict):
    system: SystemConfig
    initial_data: InitialDataConfig = InitialDataConfig()
    labels: LabelSettings = LabelSettings()
    dft: PySCFSettings = PySCFSettings()
    periodic_dft: PeriodicPySCFSettings = PeriodicPySCFSettings()
    model: ModelSpec = ModelSpec()
    committee: CommitteeConfig = CommitteeConfig()
    training: TrainingSettings = TrainingSettings()
    exploration: ExplorationConfig = ExplorationConfig()
    attack: AttackSettings = AttackSettings()
    random: RandomDisplacementSettings = RandomDisplacementSettings()
    md: CommitteeMDSettings = CommitteeMDSettings()
    selection: SelectionSettings = SelectionSettings()
    convergence: ConvergenceConfig = ConvergenceConfig()
    budget: BudgetConfig = BudgetConfig()
    compute: ComputeConfig = ComputeConfig()
    output_dir: Path = Path("runs")

    def run_dir(self) -> Path:
        return self.output_dir / self.system.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class ConfigError(Exception):
    """A config or its inputs are invalid. ``problems`` lists every problem found."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


def _format_validation_error(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            out.append(f"{loc}: unknown key (check its spelling; see examples/ammonia.yaml)")
        elif e["type"] == "missing":
            out.append(f"{loc}: required key is missing")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            out.append(f"{loc}: {msg} (got {e.get('input')!r})")
    return out


def load_config(path: str | Path, output_dir: str | Path | None = None) -> RunConfig:
    """Parse and validate a config file (syntax, keys, types, ranges); no file checks.

    Raises :class:`ConfigError`.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), ["config file not found"])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(str(path), [f"not valid YAML: {err}"]) from err
    if not isinstance(raw, dict):
        raise ConfigError(str(path), ["the config must be a YAML mapping of sections "
                                      "(system, dft, model, ...)"])
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(str(path), _format_validation_error(err)) from err
    base = path.resolve().parent
    updates = {"system": config.system.model_copy(
        update={"structures": base / config.system.structures})}
    if output_dir is not None:
        updates["output_dir"] = Path(output_dir)
    return config.model_copy(update=updates)


def read_structures(path: Path) -> list[Atoms]:
    """Every frame of a structure file, or raise ValueError saying why it is unreadable."""
    from ase.io import read

    if not path.is_file():
        raise ValueError(f"structure file {path} not found")
    try:
        frames = read(str(path), index=":")
    except Exception as err:  # ASE raises many types for malformed files
        raise ValueError(f"structure file {path} could not be read: {err}") from err
    if not frames:
        raise ValueError(f"structure file {path} holds no structures")
    return frames


def check_inputs(config: RunConfig) -> list[str]:
    """Problems with the config's structures and level of theory (empty if none)."""
    problems: list[str] = []
    try:
        frames = read_structures(config.system.structures)
    except ValueError as err:
        return [f"system.structures: {err}"]
    if len({tuple(a.numbers) for a in frames}) > 1:
        problems.append("system.structures: all structures must have the same atoms in the "
                        "same order (one composition per run)")
    pyscf = config.labels.calculator == "pyscf"
    for k, atoms in enumerate(frames):
        if atoms.pbc.any() and pyscf:
            problems.append(f"system.structures frame {k}: a periodic cell cannot be labelled "
                            "by the molecular PySCF calculator; choose labels.calculator: "
                            "pyscf_periodic or tblite (or your own: python)")
        elif not atoms.pbc.any() and config.labels.calculator == "pyscf_periodic":
            problems.append(f"system.structures frame {k}: labels.calculator pyscf_periodic "
                            "needs a periodic cell (pbc and a cell in the structure file); "
                            "use labels.calculator: pyscf for a molecule")
        elif atoms.pbc.any() and not atoms.pbc.all():
            problems.append(f"system.structures frame {k}: pbc must be all true or all false, "
                            f"got {atoms.pbc.tolist()}")
        reason = check_geometry(atoms.numbers, atoms.positions,
                                config.selection.min_distance_factor, 1e9,
                                atoms.cell.array, atoms.pbc)
        if reason is not None:
            problems.append(f"system.structures frame {k}: {reason}")
    n_electrons = int(frames[0].numbers.sum()) - config.dft.charge
    if n_electrons <= 0:
        problems.append(f"dft.charge {config.dft.charge} leaves {n_electrons} electrons")
    elif (n_electrons - config.dft.spin) % 2:
        problems.append(
            f"dft.spin (2S = {config.dft.spin}) cannot fit {n_electrons} electrons "
            f"(charge {config.dft.charge}): 2S must be {'odd' if n_electrons % 2 else 'even'}")
    if pyscf:
        problems.extend(_basis_problems(config.dft.basis, sorted(set(frames[0].get_chemical_symbols()))))
    if config.labels.calculator == "python":
        try:
            import_factory(config.labels.python)
        except ValueError as err:
            problems.append(str(err))
    return problems


def _basis_problems(basis: str, symbols: list[str]) -> list[str]:
    from pyscf.gto import basis as pyscf_basis

    out = []
    for symbol in symbols:
        try:
            if not pyscf_basis.load(basis, symbol):
                raise KeyError(symbol)
        except Exception:
            out.append(f"dft.basis {basis!r} has no functions for element {symbol}")
    return out


def validate_config(path: str | Path, output_dir: str | Path | None = None) -> RunConfig:
    """Full validation: the config and its inputs. Raises :class:`ConfigError` with every
    problem found; computes nothing."""
    config = load_config(path, output_dir)
    problems = check_inputs(config)
    if problems:
        raise ConfigError(str(path), problems)
    return config


def initial_structures(config: RunConfig, rng: np.random.Generator) -> list[Atoms]:
    """The starting structures displaced at random (Gaussian, std in Å), round-robin."""
    frames = read_structures(config.system.structures)
    out = []
    for k in range(config.initial_data.n_structures):
        atoms = frames[k % len(frames)].copy()
        atoms.calc = None
        atoms.positions += rng.normal(0.0, config.initial_data.displacement, atoms.positions.shape)
        out.append(atoms)
    return out
