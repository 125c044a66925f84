"""The local reporter of a run: a table with one row per generation, and progress
(committee members trained, labels done) while a generation runs.

On a terminal, progress is a rich progress bar that disappears when its work is done;
on any other stream (a log file, ``io.StringIO`` in tests) it is one plain line per
event, so logs stay readable.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from advloop.flows.records import GenerationRecord, RunSummary
from advloop.flows.run_folder import batch_name

if TYPE_CHECKING:  # rich is imported when a bar is first drawn
    from rich.progress import Progress, TaskID

_COLUMNS = [
    ("gen", "generation", "{:>3d}"),
    ("data", "dataset_size", "{:>5d}"),
    ("new", "labels_added", "{:>4d}"),
    ("fail", "labels_failed", "{:>4d}"),
    ("σF att. mean", "attack_sigma_f_mean", "{:>12.4f}"),
    ("σF att. max", "attack_sigma_f_max", "{:>11.4f}"),
    ("val F MAE", "train_val_forces_mae", "{:>9.4f}"),
    ("calib ρ", "calibration_spearman", "{:>7.2f}"),
    ("σ/err", "calibration_ratio", "{:>5.2f}"),
    ("err bound", "attack_error_bound", "{:>9.4f}"),
    ("cap", "selection_cap", "{:>4d}"),
    ("epochs", "train_epochs", "{:>6.0f}"),
    ("time s", "seconds", "{:>6.0f}"),
    ("orch. s", "seconds_orchestration", "{:>7.1f}"),
]


def member_line(
    generation: int, member: int, done: int, total: int, metrics: dict[str, float]
) -> str:
    """``gen 3: member 1 trained, 2 of 4 (val F MAE 0.0412 eV/Å)``."""
    mae = metrics.get("val_forces_mae")
    detail = f" (val F MAE {mae:.4f} eV/Å)" if mae is not None else ""
    return f"gen {generation}: member {member} trained, {done} of {total}{detail}"


def labels_line(
    generation: int, done: int, total: int, failed: int = 0, eta: str | None = None
) -> str:
    """``gen 3: 5 of 8 labels done, 1 failed, about 4 min left`` (``gen 3: labelling 8
    structures`` before the first)."""
    name = batch_name(generation)
    if done == 0:
        return f"{name}: labelling {total} structures"
    return (
        f"{name}: {done} of {total} labels done"
        + (f", {failed} failed" if failed else "")
        + (f", {eta}" if eta else "")
    )


def part_lines(record: GenerationRecord) -> list[str]:
    """A run of several systems: one line per part under its generation's row
    (``    nh3: 16 seeds, 40 candidates, σF 0.0831 eV/Å, 3 selected``)."""
    return [
        f"    {name}: {stats['seeds']:.0f} seeds, {stats['candidates']:.0f} candidates, "
        f"σF {stats['sigma_f_mean']:.4f} eV/Å, {stats.get('selected', 0):.0f} selected"
        for name, stats in (record.parts or {}).items()
    ]


class GenerationTable:
    """Plain-text table, one row per generation (σF and MAE in eV/Å), and progress hooks
    the flow calls while a generation runs (:meth:`training_started`, :meth:`member_trained`,
    :meth:`labelled`; ``labelled(g, 0, total)`` announces the labels).

    ``live``: draw progress as rich bars (default: when ``stream`` is a terminal).
    """

    def __init__(self, stream: TextIO | None = None, live: bool | None = None):
        self.stream = stream or sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty()) if live is None else live
        self._progress: Progress | None = None  # while a bar is shown
        self._bars: dict[str, TaskID] = {}  # description -> its bar
        self._headed = False

    def _emit(self, line: str) -> None:
        self.close()
        print(line, file=self.stream, flush=True)

    def _advance(self, description: str, done: int, total: int, line: str) -> None:
        if not self.live:
            print(line, file=self.stream, flush=True)
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=True,
                auto_refresh=False,
            )
            self._progress.start()
        if description not in self._bars:
            self._bars[description] = self._progress.add_task(description, total=total)
        self._progress.update(self._bars[description], completed=done, total=total, refresh=True)
        if all(t.finished for t in self._progress.tasks):
            self.close()

    def close(self) -> None:
        """Remove the progress bars, if any (a finished bar removes itself)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress, self._bars = None, {}

    def training_started(self, generation: int, total: int) -> None:
        """``generation``'s committee of ``total`` members starts training."""
        self._advance(
            f"gen {generation}: training",
            0,
            total,
            f"gen {generation}: training {total} committee members",
        )

    def member_trained(
        self, generation: int, member: int, done: int, total: int, metrics: dict[str, float]
    ) -> None:
        """Member ``member`` of ``generation``'s committee finished (``done`` of ``total``)."""
        line = member_line(generation, member, done, total, metrics)
        self._advance(f"gen {generation}: training", done, total, line)

    def labelled(
        self, generation: int, done: int, total: int, failed: int = 0, eta: str | None = None
    ) -> None:
        """``done`` of ``generation``'s ``total`` selected structures (of the initial
        ones for :data:`advloop.flows.run_folder.INITIAL`) have a label task finished, ``failed``
        of them without a label; ``eta``: how long the rest will take, in words."""
        line = labels_line(generation, done, total, failed, eta)
        self._advance(f"{batch_name(generation)}: labelling", done, total, line)

    def header(self) -> None:
        cells = [f"{title:>{len(fmt.format(0))}}" for title, _, fmt in _COLUMNS]
        self._emit("  ".join(cells))
        self._headed = True

    def row(self, record: GenerationRecord) -> None:
        """One generation's row (after the header, on the first row)."""
        if not self._headed:
            self.header()
        cells = []
        for _, key, fmt in _COLUMNS:
            width = len(fmt.format(0))
            value = record.get(key)
            cells.append("-".rjust(width) if value is None else fmt.format(value))
        self._emit("  ".join(cells))
        for line in part_lines(record):
            self._emit(line)

    def footer(self, summary: RunSummary) -> None:
        self._emit(
            f"stopped after {summary.generations} generation(s): {summary.stop_explanation}\n"
            f"dataset: {summary.dataset_size} structures ({summary.composition()}) at "
            f"{summary.level_of_theory}\n"
            f"run folder: {summary.run_dir}"
        )
