"""Run configuration: small models per concern, composed into one :class:`RunConfig`.

A config is YAML. Relative paths are resolved against the config file's folder, and a
leading ``~`` is the home folder. Unknown keys are errors; no number may be infinite or
NaN; counts have upper bounds far above any real run (:data:`LIMITS`). :func:`validate_config` checks the file, the structures, the level of
theory and the run folder (writable, with enough free disk) together and reports every
problem at once, each with what to do about it, computing nothing and leaving nothing
behind (the checks and their messages are in :mod:`advloop.flows.inputs`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import yaml
from ase import Atoms
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from advloop.adversarial.attack import AttackSettings
from advloop.adversarial.baselines import CommitteeMDSettings, RandomDisplacementSettings
from advloop.adversarial.seeding import SeedPolicy
from advloop.adversarial.selection import SelectionSettings
from advloop.calculators.factory import LabelSettings
from advloop.calculators.pyscf_calculator import PySCFSettings
from advloop.calculators.pyscf_periodic import PeriodicPySCFSettings
from advloop.potentials.model import ModelSpec
from advloop.flows.inputs import (ConfigError, check_inputs, check_run_folder,
                                  format_validation_error, read_mapping, read_structures,
                                  short_repr)
from advloop.flows.run_folder import resume_problems
from advloop.potentials.training import TrainingSettings

__all__ = ["LIMITS", "ConfigError", "RunConfig", "check_inputs", "check_run_folder",
           "initial_structures", "load_config", "read_structures", "validate_config"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # fullmatch: no trailing newline
PositiveInt = Annotated[int, Field(ge=1)]
_BYTES = re.compile(r"^\d+(\.\d+)?\s*[KMGTP]i?B$", re.IGNORECASE)  # a size as Dask and Slurm read it
_WALLTIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){1,2}$")  # Slurm's [D-]HH:MM[:SS] or MM:SS


class _Strict(BaseModel):
    # allow_inf_nan: .inf and .nan are refused (inf passes every `> 0` check, nan none)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SystemConfig(_Strict):
    """The system: a name (the run folder's name) and its starting structure(s)."""

    name: str
    structures: Path = Field(description="xyz/extxyz/CIF/... file readable by ase.io.read")

    @model_validator(mode="after")
    def _name_is_safe(self) -> SystemConfig:
        if not _NAME.fullmatch(self.name):
            raise ValueError(
                f"system.name {short_repr(self.name)} must be 1-64 letters, digits, '_', '-' or '.', "
                "starting with a letter or digit (it names the run folder)")
        return self


class InitialDataConfig(_Strict):
    """How the initial dataset is made: random Gaussian displacements (std in Å) of the
    starting structures, each labelled with DFT."""

    n_structures: int = 12
    displacement: float = Field(0.05, gt=0, description="Å")
    seed: int = 0

    @field_validator("n_structures")
    @classmethod
    def _at_least_two(cls, value: int) -> int:
        if value < 2:
            raise ValueError(
                "must be at least 2: the committee trains on the initial "
                "structures and the selection threshold is a percentile of their uncertainties, "
                "so a run cannot start from fewer than 2 labelled structures (12 is the default)")
        return value


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
    """When the loop has converged (see :func:`advloop.flows.steps.decide`).

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

    ``min_free_disk_mb``: the disk that holds the run folder must have this much free
    space (MB) when a run starts, or it is refused before any compute: a run writes model
    checkpoints, the labelled dataset and Prefect's results there. 0 turns the check off.
    """

    torch_threads: PositiveInt = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    label_workers: PositiveInt = 1
    label_retries: int = Field(1, ge=0)
    label_retry_delay_seconds: float = Field(10.0, ge=0, description="s")
    label_timeout_seconds: float | None = Field(None, gt=0, description="s; None: no limit")
    min_free_disk_mb: int = Field(200, ge=0, description="MB free under output_dir; 0: no check")


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
        if isinstance(value, int):  # YAML 1.1 reads 12:00:00 as sexagesimal seconds
            hours, seconds = divmod(value, 3600)
            text = f"{hours:02d}:{seconds // 60:02d}:{seconds % 60:02d}"
            raise ValueError(f"walltime must be quoted, such as \"{text}\" (YAML reads an "
                             f"unquoted H:MM:SS as a number of seconds, here {value})")
        if isinstance(value, float):
            raise ValueError("walltime must be quoted, such as \"04:00:00\"")
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


class RunnersConfig(_Strict):
    """Where the tasks of each generation's phases run: the committee members' training
    (one task per member) and the labels (one task per selected structure), each on its
    own runner, so that members can train on GPU nodes and labels run on CPU nodes. A
    runner is a mapping with a ``kind`` (``threads``, ``processes``, ``dask``, ``slurm``)
    and its settings, or just the kind's name. A phase on any runner but ``threads``
    runs as a sub-flow (``<system>-gen<NNN>-training`` / ``-labelling``) with that task
    runner; see :mod:`advloop.flows.runners`."""

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


def _limits() -> dict[str, tuple[int, str]]:
    """:data:`LIMITS`, spelt out by reason."""
    epochs = "a committee member converges in hundreds of epochs"
    threads = "more than the cores of any node"
    table = {
        ("committee.n_members",): (64, "each member is a network trained every generation, and "
                                   "4-8 are usual"),
        ("initial_data.n_structures",): (100_000, "each is a DFT label made before the first "
                                         "generation, and a few dozen are usual"),
        ("exploration.n_seeds",): (10_000, "a generation explores its seeds in one batch in "
                                   "memory, and tens are usual"),
        ("random.n_per_seed", "md.max_frames_per_seed"): (10_000, "every candidate of a "
                                                          "generation is held in memory at once"),
        ("attack.n_steps", "attack.neighbor_refresh"): (100_000, "an attack converges in tens "
                                                        "of steps"),
        ("md.n_steps", "md.sample_interval"): (10_000_000, "10^7 steps are days of committee MD "
                                               "per seed and generation"),
        ("selection.max_selected", "convergence.min_candidates"): (
            100_000, "each selected structure is a DFT label, and a few to tens a generation "
            "are usual"),
        ("training.max_epochs", "training.warm_start_epochs", "training.warm_start_warmup_epochs",
         "training.patience", "training.lr_patience"): (100_000, epochs),
        ("training.batch_size",): (100_000, "a batch of structures is held in memory at once"),
        ("model.n_atom_basis",): (4096, "wider features do not fit in memory (32-256 are usual)"),
        ("model.n_interactions",): (64, "deeper networks do not train (2-6 are usual)"),
        ("model.n_rbf",): (1024, "20-50 radial functions are usual"),
        ("model.lmax",): (8, "the cost grows as lmax^3, and 1-3 are usual"),
        ("budget.max_generations", "convergence.patience"): (10_000, "a run converges in tens "
                                                             "of generations"),
        ("budget.max_labels",): (10_000_000, "each is a DFT calculation"),
        ("compute.label_retries",): (100, "a label that failed 100 times will fail again"),
        ("dft.max_cycle", "periodic_dft.max_cycle"): (100_000, "an SCF that has not converged "
                                                      "in 100000 iterations never will"),
        ("compute.torch_threads", "dft.threads", "periodic_dft.threads"): (1024, threads),
        ("compute.label_workers",): (10_000, "more labels at once than any queue runs"),
    }
    for phase in ("training", "labelling"):
        runner = f"runners.{phase}"
        table[(f"{runner}.max_workers", f"{runner}.threads_per_worker", f"{runner}.cores",
               f"{runner}.tasks_per_job")] = (1024, threads)
        table[(f"{runner}.n_workers", f"{runner}.max_jobs", f"{runner}.min_jobs")] = (
            10_000, "more workers or jobs than a cluster runs at once")
        table[(f"{runner}.gpus",)] = (64, "more GPUs than any node has")
    return {key: limit for keys, limit in table.items() for key in keys}


# Upper bounds on counts, far above any real run, so that a slip of the keyboard (10^12
# epochs, 10^6 members) is refused with the limit and its reason before a run that would
# never end, or exhaust memory, starts: key -> (largest value, why).
LIMITS: dict[str, tuple[int, str]] = _limits()


def _limit_problems(raw: dict, reported: set[str]) -> list[str]:
    """The counts of the config mapping ``raw`` above :data:`LIMITS`, except the keys in
    ``reported`` (already refused for another reason). Read from the mapping itself, so that
    they are reported with every other problem of the file."""
    out = []
    for key, (limit, why) in LIMITS.items():
        value: object = raw
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if key in reported or isinstance(value, bool) or value is None:
            continue
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:  # not a number: pydantic says so
                continue
        if isinstance(number, (int, float)) and number > limit:
            out.append(f"{key}: {short_repr(value)} is above the limit of {limit}: {why}; give at "
                       f"most {limit}")
    return out


def load_config(path: str | Path, output_dir: str | Path | None = None) -> RunConfig:
    """Parse and validate a config file (syntax, keys, types, ranges and
    :data:`LIMITS`); no file checks. A leading ``~`` in ``system.structures``,
    ``output_dir`` and the ``output_dir`` argument is the home folder.

    Raises :class:`ConfigError`.
    """
    path = Path(path)
    raw = read_mapping(path)
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as err:
        problems = format_validation_error(err, RunConfig)
        reported = {".".join(str(x) for x in e["loc"]) for e in err.errors()}
        raise ConfigError(str(path), problems + _limit_problems(raw, reported)) from err
    problems = _limit_problems(raw, set())
    if problems:
        raise ConfigError(str(path), problems)
    structures = _home(config.system.structures, "system.structures", path)
    out = _home(Path(output_dir) if output_dir is not None else config.output_dir,
                "--output-dir" if output_dir is not None else "output_dir", path)
    updates = {"system": config.system.model_copy(
        update={"structures": path.resolve().parent / structures}), "output_dir": out}
    return config.model_copy(update=updates)


def _home(value: Path, key: str, config: Path) -> Path:
    """``value`` with a leading ``~`` or ``~user`` made the home folder; ConfigError if
    there is no such user."""
    try:
        return value.expanduser()
    except RuntimeError as err:  # ~user of an unknown user, or no home folder
        raise ConfigError(str(config), [
            f"{key}: cannot find the home folder of {str(value).split('/')[0]!r}; give the "
            "path without '~', or with the name of a user of this machine"]) from err


def validate_config(path: str | Path, output_dir: str | Path | None = None, *,
                    run_folder: bool = True) -> RunConfig:
    """Full validation: the config, its inputs and, with ``run_folder``, its run folder on
    this machine (see :func:`check_run_folder`; leave it out where the run happens
    elsewhere, as for a submission to a cluster's shared path). Raises
    :class:`ConfigError` with every problem found; computes nothing and leaves nothing
    behind."""
    config = load_config(path, output_dir)
    problems = check_inputs(config) + (check_run_folder(config) if run_folder else [])
    if run_folder and not problems:
        problems = resume_problems(config)  # an existing run folder's data settings
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
