"""What a run shows in the Prefect UI's Artifacts pages.

- ``<system>-generations`` (table, a new version after each generation): labels added
  and failed, the force uncertainty σ_F (eV/Å) of the attacked and of the selected
  geometries, the committee's validation errors, its calibration on the new labels;
- ``<system>-labelling`` (progress, one version per generation): the share of the
  generation's selected structures whose label task has finished;
- ``<system>-summary`` (markdown, a new version after each generation, when a run fails
  or is stopped, and at the end): where the run stands (its state, σ_F against the
  threshold, validation error, labels and budget left, time per generation and to the
  generation budget; :func:`live_markdown`), then why it stopped and its totals
  (:func:`summary_markdown`), each with the learning curve (σ_F of the attacked
  geometries and validation force MAE per generation) as an SVG image in a
  ``data:image/svg+xml;base64`` URI, which both Prefect UIs render in markdown (the React UI lets ``data:image/*`` through its sanitiser; raw ``<svg>`` it
  strips), followed by the same numbers as a table;
- ``<system>-calibration``, ``<system>-energies``, ``<system>-geometries`` (markdown, a
  new version after each generation that added labels): pictures of
  :mod:`advloop.flows.figures` in the same kind of data URI, each with its numbers: every
  new label's predicted σ_F against its actual force error per generation
  (:func:`calibration_markdown`), the energy per atom of the labelled structures per
  batch (:func:`energies_markdown`), a few structures of the latest batch drawn
  (:func:`geometries_markdown`).

The builders (:func:`artifact_key`, :func:`generation_rows`, :func:`summary_markdown`,
:func:`live_markdown`, :func:`figure_markdowns`) are plain functions; the ``publish_*``
functions and :class:`LabelProgress` call Prefect and need a flow run.
"""

from __future__ import annotations

import base64
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

import numpy as np
from ase import Atoms

from advloop.flows.dispatch import synchronous
from advloop.flows.events import json_safe
from advloop.flows.figures import (
    EnergyGroup,
    calibration_svg,
    energy_distribution_svg,
    energy_groups,
    geometry_svg,
    learning_curve_svg,
)
from advloop.flows.records import GenerationRecord, RunSummary, finite
from advloop.flows.run_folder import batch_name
from advloop.potentials.dataset import Arrays, Provenance

# column in the table artifact -> field of the generation record
TABLE_COLUMNS: dict[str, str] = {
    "generation": "generation",
    "dataset_size": "dataset_size",
    "labels_added": "labels_added",
    "labels_failed": "labels_failed",
    "labels_allowed": "selection_cap",
    "sigma_f_attacked_mean_eV_A": "attack_sigma_f_mean",
    "sigma_f_attacked_max_eV_A": "attack_sigma_f_max",
    "sigma_f_selected_mean_eV_A": "selected_sigma_f_mean",
    "sigma_f_selected_max_eV_A": "selected_sigma_f_max",
    "val_energy_mae_eV": "train_val_energy_mae",
    "val_forces_mae_eV_A": "train_val_forces_mae",
    "calibration_spearman": "calibration_spearman",
    "calibration_ratio": "calibration_ratio",
    "calibration_scale": "calibration_scale",
    "error_bound_eV_A": "attack_error_bound",
    "seconds": "seconds",
}


def artifact_key(system: str, what: str) -> str:
    """``<system>-<what>`` in Prefect's key alphabet (lowercase letters, digits, dashes)."""
    key = re.sub(r"[^a-z0-9-]+", "-", f"{system}-{what}".lower())
    return re.sub(r"-{2,}", "-", key).strip("-")


def _readable(value):
    """Floats to 4 significant digits for the table; everything else as it is."""
    return float(f"{value:.4g}") if isinstance(value, float) and math.isfinite(value) else value


def generation_rows(records: Sequence[GenerationRecord]) -> list[dict]:
    """One table row per generation record (columns :data:`TABLE_COLUMNS`; floats to 4
    significant digits; missing or non-finite values are None)."""
    return [
        {column: json_safe(_readable(record.get(key))) for column, key in TABLE_COLUMNS.items()}
        for record in records
    ]


