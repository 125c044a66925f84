"""Run configuration: the schema, small models per concern composed into one :class:`RunConfig`.

A config is YAML. Sections where one of several alternatives applies are unions on
``kind``: ``labels`` (:mod:`advloop.calculators.factory`: ``pyscf``, ``pyscf_periodic``,
``tblite``, ``emt``, ``python``), ``exploration`` (``adversarial``, ``md``, ``random``) and
the ``runners``. The geometry limits that exploration, selection and the input checks
share are one section, ``geometry``. Unknown keys are errors; no number may be infinite
or NaN; counts have upper bounds far above any real run (:data:`LIMITS`).

This module is the schema only, and imports no other part of :mod:`advloop.flows`. Reading
a file, the checks of what it names and their messages are in :mod:`advloop.flows.inputs`,
and :mod:`advloop.flows.validation` puts them together (``load_config``,
``validate_config``).
"""

from __future__ import annotations

import dataclasses
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from advloop.adversarial.attack import AttackSettings
from advloop.adversarial.baselines import CommitteeMDSettings
from advloop.adversarial.geometry import validate_factors
from advloop.adversarial.random_displacement import RandomDisplacementSettings
from advloop.adversarial.seeding import SeedPolicy
from advloop.adversarial.selection import (
    SelectionMethod,
    SelectionSettings,
    UncertaintyWeighting,
)
from advloop.calculators.factory import Labeller, PySCFLabels
from advloop.constraints import NonNegativeInt, PositiveInt
from advloop.potentials.model import ModelSpec
from advloop.potentials.training import TrainingSettings

__all__ = [
    "GEOMETRY_KEYS",
    "LIMITS",
    "AdversarialExploration",
    "ConfigError",
    "ExplorationSettings",
    "GeometryConfig",
    "HybridExploration",
    "LabelSettings",
    "LabelledFile",
    "MDExploration",
    "RandomExploration",
    "RunConfig",
    "SelectionConfig",
    "SystemPart",
    "short_repr",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # fullmatch: no trailing newline
_BYTES = re.compile(
    r"^\d+(\.\d+)?\s*[KMGTP]i?B$", re.IGNORECASE
)  # a size as Dask and Slurm read it
_WALLTIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){1,2}$")  # Slurm's [D-]HH:MM[:SS] or MM:SS


class ConfigError(Exception):
    """A config or its inputs are invalid. ``problems`` lists every problem found."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


_ECHO = 80  # characters of a value echoed in a message ("... (got 'abc')")
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict = 2, 4, 4, 4
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = _ECHO, _ECHO, 40


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to about 80 characters (with an ellipsis), looking at no more of
    a long or deeply nested value than it shows."""
    text = _REPR.repr(value)
    return text if len(text) <= _ECHO else text[: _ECHO - 1] + "…"


