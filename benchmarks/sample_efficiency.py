"""Sample efficiency of adversarial sampling against the usual ways of exploring.

Run ``python -m benchmarks.sample_efficiency [--quick] [--output PATH]``: runs every
system's benchmark from nothing (:mod:`benchmarks.double_well`,
:mod:`benchmarks.ammonia_xtb`, :mod:`benchmarks.ammonia_dft`,
:mod:`benchmarks.zeolite_xtb`), writes their own results files next to it, and writes
``benchmarks/results/sample_efficiency.json``: per system and strategy the seeds, the
labels used, the errors and (where measured) the stability, each per seed and as mean
and standard deviation over seeds; and per system, metric and baseline the labels the
baseline needed to reach the adversarial runs' final value, as a ratio to the labels the
adversarial runs needed, and the baseline's value at the adversarial runs' label count. ``--from-results`` assembles the summary from the
recorded per-system files instead of rerunning them. ``--quick`` (about a minute) runs in
CI to keep the benchmark code working; its numbers are not results.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks import ammonia_dft, ammonia_xtb, double_well, zeolite_xtb
from benchmarks.committee import machine_info, write_record

RESULTS = Path(__file__).parent / "results"

# per system: the per-generation row keys reported as errors and as stability
ERRORS = {
    "double_well": ("boltzmann_force_rmse", "boltzmann_force_rmse_unseen_well"),
    "ammonia_xtb": ("barrier_error_kcal_mol", "force_rmse_1000K"),
    "ammonia_dft": ("barrier_error_kcal_mol", "force_rmse_1000K"),
    "zeolite_xtb": ("force_rmse_hot",),
}
STABILITY = {
    "double_well": None,
    "ammonia_xtb": "md_stable_fraction",
    "ammonia_dft": None,
    "zeolite_xtb": "md_stable_fraction",
}
MODULES = {
    "double_well": double_well,
    "ammonia_xtb": ammonia_xtb,
    "ammonia_dft": ammonia_dft,
    "zeolite_xtb": zeolite_xtb,
}
UNITS = {
    "boltzmann_force_rmse": "energy/length (toy units)",
    "boltzmann_force_rmse_unseen_well": "energy/length (toy units)",
    "barrier_error_kcal_mol": "kcal/mol",
    "force_rmse_1000K": "eV/Å",
    "force_rmse_hot": "eV/Å",
    "md_stable_fraction": "fraction of runs",
}


def _stats(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=float)
    return {
        "per_seed": [float(v) for v in arr],
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
    }


def summarise_system(system: str, runs: dict[str, dict[str, list[dict]]]) -> dict:
    """Final labels, errors and stability per strategy from per-seed generation rows."""
    out = {}
    for strategy, by_seed in runs.items():
        finals = [rows[-1] for rows in by_seed.values()]
        entry = {
            "seeds": [int(s) for s in by_seed],
            "labels": _stats([f["n_labels"] for f in finals]),
            "errors": {key: _stats([f[key] for f in finals]) for key in ERRORS[system]},
            "stability": (
                _stats([f[STABILITY[system]] for f in finals]) if STABILITY[system] else None
            ),
            "curves": {
                str(seed): [
                    {
                        k: r[k]
                        for k in (
                            "generation",
                            "n_labels",
                            *ERRORS[system],
                            *([STABILITY[system]] if STABILITY[system] else []),
                        )
                    }
                    for r in rows
                ]
                for seed, rows in by_seed.items()
            },
        }
        out[strategy] = entry
    return out


def _first_reaching(
    curve: list[dict], key: str, target: float, higher_is_better: bool
) -> int | None:
    """Labels at the first generation whose value reaches ``target`` (None: never)."""
    for row in curve:
        if (row[key] >= target) if higher_is_better else (row[key] <= target):
            return int(row["n_labels"])
    return None


def _at_labels(curve: list[dict], key: str, n_labels: float) -> float:
    """The value at the last generation trained on at most ``n_labels`` labels."""
    rows = [r for r in curve if r["n_labels"] <= n_labels] or curve[:1]
    return float(rows[-1][key])


def label_ratios(strategies: dict, key: str, higher_is_better: bool = False) -> dict:
    """Per baseline: labels to reach the adversarial runs' final mean ``key`` (per seed,
    None where a run never did), their mean over the adversarial runs' own labels to reach
    it (``ratio``; None unless every run of both reached it), and the baseline's mean value
    at the adversarial runs' final label count."""
    adversarial = strategies["adversarial"]
    finals = [curve[-1][key] for curve in adversarial["curves"].values()]
    target = float(np.mean(finals))
    own = [
        _first_reaching(c, key, target, higher_is_better) for c in adversarial["curves"].values()
    ]
    adv_labels = float(adversarial["labels"]["mean"])
    out = {
        "target": target,
        "higher_is_better": higher_is_better,
        "adversarial_labels_to_target": own,
        "adversarial_final_labels": adv_labels,
        "baselines": {},
    }
    for name, entry in strategies.items():
        if name == "adversarial":
            continue
        curves = list(entry["curves"].values())
        reached = [_first_reaching(c, key, target, higher_is_better) for c in curves]
        both = all(r is not None for r in reached + own)
        out["baselines"][name] = {
            "labels_to_target": reached,
            "ratio": float(np.mean(reached) / np.mean(own)) if both else None,
            "max_labels": max(int(c[-1]["n_labels"]) for c in curves),
            "value_at_adversarial_labels": float(
                np.mean([_at_labels(c, key, adv_labels) for c in curves])
            ),
        }
    return out


def _runs(system: str, record: dict) -> dict:
    return record["results"] if system == "double_well" else record["runs"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="minutes; checks the code, not a result"
    )
    parser.add_argument(
        "--from-results",
        action="store_true",
        help="summarise the recorded per-system results instead of rerunning",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "sample_efficiency.json")
    args = parser.parse_args(argv)
    out_dir = args.output.parent
    records = {}
    for system, module in MODULES.items():
        path = out_dir / f"{system}.json"
        if args.from_results:
            records[system] = json.loads((RESULTS / f"{system}.json").read_text())
        else:
            records[system] = module.main(
                [*(["--quick"] if args.quick else []), "--output", str(path)]
            )
    summary = {
        "command": " ".join(
            [
                Path(sys.executable).name,
                "-m",
                "benchmarks.sample_efficiency",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        ),
        "machine": machine_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "units": UNITS,
        "systems": {
            system: {
                "source": f"{system}.json",
                "command": rec["command"],
                "date": rec["date"],
                "versions": rec["versions"],
                "strategies": summarise_system(system, _runs(system, rec)),
            }
            for system, rec in records.items()
        },
    }
    for system, entry in summary["systems"].items():
        strategies = entry["strategies"]
        entry["label_ratios"] = {key: label_ratios(strategies, key) for key in ERRORS[system]}
        if STABILITY[system]:
            entry["label_ratios"][STABILITY[system]] = label_ratios(
                strategies, STABILITY[system], higher_is_better=True
            )
    for system, entry in summary["systems"].items():
        for strategy, s in entry["strategies"].items():
            errors = "  ".join(
                f"{k} {v['mean']:.3g} ± {v['std']:.2g}" for k, v in s["errors"].items()
            )
            print(f"{system:12s} {strategy:12s} labels {s['labels']['mean']:5.1f}  {errors}")
    return write_record(args.output, summary)


if __name__ == "__main__":
    main()
