"""The records a run produces, as types: one :class:`GenerationRecord` per generation, the
:class:`RunSummary` when it stops, and the :class:`StopDecision` that ends it.

A generation record is what ``generations.jsonl`` holds, one JSON object per line with the
field names below as keys (a field that does not apply, such as the exploration of a
final generation that only trained, is left out). The terminal table, the UI artifacts,
events, ``advloop status`` and the benchmarks read these fields, never string keys of
their own. Units: σ_F, MAEs and thresholds in eV/Å, energies in eV, times in s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from advloop.adversarial.selection import RejectReason

__all__ = [
    "CONVERGED",
    "GenerationRecord",
    "RejectReason",
    "RunSummary",
    "StopDecision",
    "StopReason",
]

StopReason = Literal[
    "converged", "few_candidates", "no_candidates", "max_generations", "max_labels", "max_wall_time"
]
#: Reasons that mean the potential is done, as opposed to a budget or the search running out.
CONVERGED: frozenset[str] = frozenset({"converged", "few_candidates"})


@dataclass(frozen=True)
class StopDecision:
    reason: StopReason
    explanation: str


@dataclass
class GenerationRecord:
    """What one generation did: its committee's training, what exploration found, what
    selection kept and why it rejected the rest, the labels added and the committee's
    calibration on them (labels it had not seen), and where the time went."""

    generation: int
    # training (the committee's mean over members; retries: a total)
    train_val_forces_mae: float | None = None  # eV/Å
    train_val_energy_mae: float | None = None  # eV
    train_seconds: float | None = None
    train_epochs: float | None = None
    train_divergence_retries: int | None = None
    # exploration
    attack_sigma_f_mean: float | None = None  # eV/Å, mean over candidates of their mean σ_F
    attack_sigma_f_max: float | None = None  # eV/Å, max over candidates of their max σ_F
    attack_stopped: int | None = None  # seeds whose exploration ended early
    attack_seeds: int | None = None
    attack_candidates: int | None = None
    # calibrated bound on the fresh batch's force error (c × σ_F; c from earlier labels)
    calibration_scale: float | None = None  # observed error over σ_F, at convergence.coverage
    attack_error_bound: float | None = None  # eV/Å
    # selection
    selected: int | None = None
    selection_cap: int | None = None  # the most this generation could label
    selection_threshold: float | None = None  # eV/Å
    candidates_above_threshold: int | None = None
    selected_sigma_f_mean: float | None = None  # eV/Å
    selected_sigma_f_max: float | None = None  # eV/Å
    rejected: dict[RejectReason, int] | None = None  # candidates rejected, per reason
    selected_sources: dict[str, int] | None = None  # a hybrid's selected, per strategy
    # several systems in one potential: per part, its seeds, candidates, their σF mean
    # (eV/Å, as attack_sigma_f_mean) and how many of them were selected
    parts: dict[str, dict[str, float]] | None = None
    # labels and calibration
    labels_added: int | None = None
    labels_failed: int | None = None
    labels_cached: int | None = None  # read back from the label store, not computed
    calibration_n: int | None = None
    calibration_spearman: float | None = None
    calibration_ratio: float | None = None  # mean σ_F over mean |error|
    calibration_predicted_mean: float | None = None  # eV/Å
    calibration_observed_mean: float | None = None  # eV/Å
    # per new label: mean σ_F and mean |force error| over its atoms (eV/Å), for the scale
    calibration_sigmas: list[float] | None = None
    calibration_errors: list[float] | None = None
    # bookkeeping
    dataset_size: int | None = None
    seconds: float | None = None
    seconds_training: float | None = None
    seconds_exploration: float | None = None
    seconds_selection: float | None = None
    seconds_labelling: float | None = None
    seconds_orchestration: float | None = None
    config_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys of another advloop version

    @property
    def explored(self) -> bool:
        """False for a final generation: its committee trained, nothing was explored."""
        return self.attack_sigma_f_mean is not None

    @property
    def labels(self) -> int:
        return self.labels_added or 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``generations.jsonl`` (fields that do not apply left out)."""
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "extra"}
        return {**self.extra, **out}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationRecord:
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})

    def get(self, key: str, default: Any = None) -> Any:
        """The value of field ``key`` (None or absent: ``default``), for tables that name
        their columns by field."""
        value = getattr(self, key, None)
        return default if value is None else value


#: Field names of a generation record, for tables and artifacts that name columns by field.
RECORD_FIELDS: frozenset[str] = frozenset(f.name for f in fields(GenerationRecord)) - {"extra"}


@dataclass(frozen=True)
class RunSummary:
    """How a run ended (``summary.json``): why it stopped, its final committee, and totals."""

    system: str
    stop_reason: StopReason
    stop_explanation: str
    generations: int
    final_committee_generation: int | None
    dataset_size: int
    labels_initial: int
    labels_explored: int
    labels_failed: int
    strategy: str
    level_of_theory: str
    wall_seconds: float
    run_dir: str
    resumed: str | None = None  # what this invocation found done, and the one before it
    labels_imported: int = 0  # labelled frames of initial_data.files

    @property
    def converged(self) -> bool:
        return self.stop_reason in CONVERGED

    def composition(self) -> str:
        """Where the dataset's structures came from: ``12 initial, 24 from adversarial``
        (with ``, 40 imported`` where ``initial_data.files`` gave labelled frames)."""
        imported = f", {self.labels_imported} imported" if self.labels_imported else ""
        return (
            f"{self.labels_initial} initial{imported}, {self.labels_explored} from {self.strategy}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSummary:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (not None, not NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