class _Strict(BaseModel):
    # allow_inf_nan: .inf and .nan are refused (inf passes every `> 0` check, nan none)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LabelledFile(_Strict):
    """A file of structures a run starts from (``initial_data.files``): anything
    ``ase.io.read`` reads (extended XYZ, ASE trajectories and databases), or another
    run's ``dataset.h5``. Frames with an energy (eV) and forces (eV/Å) are imported as
    they are, with ``level_of_theory`` as their provenance; frames without are labelled
    by the run's labeller, like the displaced structures. A relative path is relative to
    the config file's folder.

    The labelled frames must be of the run's level of theory: ``level_of_theory`` is
    compared with the labeller's (``advloop validate`` prints it, e.g. ``RKS/PBE/6-31G*``,
    ``GFN2-xTB``), and a file whose level differs is refused unless
    ``same_level_as_labels: true`` says that they are the same calculation under another
    name (a mismatch would mix two potential energy surfaces in one dataset). A
    ``dataset.h5`` carries its records' level of theory; ``level_of_theory`` may be left
    out there.
    """

    path: Path = Field(description="extended XYZ, ASE trajectory or database, or dataset.h5")
    level_of_theory: str | None = Field(
        None, description="of the labelled frames; required where the file has any (but dataset.h5)"
    )
    # the labelled frames are of the labeller's level under another name: import them
    same_level_as_labels: bool = False
    # which frames (ase.io.read's index: ":" all, "-10:" the last ten, "::5" every fifth)
    index: str = ":"
    # the info key of a frame's energy (eV) where it is not ASE's (e.g. REF_energy)
    energy_key: str = "energy"
    # the per-atom array of its forces (eV/Å) where it is not ASE's (e.g. REF_forces)
    forces_key: str = "forces"

    @field_validator("level_of_theory")
    @classmethod
    def _named(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must name the level of theory (e.g. 'RKS/PBE/6-31G*'), not be blank")
        return value


class InitialDataConfig(_Strict):
    """How the initial dataset is made: ``n_structures`` random Gaussian displacements
    (std in Å) of the starting structures, each labelled by the run's labeller, and the
    structures of ``files`` (labelled ones imported, the others labelled). Together they
    must give at least 2 structures (n_structures may be 0 where files give 2)."""

    n_structures: int = Field(12, ge=0)
    displacement: float = Field(0.05, gt=0, description="Å")
    seed: int = 0
    files: list[LabelledFile] = Field(default_factory=list)

    @model_validator(mode="after")
    def _at_least_two(self) -> InitialDataConfig:
        if self.n_structures < 2 and not self.files:
            raise ValueError(
                "n_structures must be at least 2: the committee trains on the initial "
                "structures and the selection threshold is a percentile of their uncertainties, "
                "so a run cannot start from fewer than 2 labelled structures (12 is the default; "
                "initial_data.files may give them instead)"
            )
        return self


def _safe_name(name: str, key: str, what: str) -> None:
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{key} {short_repr(name)} must be 1-64 letters, digits, '_', '-' or '.', "
            f"starting with a letter or digit ({what})"
        )


class SystemPart(_Strict):
    """One of several systems trained into one potential (``system.parts``): its name (in
    the table and artifacts), its starting structures (one composition, not another
    part's), its share of each generation's labels (relative to the other parts'), and
    where it differs from the run's, its initial data and exploration seeds (None: the
    run's ``initial_data``, ``exploration.n_seeds`` and ``exploration.seeds``)."""

    name: str
    structures: Path = Field(description="xyz/extxyz/CIF/... file readable by ase.io.read")
    share: float = Field(1.0, gt=0, description="relative to the other parts' shares")
    initial_data: InitialDataConfig | None = None
    n_seeds: PositiveInt | None = None  # seed structures per generation, of this part
    seeds: SeedPolicy | None = None  # which of this part's training structures seed

    @model_validator(mode="after")
    def _name_is_safe(self) -> SystemPart:
        _safe_name(self.name, "system.parts name", "it names the part in tables")
        return self


class SystemConfig(_Strict):
    """The system: a name (the run folder's name), its starting structure(s), and the
    temperature the potential is meant for (K; None: not given), at which the
    ``md_frames`` seeds of an exploration are made.

    One potential for several systems (a framework with several guests, a set of
    molecules): ``parts`` lists them instead of ``structures``, each with its own starting
    structures, initial data, exploration seeds and share of each generation's labels
    (:class:`SystemPart`), all trained into one committee."""

    name: str
    structures: Path | None = Field(
        None, description="xyz/extxyz/CIF/... file readable by ase.io.read; or give parts"
    )
    temperature: float | None = Field(
        None, gt=0, description="K, the application temperature; None: not given"
    )
    parts: list[SystemPart] = Field(default_factory=list)

    @model_validator(mode="after")
    def _name_is_safe(self) -> SystemConfig:
        _safe_name(self.name, "system.name", "it names the run folder")
        if (self.structures is None) == (not self.parts):
            raise ValueError(
                "structures and parts: give the structures, or parts (several systems in "
                "one potential, each with its structures), not both"
                if self.structures is not None
                else "structures is required: the structure file a run starts from (or "
                "parts: several systems in one potential, each with its structures)"
            )
        names = [p.name for p in self.parts]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"system.parts: each part needs its own name; {twice} is given twice")
        return self