def svg_data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode("ascii")


def _cell(value) -> str:
    return "-" if not finite(value) else f"{value:.4g}"


def _curve_and_table(records: Sequence[GenerationRecord], threshold: float | None) -> list[str]:
    lines = [
        "## Learning curve",
        "",
        f"![learning curve: σF of the attacked geometries and validation force MAE per "
        f"generation, eV/Å]({svg_data_uri(learning_curve_svg(records, threshold))})",
        "",
        "| generation | σF attacked, mean (eV/Å) | validation force MAE (eV/Å) | labels added |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.generation} | {_cell(r.get('attack_sigma_f_mean'))} | "
        f"{_cell(r.get('train_val_forces_mae'))} | {r.labels} |"
        for r in records
    ]
    return lines


def summary_markdown(
    summary: RunSummary, records: Sequence[GenerationRecord], threshold: float | None = None
) -> str:
    """The run's summary in markdown: outcome, totals, learning curve (image and table)."""
    lines = [
        f"# {summary.system}: {summary.stop_reason}",
        "",
        f"**{summary.stop_explanation}**",
        "",
        "| | |",
        "|---|---|",
        f"| generations | {summary.generations} |",
        f"| dataset | {summary.dataset_size} structures ({summary.composition()}) |",
        f"| level of theory | {summary.level_of_theory} |",
        f"| wall time (this invocation) | {summary.wall_seconds:.0f} s |",
        f"| run folder | `{summary.run_dir}` |",
        *([f"| resumed | {summary.resumed} |"] if summary.resumed else []),
        "",
        *_curve_and_table(records, threshold),
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class LiveState:
    """Where a run that has not finished stands, for :func:`live_markdown`: ``state`` a
    word (``running``, ``failed``, ``stopped``), ``detail`` a sentence (the phase next, or
    what stopped it and how to resume), and the budgets (generations, explored labels)."""

    system: str
    state: str
    detail: str
    max_generations: int
    max_labels: int
    threshold: float | None = None


def live_markdown(live: LiveState, records: Sequence[GenerationRecord]) -> str:
    """The summary of a run that is still going (or ended without finishing): its state,
    the last generation's σ_F against the threshold, validation error, labels added and
    failed, budget left, time per generation with the time to the generation budget, and
    the learning curve so far."""
    done = [r for r in records if r.explored or r.labels]
    labels = sum(r.labels for r in records)
    failed = sum(r.labels_failed or 0 for r in records)
    seconds = [float(r.seconds) for r in records if r.seconds is not None and finite(r.seconds)]
    per_generation = sum(seconds) / len(seconds) if seconds else float("nan")
    left = max(0, live.max_generations - len(done))
    last = records[-1] if records else None
    sigma = last.get("attack_sigma_f_mean") if last is not None else None
    trend = ""
    if last is not None and len(records) > 1:
        previous = records[-2].get("attack_sigma_f_mean")
        if finite(previous) and finite(sigma):
            trend = " (falling)" if sigma < previous else " (rising)"
    versus = f" against the threshold {live.threshold:g}" if live.threshold else ""
    eta = (
        f"about {_duration(left * per_generation)} to the generation budget"
        if finite(per_generation) and left
        else "the generation budget is spent"
        if not left
        else "no generation timed yet"
    )
    lines = [
        f"# {live.system}: {live.state}",
        "",
        f"**{live.detail}**",
        "",
        "| | |",
        "|---|---|",
        f"| generations finished | {len(records)} (budget {live.max_generations}) |",
        f"| σF of the attacked geometries, last | {_cell(sigma)} eV/Å{trend}{versus} |",
        "| validation force MAE, last | "
        f"{_cell(last.get('train_val_forces_mae') if last else None)} eV/Å |",
        f"| labels added / failed | {labels} / {failed} (budget left: "
        f"{max(0, live.max_labels - labels)}) |",
        f"| time per generation | {_cell(per_generation)} s: {eta} |",
        "",
        *_curve_and_table(records, live.threshold),
    ]
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


#: The figures' artifacts: ``<system>-<what>`` for each ``what``.
FIGURES = ("calibration", "energies", "geometries")

#: How many of the latest batch's structures the geometries artifact draws.
GEOMETRIES_SHOWN = 4


def _atoms(arrays: Arrays, indices: Sequence[int]) -> list[Atoms]:
    start = arrays.atom_start
    return [
        Atoms(
            numbers=arrays.numbers[start[i] : start[i] + arrays.n_atoms[i]],
            positions=arrays.positions[start[i] : start[i] + arrays.n_atoms[i]],
            cell=arrays.cell[i],
            pbc=arrays.pbc[i],
        )
        for i in indices
    ]


def calibration_markdown(system: str, records: Sequence[GenerationRecord]) -> str:
    """The calibration figure (:func:`~advloop.flows.figures.calibration_svg`) with its
    numbers per generation."""
    evaluated = [r for r in records if r.calibration_sigmas]
    lines = [
        f"# {system}: calibration on new labels",
        "",
        "Each point is a label the committee had not seen when it predicted it: its "
        "predicted σF against its actual force error (both the mean over its atoms, eV/Å). "
        "Points above the dashed line are labels the committee was over-confident on.",
        "",
        f"![calibration: predicted σF against actual force error per new label, eV/Å]"
        f"({svg_data_uri(calibration_svg(records))})",
        "",
        "| generation | labels | rank correlation ρ | mean σF / mean error |",
        "|---:|---:|---:|---:|",
        *(
            f"| {r.generation} | {len(r.calibration_sigmas or [])} | "
            f"{_cell(r.calibration_spearman)} | {_cell(r.calibration_ratio)} |"
            for r in evaluated
        ),
    ]
    return "\n".join(lines) + "\n"


def energies_markdown(system: str, groups: Sequence[EnergyGroup]) -> str:
    """The energy-distribution figure (:func:`~advloop.flows.figures.energy_distribution_svg`)
    with each batch's count, median and highest energy above the lowest."""
    lines = [
        f"# {system}: energies of the labelled structures",
        "",
        "Energy per atom above the lowest in the dataset (eV/atom), one column per batch "
        "of labels: the initial structures first, then each generation's.",
        "",
        f"![energy per atom above the dataset's lowest, per batch of labels, eV/atom]"
        f"({svg_data_uri(energy_distribution_svg(groups))})",
        "",
        "| batch | structures | median (eV/atom) | highest (eV/atom) |",
        "|---|---:|---:|---:|",
        *(
            f"| {g.label} | {len(g.energies)} | {_cell(float(np.median(g.energies)))} | "
            f"{_cell(max(g.energies))} |"
            for g in groups
            if g.energies
        ),
    ]
    return "\n".join(lines) + "\n"


def geometries_markdown(system: str, arrays: Arrays, groups: Sequence[EnergyGroup]) -> str:
    """The first :data:`GEOMETRIES_SHOWN` structures of the latest batch of labels, drawn
    (:func:`~advloop.flows.figures.geometry_svg`)."""
    latest = groups[-1] if groups else EnergyGroup("none", (), ())
    shown = list(zip(latest.indices, latest.energies))[:GEOMETRIES_SHOWN]
    titles = [f"structure {i} ({latest.label})\n{e:.3g} eV/atom above the lowest" for i, e in shown]
    svg = geometry_svg(_atoms(arrays, [i for i, _ in shown]), titles)
    lines = [
        f"# {system}: geometries of {latest.label}",
        "",
        f"{len(shown)} of the {len(latest.indices)} structures labelled in {latest.label}, "
        "projected on the plane of their two widest principal axes (atoms in Jmol colours, "
        "bonds between atoms within 1.2 × the sum of their covalent radii).",
        "",
        f"![geometries of {latest.label}]({svg_data_uri(svg)})",
    ]
    return "\n".join(lines) + "\n"


def figure_markdowns(
    system: str,
    records: Sequence[GenerationRecord],
    arrays: Arrays,
    provenance: Sequence[Provenance],
) -> dict[str, str]:
    """The markdown of each figure's artifact (:data:`FIGURES`), from the generation
    records and the dataset's arrays and provenance."""
    groups = energy_groups(arrays.energy, arrays.n_atoms, provenance)
    return {
        "calibration": calibration_markdown(system, records),
        "energies": energies_markdown(system, groups),
        "geometries": geometries_markdown(system, arrays, groups),
    }


def publish_figures(
    system: str,
    records: Sequence[GenerationRecord],
    arrays: Arrays,
    provenance: Sequence[Provenance],
) -> list[UUID]:
    """A new version of each figure's markdown artifact, ``<system>-<what>`` for each
    ``what`` of :data:`FIGURES`."""
    from prefect.artifacts import create_markdown_artifact

    descriptions = {
        "calibration": "predicted σF against the actual force error of each new label (eV/Å)",
        "energies": "energy per atom of the labelled structures per batch (eV/atom)",
        "geometries": "a few structures of the latest batch of labels",
    }
    return [
        synchronous(
            create_markdown_artifact(
                text,
                key=artifact_key(system, what),
                description=f"{system}: {descriptions[what]}",
            )
        )
        for what, text in figure_markdowns(system, records, arrays, provenance).items()
    ]


def publish_live_summary(live: LiveState, records: Sequence[GenerationRecord]) -> UUID:
    """A new version of ``<system>-summary`` for a run that has not finished: the same
    artifact the final summary updates, so the UI shows one card that follows the run."""
    from prefect.artifacts import create_markdown_artifact

    return synchronous(
        create_markdown_artifact(
            live_markdown(live, records),
            key=artifact_key(live.system, "summary"),
            description=f"{live.system}: {live.state}: {live.detail}",
        )
    )


def publish_generation_table(system: str, records: Sequence[GenerationRecord]) -> UUID:
    """A new version of the ``<system>-generations`` table with every generation so far."""
    from prefect.artifacts import create_table_artifact

    return synchronous(
        create_table_artifact(
            generation_rows(records),
            key=artifact_key(system, "generations"),
            description=f"{system}: one row per active-learning generation (σF and MAE in eV/Å)",
        )
    )


def publish_summary(
    summary: RunSummary, records: Sequence[GenerationRecord], threshold: float | None
) -> UUID:
    from prefect.artifacts import create_markdown_artifact

    return synchronous(
        create_markdown_artifact(
            summary_markdown(summary, records, threshold),
            key=artifact_key(summary.system, "summary"),
            description=f"{summary.system}: {summary.stop_explanation}",
        )
    )


class LabelProgress:
    """The ``<system>-labelling`` progress artifact of one generation's labels.

    Updated at most once every ``min_interval`` s (each update is a write to the server),
    and always for the last label: labels that finish together (cheap ones, or a batch
    of retries) show up in one update rather than one each."""

    def __init__(self, system: str, generation: int, total: int, min_interval: float = 1.0):
        from prefect.artifacts import create_progress_artifact

        self.generation, self.total = generation, total
        self.min_interval, self._last = min_interval, time.monotonic()
        self.id = synchronous(
            create_progress_artifact(
                0.0, key=artifact_key(system, "labelling"), description=self._describe(0, 0)
            )
        )

    def _describe(self, done: int, failed: int, eta: str | None = None) -> str:
        return (
            f"{batch_name(self.generation)}: {done} of {self.total} labels done"
            + (f", {failed} failed" if failed else "")
            + (f", {eta}" if eta else "")
        )

    def update(self, done: int, failed: int = 0, eta: str | None = None) -> None:
        """``done`` labels of the batch finished, ``failed`` of them without a label;
        ``eta``: how long the rest will take, in words."""
        from prefect.artifacts import update_progress_artifact

        now = time.monotonic()
        if done < self.total and now - self._last < self.min_interval:
            return
        self._last = now
        update_progress_artifact(
            self.id,
            100.0 * done / max(self.total, 1),
            description=self._describe(done, failed, eta),
        )
