"""The per-generation table printed while a run goes."""

from __future__ import annotations

import sys
from typing import TextIO

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
    ("epochs", "train_epochs", "{:>6.0f}"),
    ("time s", "seconds", "{:>6.0f}"),
    ("orch. s", "seconds_orchestration", "{:>7.1f}"),
]


class GenerationTable:
    """Plain-text table, one row per generation (σF and MAE in eV/Å)."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout

    def _emit(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def header(self) -> None:
        cells = [f"{title:>{len(fmt.format(0))}}" for title, _, fmt in _COLUMNS]
        self._emit("  ".join(cells))

    def row(self, record: dict) -> None:
        cells = []
        for _, key, fmt in _COLUMNS:
            width = len(fmt.format(0))
            value = record.get(key)
            cells.append("-".rjust(width) if value is None else fmt.format(value))
        self._emit("  ".join(cells))

    def footer(self, summary: dict) -> None:
        self._emit(
            f"stopped after {summary['generations']} generation(s): {summary['stop_explanation']}\n"
            f"dataset: {summary['dataset_size']} structures ({summary['labels_initial']} initial, "
            f"{summary['labels_explored']} from {summary['strategy']}) at {summary['level_of_theory']}\n"
            f"run folder: {summary['run_dir']}"
        )