class GeometryConfig(_Strict):
    """When a geometry is unphysical, for everything that checks one (the structures a run
    starts from, the attack, committee MD and random displacement, and selection; see
    :func:`advloop.adversarial.geometry.check_geometry`): two atoms closer than
    ``min_distance_factor`` × their summed covalent radii clash, and a structure whose
    bonds (atoms closer than ``max_bond_factor`` × summed radii) no longer connect it is
    fragmented. Both dimensionless, 0 <= min_distance_factor < max_bond_factor."""

    min_distance_factor: float = Field(0.5, ge=0)
    max_bond_factor: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> GeometryConfig:
        validate_factors(self.min_distance_factor, self.max_bond_factor)
        return self


# The keys of `geometry`, which the settings of exploration and selection take from it.
GEOMETRY_KEYS = ("min_distance_factor", "max_bond_factor")


def _check_seeds(settings: Any) -> None:
    for key, least in (("n_seeds", 1), ("seed_md_steps", 1)):
        value = getattr(settings, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"exploration.{key} must be a whole number >= {least}, got {value!r}")


@dataclass(frozen=True)
class SelectionConfig(SelectionSettings):
    """Which candidates a generation labels (:mod:`advloop.adversarial.selection`; its
    settings). The run's defaults are those measured in ``benchmarks.sample_efficiency``
    (docs/benchmarks.md): a diverse batch (``method: diverse``) ranked by element-weighted
    σ (``weighting: element``), the same selection for every exploration strategy;
    ``method: threshold, weighting: none`` is the published rule."""

    method: SelectionMethod = "diverse"
    weighting: UncertaintyWeighting = "element"


@dataclass(frozen=True)
class AdversarialExploration(AttackSettings):
    """The adversarial attack (:mod:`advloop.adversarial.attack`; its settings, in Å and K)
    from ``n_seeds`` seed structures chosen by ``seeds`` (``random``, ``lowest_energy``,
    ``previous``, ``mixed``, or ``md_frames``: the lowest-energy structures moved by
    ``seed_md_steps`` steps of committee MD at ``system.temperature``; see
    :mod:`advloop.adversarial.seeding`). The run's defaults (``seeds: mixed``,
    ``pool_every: 10``) are those measured in ``benchmarks.sample_efficiency``."""

    kind: Literal["adversarial"] = "adversarial"
    # which training structures exploration starts from: mixed (half lowest-energy, half
    # random), random, lowest_energy, previous (the last generation's labels), md_frames
    seeds: SeedPolicy = "mixed"
    n_seeds: PositiveInt = 16  # seed structures per generation
    seed_md_steps: PositiveInt = 100  # committee-MD steps that make ``md_frames`` seeds
    pool_every: NonNegativeInt = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_seeds(self)


@dataclass(frozen=True)
class MDExploration(CommitteeMDSettings):
    """Committee molecular dynamics (:func:`advloop.adversarial.baselines.committee_md`;
    its settings, in K, fs, eV/Å and Å) from ``n_seeds`` seeds chosen by ``seeds``."""

    kind: Literal["md"] = "md"
    # which training structures exploration starts from: random, lowest_energy, previous
    # (the last generation's labels), mixed (half lowest-energy, half random), md_frames
    seeds: SeedPolicy = "random"
    n_seeds: PositiveInt = 16  # seed structures per generation
    seed_md_steps: PositiveInt = 100  # committee-MD steps that make ``md_frames`` seeds

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_seeds(self)


