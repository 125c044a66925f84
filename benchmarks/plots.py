"""Learning curves from the recorded sample-efficiency results, for docs/benchmarks.md.

Run ``python -m benchmarks.plots`` (needs matplotlib: ``pip install -e ".[plots]"``):
reads the recorded ``benchmarks/results/{double_well,ammonia_xtb,ammonia_dft,zeolite_xtb}.json``
(whichever exist) and writes PNGs to ``docs/img/``. Each panel shows every seed's curve thinly and the mean over seeds at
each generation boldly (over the runs that reached it), against the mean number of labels.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

RESULTS = Path(__file__).parent / "results"
OUT = Path(__file__).resolve().parents[1] / "docs" / "img"
COLOURS = {"adversarial": "tab:red", "md": "tab:blue", "random": "tab:grey"}
LABELS = {"adversarial": "adversarial", "md": "committee MD", "random": "random displacement"}


def _panel(ax, runs: dict, key: str, ylabel: str, log: bool = False, target: float | None = None):
    for strategy, by_seed in runs.items():
        curves = list(by_seed.values())
        for rows in curves:
            ax.plot(
                [r["n_labels"] for r in rows],
                [r[key] for r in rows],
                color=COLOURS[strategy],
                alpha=0.25,
                lw=0.8,
            )
        # mean per generation over the runs that reached it (a run may stop early)
        n = max(len(rows) for rows in curves)
        at = [[rows[g] for rows in curves if len(rows) > g] for g in range(n)]
        labels = [np.mean([r["n_labels"] for r in rows]) for rows in at]
        values = [np.mean([r[key] for r in rows]) for rows in at]
        ax.plot(
            labels,
            values,
            color=COLOURS[strategy],
            lw=2.2,
            marker="o",
            ms=3,
            label=LABELS[strategy],
        )
    if target is not None:
        ax.axhline(target, color="k", ls="--", lw=0.8)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("labels")
    ax.set_ylabel(ylabel)


def main() -> list[Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    written = []
    path = RESULTS / "double_well.json"
    if path.exists():
        runs = json.loads(path.read_text())["results"]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        _panel(axes[0], runs, "boltzmann_force_rmse", "Boltzmann-weighted force RMSE", log=True)
        _panel(axes[1], runs, "labels_in_unseen_well", "labels in the unseen well")
        axes[0].legend(frameon=False)
        fig.suptitle("2D double well (5 seeds)")
        fig.tight_layout()
        written.append(OUT / "double_well.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    for name, title in (
        ("ammonia_xtb", "NH3, GFN2-xTB oracle"),
        ("ammonia_dft", "NH3, PBE/6-31G* oracle (Prefect flow)"),
    ):
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        runs = record["runs"]
        stability = "md_stable_fraction" in next(iter(next(iter(runs.values())).values()))[0]
        fig, axes = plt.subplots(1, 3 if stability else 2, figsize=(12 if stability else 8.5, 3.6))
        _panel(axes[0], runs, "barrier_error_kcal_mol", "|barrier error| (kcal/mol)", target=1.0)
        _panel(axes[1], runs, "force_rmse_1000K", "force RMSE, 1000 K frames (eV/Å)")
        if stability:
            temperature = record["settings"]["md_temperature_K"]
            _panel(
                axes[2],
                runs,
                "md_stable_fraction",
                f"stable committee-MD runs, {temperature:.0f} K",
            )
        axes[0].legend(frameon=False)
        fig.suptitle(title)
        fig.tight_layout()
        written.append(OUT / f"{name}.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    path = RESULTS / "zeolite_xtb.json"
    if path.exists():
        runs = json.loads(path.read_text())["runs"]
        fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.6))
        _panel(axes[0], runs, "md_stable_fraction", "stable committee-MD runs")
        _panel(axes[1], runs, "force_rmse_hot", "force RMSE, hot oracle frames (eV/Å)")
        axes[0].legend(frameon=False)
        fig.suptitle("Sodalite framework with a guest, GFN2-xTB oracle")
        fig.tight_layout()
        written.append(OUT / "zeolite_xtb.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    for p in written:
        print(f"wrote {p}")
    return written


if __name__ == "__main__":
    main()
