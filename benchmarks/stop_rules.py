"""When each stop rule would have stopped: raw σ_F against the calibrated error bound,
replayed on the learning curves of a sample-efficiency run.

Run ``python -m benchmarks.stop_rules [--input benchmarks/results/sample_efficiency.json]
[--tolerances 0.05,0.1,0.15,0.2] [--patience 1] [--output PATH]``; writes
``benchmarks/results/stop_rules.json``. Nothing is recomputed: every number comes from
the rows of the input (:func:`benchmarks.measured_run.measured_run`).

Each explored generation's row holds what the two rules read, for the geometries that
generation's committee explored: ``attack_sigma_f_mean`` (σ_F, eV/Å; the ``sigma`` rule
compares it with ``convergence.force_std_threshold``) and ``attack_error_bound`` (c σ_F,
c split-conformal from labels earlier committees had not seen; the ``calibrated_error``
rule compares it with ``convergence.force_error_tolerance``), and the mean force error
that committee then made on the labels the generation added
(``calibration_observed_mean``): the error on fresh geometries that a stop is meant to
guarantee is small.

Both rules get the same tolerance τ (eV/Å), as a user who reads σ_F as an error sets
it. A run stops at the first generation whose value has been below τ for ``patience``
generations in a row; the stop is *premature* when the committee's error on that
generation's new labels is above τ. The benchmark's runs go on to their budget whatever
the rule says, so the error a stopped committee would have made is known, except where
the run itself ended at that generation (its own stop rule: no labels were added, the
stop is counted as unknown). Also given, per
rule, its *coverage*: the share of explored generations whose new labels' mean error was
at most the value the rule reads (σ_F, or c σ_F).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
#: rule -> the row field it compares with the tolerance
RULES = {"sigma": "attack_sigma_f_mean", "calibrated_error": "attack_error_bound"}
OBSERVED = "calibration_observed_mean"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def stop_row(rows: list[dict], field: str, tolerance: float, patience: int) -> int | None:
    """The index of the row at which a rule reading ``field`` stops: the first whose value,
    and that of the ``patience - 1`` explored rows before it, is below ``tolerance``; None
    if it never does. A row without a finite value (no bound yet) resets the count."""
    below = 0
    for k, row in enumerate(rows):
        value = row.get(field)
        below = below + 1 if _finite(value) and value < tolerance else 0
        if below >= patience:
            return k
    return None


def replay(runs: dict[str, list[dict]], tolerances: list[float], patience: int) -> dict[str, dict]:
    """For one strategy's runs (seed -> rows): per rule, its coverage and, per tolerance,
    where each seed's run stopped and whether the stop was premature."""
    out: dict[str, dict] = {}
    for rule, field in RULES.items():
        pairs = [
            (r[field], r[OBSERVED])
            for rows in runs.values()
            for r in rows
            if _finite(r.get(field)) and _finite(r.get(OBSERVED))
        ]
        entry: dict = {
            "field": field,
            "coverage": float(np.mean([o <= v for v, o in pairs])) if pairs else None,
            "n_generations": len(pairs),
            "tolerances": {},
        }
        for tol in tolerances:
            stops = {}
            for seed, rows in runs.items():
                k = stop_row(rows, field, tol, patience)
                if k is None:
                    stops[seed] = None
                    continue
                observed = rows[k].get(OBSERVED)
                stops[seed] = {
                    "generation": rows[k]["generation"],
                    "explored_labels": rows[k]["explored_labels"],
                    "observed_error": observed,
                    # None: that generation added no labels (its run ended there), so the
                    # error the stop would have left is not known
                    "premature": bool(observed > tol) if _finite(observed) else None,
                }
            stopped = [s for s in stops.values() if s is not None]
            entry["tolerances"][f"{tol:g}"] = {
                "stops": stops,
                "stopped": len(stopped),
                "premature": sum(s["premature"] is True for s in stopped),
                "unknown": sum(s["premature"] is None for s in stopped),
                "mean_explored_labels_at_stop": (
                    float(np.mean([s["explored_labels"] for s in stopped])) if stopped else None
                ),
            }
        out[rule] = entry
    return out


def analyse(record: dict, tolerances: list[float], patience: int) -> dict:
    """``record`` (a sample-efficiency result) replayed: system -> strategy -> rule."""
    return {
        system: {
            strategy: replay(
                {seed: run["rows"] for seed, run in by_seed.items()}, tolerances, patience
            )
            for strategy, by_seed in entry["runs"].items()
        }
        for system, entry in record["systems"].items()
    }


def markdown_table(result: dict) -> str:
    lines = [
        "| system | strategy | rule | coverage | τ (eV/Å): stopped / premature of seeds, "
        "mean explored labels at stop |",
        "| --- | --- | --- | --- | --- |",
    ]
    for system, by_strategy in result.items():
        for strategy, by_rule in by_strategy.items():
            for rule, entry in by_rule.items():
                n = len(next(iter(entry["tolerances"].values()))["stops"])
                cells = []
                for tol, t in entry["tolerances"].items():
                    labels = t["mean_explored_labels_at_stop"]
                    at = "" if labels is None else f", {labels:.0f}"
                    unknown = f" ({t['unknown']} unknown)" if t["unknown"] else ""
                    cells.append(f"{tol}: {t['stopped']}/{t['premature']}{unknown} of {n}{at}")
                cov = entry["coverage"]
                lines.append(
                    f"| {system} | {strategy} | {rule} | "
                    f"{'—' if cov is None else f'{cov:.2f}'} ({entry['n_generations']}) | "
                    + "; ".join(cells)
                    + " |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=RESULTS / "sample_efficiency.json")
    parser.add_argument("--tolerances", default="0.05,0.1,0.15,0.2")
    parser.add_argument("--patience", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS / "stop_rules.json")
    args = parser.parse_args(argv)
    if args.patience < 1:
        parser.error("--patience must be >= 1")
    tolerances = [float(t) for t in args.tolerances.split(",")]
    if not all(t > 0 and math.isfinite(t) for t in tolerances):
        parser.error("--tolerances must be finite numbers > 0 (eV/Å)")
    source = json.loads(args.input.read_text())
    result = {
        "command": " ".join(
            ["python -m benchmarks.stop_rules", *(sys.argv[1:] if argv is None else argv)]
        ),
        "input": str(args.input),
        "input_command": source.get("command"),
        "patience": args.patience,
        "tolerances_eV_per_A": tolerances,
        "systems": analyse(source, tolerances, args.patience),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown_table(result["systems"]))
    return result


if __name__ == "__main__":
    main()