@dataclass(frozen=True)
class RandomExploration(RandomDisplacementSettings):
    """Random Gaussian displacement (:func:`advloop.adversarial.random_displacement.random_displacement`;
    ``std`` in Å) of ``n_seeds`` seeds chosen by ``seeds``."""

    kind: Literal["random"] = "random"
    # which training structures exploration starts from: random, lowest_energy, previous
    # (the last generation's labels), mixed (half lowest-energy, half random), md_frames
    seeds: SeedPolicy = "random"
    n_seeds: PositiveInt = 16  # seed structures per generation
    seed_md_steps: PositiveInt = 100  # committee-MD steps that make ``md_frames`` seeds

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_seeds(self)


def _hybrid_part(value: Any, cls: Any, section: str, limits: dict[str, float]) -> Any:
    """A part of a hybrid exploration as ``cls`` (a mapping is built into one) with the
    hybrid's geometry ``limits``; ValueError where it sets limits of its own that differ
    from them (they come from ``geometry``)."""
    if isinstance(value, dict):
        value = cls(**value)
    if not isinstance(value, cls):
        raise ValueError(f"exploration.{section} must be a mapping of its settings, got {value!r}")
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    clash = [k for k in GEOMETRY_KEYS if getattr(value, k) not in (limits[k], defaults[k])]
    if clash:
        raise ValueError(
            f"exploration.{section}.{clash[0]}: the geometry limits are one section; set "
            f"geometry.{clash[0]} instead"
        )
    return dataclasses.replace(value, **limits)


@dataclass(frozen=True)
class HybridAttack(AttackSettings):
    """The attack of a hybrid exploration: :class:`AttackSettings` with the run's default
    ``pool_every`` (that of :class:`AdversarialExploration`)."""

    pool_every: NonNegativeInt = AdversarialExploration.pool_every


@dataclass(frozen=True)
class HybridExploration:
    """The attack and committee MD from the same ``n_seeds`` seeds, their candidates
    competing in one selection: the attack's endpoints and pooled path frames (``attack``,
    the settings of :class:`advloop.adversarial.attack.AttackSettings`) beside the frames
    of committee MD in its trust window (``md``, those of
    :class:`advloop.adversarial.baselines.CommitteeMDSettings`; set ``md.temperature``,
    K, to where dynamics should go, above ``system.temperature``). The batch selection
    decides which kind of geometry is worth a label; each generation's record counts the
    selected per source (``selected_sources``). Both parts take the geometry limits of
    ``geometry``."""

    __pydantic_config__ = {"extra": "forbid", "allow_inf_nan": False}

    kind: Literal["hybrid"] = "hybrid"
    # which training structures exploration starts from: mixed (half lowest-energy, half
    # random), random, lowest_energy, previous (the last generation's labels), md_frames
    seeds: SeedPolicy = "mixed"
    n_seeds: PositiveInt = 16  # seed structures per generation
    seed_md_steps: PositiveInt = 100  # committee-MD steps that make ``md_frames`` seeds
    attack: HybridAttack = HybridAttack()
    md: CommitteeMDSettings = CommitteeMDSettings()
    min_distance_factor: float = 0.5
    max_bond_factor: float = 2.0

    def __post_init__(self) -> None:
        _check_seeds(self)
        try:
            validate_factors(self.min_distance_factor, self.max_bond_factor)
        except ValueError as err:
            raise ValueError(f"exploration.{err}") from None
        limits = {k: getattr(self, k) for k in GEOMETRY_KEYS}
        for section, cls in (("attack", HybridAttack), ("md", CommitteeMDSettings)):
            part = _hybrid_part(getattr(self, section), cls, section, limits)
            object.__setattr__(self, section, part)


#: The sections of a hybrid exploration, each the settings of one strategy.
HYBRID_PARTS = ("attack", "md")

