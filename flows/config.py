"""Run configuration: small models per concern, composed into one :class:`RunConfig`.

A config is YAML. Relative paths are resolved against the config file's folder. Unknown
keys are errors. :func:`validate_config` checks the file, the structures and the level of
theory together and reports every problem at once, without computing anything.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import yaml
from ase import Atoms
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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
_BYTES = re.compile(r"^\d+(\.\d+)?\s*[KMGTP]i?B$", re.IGNORECASE)  # a size as Dask and Slurm read it
_WALLTIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){1,2}$")  # Slurm's [D-]HH:MM[:SS] or MM:SS


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
    """Threads, the training device, and how the labelling tasks of a generation run: how
    many at once (each labels one structure), how often a task that raised is retried and
    after what delay (s), and after how long a task is abandoned (s; None: never). A label
    that is still missing after its retries counts as a failed label (see
    ``budget.max_failure_ratio``) and is retried on the next re-run. In Prefect's thread
    pool a timeout takes effect when the calculator returns control to Python (between SCF
    iterations for PySCF).

    ``device`` is where committee members train: ``auto`` takes CUDA where the process
    that trains a member sees a GPU (``torch.cuda.is_available()``; with a Slurm training
    runner that is the GPU node, not the login node), else the CPU; ``cuda`` fails a
    member's training on a machine without one. ``label_workers`` also bounds the labels
    in flight on a Dask or Slurm labelling runner: set it to the task slots there.
    """

    torch_threads: PositiveInt = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    label_workers: PositiveInt = 1
    label_retries: int = Field(1, ge=0)
    label_retry_delay_seconds: float = Field(10.0, ge=0, description="s")
    label_timeout_seconds: float | None = Field(None, gt=0, description="s; None: no limit")


class ThreadsRunner(_Strict):
    """Tasks run in threads of the flow process (Prefect's ThreadPoolTaskRunner): the
    default, in the generation's own flow run."""

    kind: Literal["threads"] = "threads"


class ProcessesRunner(_Strict):
    """Tasks run in a pool of ``max_workers`` processes on the flow's machine (Prefect's
    ProcessPoolTaskRunner; None: one per CPU). The pool is started (spawn: each process
    imports advloop afresh) for each generation's phase."""

    kind: Literal["processes"]
    max_workers: PositiveInt | None = None


class DaskRunner(_Strict):
    """Tasks run on a Dask cluster (prefect-dask's DaskTaskRunner): the running scheduler
    at ``address`` (e.g. ``tcp://10.0.0.5:8786``), or else a local cluster of
    ``n_workers`` processes with ``threads_per_worker`` task slots each (default 2 × 1),
    started once per run on the flow's machine. ``memory_limit`` per worker (``"4GB"``;
    None: Dask's share of the machine's memory). A worker's BLAS/OpenMP threads are the
    flow process's ``OMP_NUM_THREADS`` (Dask's default: 1)."""

    kind: Literal["dask"]
    address: str | None = None
    n_workers: PositiveInt | None = None
    threads_per_worker: PositiveInt | None = None
    memory_limit: str | None = None

    @model_validator(mode="after")
    def _address_or_local(self) -> DaskRunner:
        if self.address is not None:
            local = [k for k in ("n_workers", "threads_per_worker", "memory_limit")
                     if getattr(self, k) is not None]
            if local:
                raise ValueError(f"address connects to a running Dask cluster; {', '.join(local)} "
                                 "size a local one: give one or the other")
            if not re.match(r"^([a-z]+://)?\S+:\d+$", self.address):
                raise ValueError(f"address {self.address!r} is not a Dask scheduler address "
                                 "such as tcp://host:8786")
        if self.memory_limit is not None and not _BYTES.match(self.memory_limit):
            raise ValueError(f"memory_limit {self.memory_limit!r} must be a size such as "
                             "'4GB' or '3.5GiB'")
        return self


class SlurmRunner(_Strict):
    """Tasks run on Dask workers in Slurm jobs (dask-jobqueue's SLURMCluster), submitted
    from the flow process as the phase needs them, between ``min_jobs`` and ``max_jobs``
    jobs at once (Dask's adaptive scaling), and cancelled when the run ends.

    Each job asks for ``cores`` CPUs (``--cpus-per-task``), ``memory`` (``"32GB"``),
    ``walltime`` (``HH:MM:SS`` or ``D-HH:MM:SS``) and ``gpus`` GPUs (``--gres=gpu:N``),
    in ``partition`` under ``account``; it runs ``tasks_per_job`` Dask worker processes,
    one task each, with ``cores / tasks_per_job`` OpenMP/BLAS threads per task (exported
    in the job script before ``job_script_prologue``, which can override them: put
    ``module load`` and ``source venv/bin/activate`` lines there). ``job_extra_directives``
    are further ``#SBATCH`` options (``"--constraint=cascadelake"``). ``interface``: the
    network interface workers and scheduler talk over (``ib0``; None: Dask's default).
    ``log_directory``: where the jobs' stdout/stderr go (None: Slurm's ``slurm-<id>.out``
    in the flow's working directory). ``python``: the interpreter on the compute nodes
    (None: the flow's own, which must be on a shared filesystem). ``local_directory``:
    worker scratch space (``$TMPDIR``).

    ``tls`` (default on): Dask's connections between the flow, the scheduler and the
    workers use TLS with a certificate authority made for the run
    (``distributed.Security.temporary()``), so that only the run's workers can join and
    the tasks, which carry the flow's Prefect settings (the API auth string included),
    are encrypted on the cluster's network. The workers' key and certificate are written,
    readable by you only, to ``.dask-tls`` in the run folder (on the shared filesystem the
    workers already need) and deleted when the run's cluster stops."""

    kind: Literal["slurm"]
    cores: PositiveInt
    memory: str
    walltime: str
    tasks_per_job: PositiveInt = 1
    gpus: int = Field(0, ge=0)
    account: str | None = None
    partition: str | None = None
    job_script_prologue: tuple[str, ...] = ()
    job_extra_directives: tuple[str, ...] = ()
    min_jobs: int = Field(0, ge=0)
    max_jobs: PositiveInt = 1
    interface: str | None = None
    log_directory: str | None = None
    python: str | None = None
    local_directory: str | None = None
    tls: bool = True

    @field_validator("walltime", mode="before")
    @classmethod
    def _walltime_text(cls, value):
        if isinstance(value, (int, float)):
            raise ValueError("walltime must be quoted, such as \"04:00:00\" (YAML reads an "
                             "unquoted 04:00:00 as a number of seconds)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SlurmRunner:
        problems = []
        if self.min_jobs > self.max_jobs:
            problems.append(f"min_jobs ({self.min_jobs}) is above max_jobs ({self.max_jobs}): "
                            "adaptive scaling needs min_jobs <= max_jobs")
        if self.cores % self.tasks_per_job:
            problems.append(f"cores ({self.cores}) must be a multiple of tasks_per_job "
                            f"({self.tasks_per_job}): each task gets cores / tasks_per_job threads")
        if not _BYTES.match(self.memory):
            problems.append(f"memory {self.memory!r} must be a size such as '32GB' or '64GiB'")
        if not _WALLTIME.match(self.walltime):
            problems.append(f"walltime {self.walltime!r} must be Slurm's HH:MM:SS, MM:SS or "
                            "D-HH:MM:SS")
        bad = [d for d in self.job_extra_directives if d.lstrip().startswith("#")]
        if bad:
            problems.append(f"job_extra_directives {bad} must be options only "
                            "('--gres=gpu:1'), without '#SBATCH'")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def threads_per_task(self) -> int:
        return self.cores // self.tasks_per_job


RunnerSettings = Annotated[ThreadsRunner | ProcessesRunner | DaskRunner | SlurmRunner,
                           Field(discriminator="kind")]
RUNNER_KINDS = ("threads", "processes", "dask", "slurm")


class RunnersConfig(_Strict):
    """Where the tasks of each generation's phases run: the committee members' training
    (one task per member) and the labels (one task per selected structure), each on its
    own runner, so that members can train on GPU nodes and labels run on CPU nodes. A
    runner is a mapping with a ``kind`` (``threads``, ``processes``, ``dask``, ``slurm``)
    and its settings, or just the kind's name. A phase on any runner but ``threads``
    runs as a sub-flow (``<system>-gen<NNN>-training`` / ``-labelling``) with that task
    runner; see :mod:`flows.runners`."""

    training: RunnerSettings = ThreadsRunner()
    labelling: RunnerSettings = ThreadsRunner()

    @field_validator("training", "labelling", mode="before")
    @classmethod
    def _kind_alone(cls, value):
        return {"kind": value} if isinstance(value, str) else value


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
    runners: RunnersConfig = RunnersConfig()
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
        elif e["type"] == "union_tag_invalid":
            out.append(f"{loc}: unknown kind {e['input'].get('kind')!r}; use one of "
                       f"{', '.join(RUNNER_KINDS)}")
        elif e["type"] == "union_tag_not_found":
            out.append(f"{loc}: say which runner with kind: one of {', '.join(RUNNER_KINDS)}")
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
    problems.extend(_runner_problems(config.runners))
    return problems


def _runner_problems(runners: RunnersConfig) -> list[str]:
    """Runners whose packages are not installed (the ``cluster`` extra)."""
    out = []
    for phase in ("training", "labelling"):
        kind = getattr(runners, phase).kind
        needed = {"dask": ("prefect_dask", "distributed"),
                  "slurm": ("prefect_dask", "distributed", "dask_jobqueue")}.get(kind, ())
        missing = [m for m in needed if importlib.util.find_spec(m) is None]
        if missing:
            out.append(f"runners.{phase}: kind {kind} needs {', '.join(missing)}, not installed: "
                       "pip install 'advloop[cluster]'")
    return out


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
