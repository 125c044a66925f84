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
  strips), followed by the same numbers as a table.

The builders (:func:`artifact_key`, :func:`generation_rows`, :func:`learning_curve_svg`,
:func:`summary_markdown`, :func:`live_markdown`) are plain functions; the ``publish_*`` functions and
:class:`LabelProgress` call Prefect and need a flow run.
"""

from __future__ import annotations

import base64
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID
from xml.sax.saxutils import escape

from advloop.flows.dispatch import synchronous
from advloop.flows.events import json_safe
from advloop.flows.records import GenerationRecord, RunSummary
from advloop.flows.run_folder import batch_name

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

# learning-curve series: (legend, record field, colour)
_SERIES = (
    ("σF of attacked geometries (mean)", "attack_sigma_f_mean", "#d62728"),
    ("validation force MAE", "train_val_forces_mae", "#1f77b4"),
)


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


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def learning_curve_svg(
    records: Sequence[GenerationRecord],
    threshold: float | None = None,
    width: int = 480,
    height: int = 260,
) -> str:
    """An SVG line chart of σ_F of the attacked geometries and the validation force MAE
    (both eV/Å) against generation, with ``threshold`` (eV/Å) as a dashed line."""
    left, right, top, bottom = 60, 16, 34, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    gens = [r.generation for r in records] or [0]
    g0, g1 = min(gens), max(gens)
    values = [r.get(k) for r in records for _, k, _ in _SERIES if _finite(r.get(k))]
    ymax = max(values + ([threshold] if threshold else []) + [1e-12]) * 1.1

    def x(g: float) -> float:
        return left + (g - g0) / max(g1 - g0, 1) * plot_w

    def y(v: float) -> float:
        return top + plot_h * (1 - v / ymax)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="black"/>',
    ]
    for k in range(5):
        v = ymax * k / 4
        out.append(
            f'<line x1="{left - 4}" y1="{y(v):.1f}" x2="{left}" y2="{y(v):.1f}" stroke="black"/>'
            f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>'
        )
    stride = max(1, math.ceil((g1 - g0 + 1) / 12))
    for g in range(g0, g1 + 1, stride):
        out.append(f'<text x="{x(g):.1f}" y="{top + plot_h + 15}" text-anchor="middle">{g}</text>')
    out.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">generation</text>'
        f'<text x="14" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">eV/Å</text>'
    )
    if threshold:
        out.append(
            f'<line x1="{left}" y1="{y(threshold):.1f}" x2="{left + plot_w}" '
            f'y2="{y(threshold):.1f}" stroke="gray" stroke-dasharray="5,4"/>'
            f'<text x="{left + plot_w - 2}" y="{y(threshold) - 4:.1f}" text-anchor="end" '
            f'fill="gray">convergence threshold</text>'
        )
    for n, (legend, key, colour) in enumerate(_SERIES):
        points = [(x(r.generation), y(r.get(key))) for r in records if _finite(r.get(key))]
        if len(points) > 1:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
        out.extend(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"/>' for px, py in points
        )
        ly = 10 + 13 * n  # legend, one line per series above the plot
        out.append(
            f'<line x1="{left}" y1="{ly}" x2="{left + 18}" y2="{ly}" stroke="{colour}" '
            f'stroke-width="2"/><text x="{left + 22}" y="{ly + 4}">{escape(legend)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def svg_data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode("ascii")


def _cell(value) -> str:
    return "-" if not _finite(value) else f"{value:.4g}"


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
    seconds = [float(r.seconds) for r in records if r.seconds is not None and _finite(r.seconds)]
    per_generation = sum(seconds) / len(seconds) if seconds else float("nan")
    left = max(0, live.max_generations - len(done))
    last = records[-1] if records else None
    sigma = last.get("attack_sigma_f_mean") if last is not None else None
    trend = ""
    if last is not None and len(records) > 1:
        previous = records[-2].get("attack_sigma_f_mean")
        if _finite(previous) and _finite(sigma):
            trend = " (falling)" if sigma < previous else " (rising)"
    versus = f" against the threshold {live.threshold:g}" if live.threshold else ""
    eta = (
        f"about {_duration(left * per_generation)} to the generation budget"
        if _finite(per_generation) and left
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