_EXPLORATION_KINDS = {
    "adversarial": AdversarialExploration,
    "md": MDExploration,
    "random": RandomExploration,
    "hybrid": HybridExploration,
}
# How each generation looks for new geometries: the adversarial attack, one of the
# baselines it is compared with, or the attack and committee MD together, each with its
# own settings.
ExplorationSettings = Annotated[
    AdversarialExploration | MDExploration | RandomExploration | HybridExploration,
    Field(discriminator="kind"),
]
# Who labels the structures: a union on `kind` (see advloop.calculators.factory).
LabelSettings = Annotated[Labeller, Field(discriminator="kind")]


class CommitteeConfig(_Strict):
    """Members differ by seed; with ``bootstrap`` each also trains on its own resample
    (with replacement) of the training split. ``warm_start`` starts each member of a new
    generation from its previous weights."""

    n_members: int = Field(4, ge=2)
    seed: int = 0
    warm_start: bool = True
    bootstrap: bool = False


ConvergenceCriterion = Literal["sigma", "calibrated_error"]


class ConvergenceConfig(_Strict):
    """When the loop has converged (see :func:`advloop.flows.loop.decide`).

    - ``criterion: sigma``: the mean force uncertainty σ_F (eV/Å) of the attacked
      geometries stayed below ``force_std_threshold`` for ``patience`` consecutive
      generations (reason ``converged``);
    - ``criterion: calibrated_error``: a calibrated upper bound of the force error on the
      generation's fresh attack batch stayed below ``force_error_tolerance`` (eV/Å) for
      ``patience`` generations. The bound is c × σ_F, where the scale c is the
      ``coverage`` quantile of observed error over predicted σ_F on every label an earlier
      generation's committee had not seen (split-conformal; at least
      ``min_calibration_labels`` of them, else no bound and no stop on it). Raw σ can
      plateau or fall while the error grows; the calibrated bound follows the error;
    - ``min_candidates``: fewer than this many attacked geometries had an uncertainty at
      or above the selection threshold, so a generation would add too little to be worth
      its labels; it stops before labelling them (reason ``few_candidates``; 0: off).
    """

    criterion: ConvergenceCriterion = "sigma"
    force_std_threshold: float = Field(0.05, gt=0, description="eV/Å")
    force_error_tolerance: float | None = Field(
        None, gt=0, description="eV/Å, for criterion calibrated_error"
    )
    coverage: float = Field(0.9, gt=0, lt=1, description="of the calibrated bound")
    min_calibration_labels: PositiveInt = 10
    patience: PositiveInt = 1
    min_candidates: int = Field(
        0,
        ge=0,
        description="attacked geometries above the "
        "selection threshold; fewer stops the run (0: off)",
    )

    @model_validator(mode="after")
    def _tolerance_given(self) -> ConvergenceConfig:
        if self.criterion == "calibrated_error" and self.force_error_tolerance is None:
            raise ValueError(
                "convergence.criterion 'calibrated_error' needs convergence."
                "force_error_tolerance (eV/Å), the force error the potential must stay below"
            )
        return self


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
            local = [
                k
                for k in ("n_workers", "threads_per_worker", "memory_limit")
                if getattr(self, k) is not None
            ]
            if local:
                raise ValueError(
                    f"address connects to a running Dask cluster; {', '.join(local)} "
                    "size a local one: give one or the other"
                )
            if not re.match(r"^([a-z]+://)?\S+:\d+$", self.address):
                raise ValueError(
                    f"address {self.address!r} is not a Dask scheduler address "
                    "such as tcp://host:8786"
                )
        if self.memory_limit is not None and not _BYTES.match(self.memory_limit):
            raise ValueError(
                f"memory_limit {self.memory_limit!r} must be a size such as '4GB' or '3.5GiB'"
            )
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
            raise ValueError(
                f'walltime must be quoted, such as "{text}" (YAML reads an '
                f"unquoted H:MM:SS as a number of seconds, here {value})"
            )
        if isinstance(value, float):
            raise ValueError('walltime must be quoted, such as "04:00:00"')
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SlurmRunner:
        problems = []
        if self.min_jobs > self.max_jobs:
            problems.append(
                f"min_jobs ({self.min_jobs}) is above max_jobs ({self.max_jobs}): "
                "adaptive scaling needs min_jobs <= max_jobs"
            )
        if self.cores % self.tasks_per_job:
            problems.append(
                f"cores ({self.cores}) must be a multiple of tasks_per_job "
                f"({self.tasks_per_job}): each task gets cores / tasks_per_job threads"
            )
        if not _BYTES.match(self.memory):
            problems.append(f"memory {self.memory!r} must be a size such as '32GB' or '64GiB'")
        if not _WALLTIME.match(self.walltime):
            problems.append(
                f"walltime {self.walltime!r} must be Slurm's HH:MM:SS, MM:SS or D-HH:MM:SS"
            )
        bad = [d for d in self.job_extra_directives if d.lstrip().startswith("#")]
        if bad:
            problems.append(
                f"job_extra_directives {bad} must be options only "
                "('--gres=gpu:1'), without '#SBATCH'"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def threads_per_task(self) -> int:
        return self.cores // self.tasks_per_job


RunnerSettings = Annotated[
    ThreadsRunner | ProcessesRunner | DaskRunner | SlurmRunner, Field(discriminator="kind")
]


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


# The kind of a section that does not name one: today's defaults.
DEFAULT_KINDS = {"labels": "pyscf", "exploration": "adversarial"}


def _with_kind(section: str, value: Any) -> Any:
    """A section given as its kind's name alone (``labels: emt``) as ``{kind: emt}``, and
    one that names no kind with the default kind."""
    if isinstance(value, str):
        return {"kind": value}
    if isinstance(value, dict) and "kind" not in value:
        return {"kind": DEFAULT_KINDS[section], **value}
    return value


def _geometry_into(section: str, value: Any, geometry: dict[str, float]) -> Any:
    """The settings ``value`` of ``section`` (a mapping or a settings object) with the
    geometry limits of the ``geometry`` section; ValueError where it sets one of its own
    that differs (set it in ``geometry`` instead)."""
    if isinstance(value, dict):
        own = {k: value[k] for k in GEOMETRY_KEYS if k in value}
        clash = [k for k, v in own.items() if v != geometry[k]]
        if clash:
            raise ValueError(
                f"{section}.{clash[0]}: the geometry limits are one section; set "
                f"geometry.{clash[0]} instead"
            )
        return {**value, **geometry}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        defaults = {f.name: f.default for f in dataclasses.fields(value)}
        clash = [
            k for k in GEOMETRY_KEYS if getattr(value, k) not in (geometry[k], defaults.get(k))
        ]
        if clash:
            raise ValueError(
                f"{section}.{clash[0]}: the geometry limits are one section; set "
                f"geometry.{clash[0]} instead"
            )
        return dataclasses.replace(value, **geometry)
    return value


class RunConfig(_Strict):
    system: SystemConfig
    initial_data: InitialDataConfig = InitialDataConfig()
    labels: LabelSettings = PySCFLabels()
    model: ModelSpec = ModelSpec()
    committee: CommitteeConfig = CommitteeConfig()
    training: TrainingSettings = TrainingSettings()
    exploration: ExplorationSettings = AdversarialExploration()
    geometry: GeometryConfig = GeometryConfig()
    selection: SelectionConfig = SelectionConfig()
    convergence: ConvergenceConfig = ConvergenceConfig()
    budget: BudgetConfig = BudgetConfig()
    compute: ComputeConfig = ComputeConfig()
    runners: RunnersConfig = RunnersConfig()
    output_dir: Path = Path("runs")

    @model_validator(mode="before")
    @classmethod
    def _kinds_and_geometry(cls, data: Any) -> Any:
        """Sections given by their kind alone, and the ``geometry`` limits handed to the
        settings that check geometries (exploration, selection), so that there is one
        place to set them."""
        if not isinstance(data, dict):
            return data
        data = {**data}
        for section in DEFAULT_KINDS:
            if section in data:
                data[section] = _with_kind(section, data[section])
        selection = data.get("selection")
        if isinstance(selection, SelectionSettings) and not isinstance(selection, SelectionConfig):
            # the plain settings of advloop.adversarial, as they are (their own defaults)
            data["selection"] = SelectionConfig(**dataclasses.asdict(selection))
        geometry = data.get("geometry", GeometryConfig())
        try:
            limits = (
                geometry
                if isinstance(geometry, GeometryConfig)
                else GeometryConfig.model_validate(geometry)
            ).model_dump()
        except ValueError:  # reported at geometry.*
            return data
        for section, default in (("exploration", {"kind": "adversarial"}), ("selection", {})):
            data[section] = _geometry_into(section, data.get(section, default), limits)
        return data

    @model_validator(mode="after")
    def _md_frames_need_a_temperature(self) -> RunConfig:
        md_frames = any(p.seeds == "md_frames" for p in self.parts())
        if md_frames and self.system.temperature is None:
            raise ValueError(
                'exploration.seeds "md_frames" needs system.temperature (K): the '
                "temperature the potential is meant for, at which the seeds' committee MD runs"
            )
        return self

    def run_dir(self) -> Path:
        return self.output_dir / self.system.name

    def parts(self) -> list[SystemPart]:
        """The systems of the run, each with every setting filled in: ``system.parts``, or
        one part named after the system with ``system.structures``, the run's initial
        data and exploration seeds."""
        given = self.system.parts or [
            SystemPart(name=self.system.name, structures=self.system.structures or Path())
        ]
        return [
            p.model_copy(
                update={
                    "initial_data": p.initial_data or self.initial_data,
                    "n_seeds": p.n_seeds or self.exploration.n_seeds,
                    "seeds": p.seeds or self.exploration.seeds,
                }
            )
            for p in given
        ]

    def exploring(self, kind: str, **settings: Any) -> RunConfig:
        """This config exploring with ``kind`` (``adversarial``, ``md``, ``random``,
        ``hybrid``): the same seeds, n_seeds and geometry limits; that kind's ``settings``,
        and for the rest its defaults, or this config's own where ``kind`` is its kind
        already (a hybrid from an attack or MD config takes that part from it). Raises
        ValueError (or TypeError on a setting the kind does not have)."""
        cls = _EXPLORATION_KINDS[kind]
        current = self.exploration
        own = (
            {f.name: getattr(current, f.name) for f in dataclasses.fields(current)}
            if current.kind == kind
            else {
                "seeds": current.seeds,
                "n_seeds": current.n_seeds,
                "seed_md_steps": current.seed_md_steps,
            }
        )
        own.pop("kind", None)
        part = {"adversarial": ("attack", HybridAttack), "md": ("md", CommitteeMDSettings)}
        if kind == "hybrid" and current.kind in part:
            # a hybrid of this config's attack (or MD) and the other's defaults
            name, part_cls = part[current.kind]
            mine = {f.name: getattr(current, f.name) for f in dataclasses.fields(part_cls)}
            settings = {**settings, name: {**mine, **settings.get(name, {})}}
        exploration = cls(**{**own, **settings, **self.geometry.model_dump()})
        return self.model_copy(update={"exploration": exploration})

    def to_yaml(self) -> str:
        """The config as YAML that loads back to it: each kind first in its section, and
        the geometry limits in ``geometry`` only."""
        dumped = self.model_dump(mode="json")
        for section in ("labels", "exploration"):
            dumped[section] = {"kind": dumped[section].pop("kind"), **dumped[section]}
        for section in ("exploration", "selection"):
            for key in GEOMETRY_KEYS:
                dumped[section].pop(key, None)
                for part in HYBRID_PARTS:
                    dumped[section].get(part, {}).pop(key, None)
        return yaml.safe_dump(dumped, sort_keys=False)


def _limits() -> dict[str, tuple[int, str]]:
    """:data:`LIMITS`, spelt out by reason."""
    epochs = "a committee member converges in hundreds of epochs"
    threads = "more than the cores of any node"
    table = {
        ("committee.n_members",): (
            64,
            "each member is a network trained every generation, and 4-8 are usual",
        ),
        ("initial_data.n_structures",): (
            100_000,
            "each is a DFT label made before the first generation, and a few dozen are usual",
        ),
        ("exploration.n_seeds",): (
            10_000,
            "a generation explores its seeds in one batch in memory, and tens are usual",
        ),
        ("exploration.n_per_seed", "exploration.max_frames_per_seed"): (
            10_000,
            "every candidate of a generation is held in memory at once",
        ),
        (
            "exploration[adversarial].n_steps",
            "exploration.neighbor_refresh",
            "exploration[hybrid].attack.n_steps",
            "exploration.attack.neighbor_refresh",
        ): (100_000, "an attack converges in tens of steps"),
        (
            "exploration[md].n_steps",
            "exploration.sample_interval",
            "exploration.md.n_steps",
            "exploration.md.sample_interval",
        ): (10_000_000, "10^7 steps are days of committee MD per seed and generation"),
        ("exploration.md.max_frames_per_seed",): (
            10_000,
            "every candidate of a generation is held in memory at once",
        ),
        ("selection.max_selected", "convergence.min_candidates"): (
            100_000,
            "each selected structure is a DFT label, and a few to tens a generation are usual",
        ),
        (
            "training.max_epochs",
            "training.warm_start_epochs",
            "training.warm_start_warmup_epochs",
            "training.patience",
            "training.lr_patience",
        ): (100_000, epochs),
        ("training.batch_size",): (100_000, "a batch of structures is held in memory at once"),
        ("model.n_atom_basis",): (4096, "wider features do not fit in memory (32-256 are usual)"),
        ("model.n_interactions",): (64, "deeper networks do not train (2-6 are usual)"),
        ("model.n_rbf",): (1024, "20-50 radial functions are usual"),
        ("model.lmax",): (8, "the cost grows as lmax^3, and 1-3 are usual"),
        ("budget.max_generations", "convergence.patience"): (
            10_000,
            "a run converges in tens of generations",
        ),
        ("budget.max_labels",): (10_000_000, "each is a DFT calculation"),
        ("compute.label_retries",): (100, "a label that failed 100 times will fail again"),
        ("labels.max_cycle",): (
            100_000,
            "an SCF that has not converged in 100000 iterations never will",
        ),
        ("compute.torch_threads", "labels.threads"): (1024, threads),
        ("compute.label_workers",): (10_000, "more labels at once than any queue runs"),
    }
    for phase in ("training", "labelling"):
        runner = f"runners.{phase}"
        table[
            (
                f"{runner}.max_workers",
                f"{runner}.threads_per_worker",
                f"{runner}.cores",
                f"{runner}.tasks_per_job",
            )
        ] = (1024, threads)
        table[(f"{runner}.n_workers", f"{runner}.max_jobs", f"{runner}.min_jobs")] = (
            10_000,
            "more workers or jobs than a cluster runs at once",
        )
        table[(f"{runner}.gpus",)] = (64, "more GPUs than any node has")
    return {key: limit for keys, limit in table.items() for key in keys}


# Upper bounds on counts, far above any real run, so that a slip of the keyboard (10^12
# epochs, 10^6 members) is refused with the limit and its reason before a run that would
# never end, or exhaust memory, starts: key -> (largest value, why). A key
# `section[kind].key` holds where that section is of that kind only.
LIMITS: dict[str, tuple[int, str]] = _limits()
