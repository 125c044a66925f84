"""The ammonia comparison repeated with DFT labels, through advloop's Prefect flow.

Run ``python -m benchmarks.ammonia_dft [--quick] [--output PATH]``; writes
``benchmarks/results/ammonia_dft.json``.

:mod:`benchmarks.ammonia_xtb` compares the exploration strategies with GFN2-xTB as a fast
oracle. This repeats the comparison of adversarial sampling with its strongest baseline
there (committee MD with trust levels) with PBE/6-31G* (PySCF) as the oracle, to check
that the conclusion holds for DFT labels. Each run is a real ``run_active_learning`` flow
on Prefect's embedded server, so its generation records also give the wall time per
generation split into training, exploration, selection, labelling and orchestration (the
time no step was running: task submission, state updates, the flow's bookkeeping).

After the flow, every generation's committee (kept in the run folder) is measured against
the DFT oracle as in the xTB benchmark: the inversion barrier (planar saddle minus
pyramidal minimum, both optimised with the oracle) and the force RMSE on frames of a
1000 K oracle Langevin trajectory. The high-temperature stability runs are left out (they
did not discriminate on ammonia with GFN2-xTB, and a DFT trajectory per run is costly).
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from advloop.calculators.factory import PySCFLabels, level_of_theory
from advloop.flows.config import RunConfig
from advloop.flows.run_folder import RunLayout, read_generations
from advloop.potentials.committee import Committee
from advloop.potentials.dataset import Dataset
from benchmarks.ammonia_xtb import (
    KCAL_PER_MOL,
    _config,
    committee_metrics,
    oracle_reference,
    summarise,
)
from benchmarks.committee import record_header, write_record

RESULTS = Path(__file__).parent / "results" / "ammonia_dft.json"
STRATEGIES = ("adversarial", "md")
PYSCF = PySCFLabels()  # RKS/PBE/6-31G*, as examples/ammonia.yaml
PHASES = ("training", "exploration", "selection", "labelling", "orchestration")
# quick mode: a cheap level of theory; the numbers check the code, they are not results
QUICK_DFT = {"method": "RHF", "basis": "STO-3G"}


def labels_per_generation(layout: RunLayout, generations: list[int]) -> dict[int, int]:
    """Labels the committee of each generation was trained on (initial ones included)."""
    trained_on = [
        p.generation if p.strategy != "initial" else -1
        for p in Dataset(layout.dataset).provenance()
    ]
    return {g: sum(1 for t in trained_on if t < g) for g in generations}


def evaluate_run(config: RunConfig, ref: dict) -> list[dict]:
    """Per trained generation: labels, barrier and force errors, and the flow's timings."""
    layout = RunLayout(config.run_dir())
    generations = layout.trained_generations()
    n_labels = labels_per_generation(layout, generations)
    records = {r.generation: r.to_dict() for r in read_generations(layout.root)}
    rows = []
    for g in generations:
        committee = Committee.from_checkpoints(layout.committee_checkpoints(g))
        record = records.get(g, {})
        rows.append(
            {
                "generation": g,
                "n_labels": n_labels[g],
                **committee_metrics(committee, ref, 0, 0, np.random.default_rng(g)),
                "seconds": record.get("seconds"),
                **{f"seconds_{p}": record.get(f"seconds_{p}") for p in PHASES},
            }
        )
    return rows


def timing_summary(runs: dict[str, dict[int, list[dict]]]) -> dict:
    """Mean seconds per generation and phase over all runs' generations that explored."""
    rows = [
        r
        for by_seed in runs.values()
        for rs in by_seed.values()
        for r in rs
        if r.get("seconds_exploration")
    ]
    out = {p: float(np.mean([r[f"seconds_{p}"] for r in rows])) for p in PHASES} if rows else {}
    if rows:
        out["total"] = float(np.mean([r["seconds"] for r in rows]))
        out["orchestration_fraction"] = out["orchestration"] / out["total"]
        out["generations"] = len(rows)
    return out


def run(
    seeds: list[int],
    generations: int,
    labels_per_generation: int,
    quick: bool,
    n_frames: int = 12,
    strategies: tuple[str, ...] = STRATEGIES,
    root: Path | None = None,
    rmse_target: float = 0.1,
) -> dict:
    """Each strategy and seed as a Prefect flow run with DFT labels, then the metrics."""
    from advloop.flows.active_learning import run_active_learning
    from advloop.flows.report import GenerationTable

    torch.set_num_threads(1)
    overrides = {
        "convergence": {"force_std_threshold": 1e-9},  # run every generation
        "budget": {"max_labels": 10_000},
        **({"labels": QUICK_DFT} if quick else {}),
    }
    runs: dict[str, dict[int, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="advloop-bench-") as tmp:
        base = Path(root or tmp)
        configs = {
            (s, seed): _config(
                s,
                seed,
                base,
                quick,
                labels_per_generation,
                generations,
                labels=PYSCF,
                name=f"dft-{s}",
                overrides=overrides,
            )
            for s in strategies
            for seed in seeds
        }
        labels = next(iter(configs.values())).labels
        t0 = time.perf_counter()
        ref = oracle_reference(n_frames, np.random.default_rng(0), labels)
        reference_seconds = time.perf_counter() - t0
        for (strategy, seed), config in configs.items():
            summary = run_active_learning(config, GenerationTable(io.StringIO()))
            runs.setdefault(strategy, {})[seed] = rows = evaluate_run(config, ref)
            last = rows[-1]
            print(
                f"{strategy:12s} seed {seed}: {last['n_labels']:3d} labels  barrier error "
                f"{last['barrier_error_kcal_mol']:6.2f} kcal/mol  force RMSE "
                f"{last['force_rmse_1000K']:.3f} eV/Å  stop: {summary['stop_reason']}",
                flush=True,
            )
    return {
        "oracle": {
            "method": level_of_theory(labels),
            "barrier_eV": ref["barrier_eV"],
            "barrier_kcal_mol": ref["barrier_eV"] / KCAL_PER_MOL,
            "trajectory_frames": n_frames,
            "trajectory_temperature_K": 1000.0,
            "reference_seconds": reference_seconds,
        },
        "settings": {
            "seeds": seeds,
            "generations": generations,
            "labels_per_generation": labels_per_generation,
            "quick": quick,
            "force_rmse_target": rmse_target,
            "strategies": list(strategies),
            "orchestrator": "Prefect flow run_active_learning, embedded server",
        },
        "runs": {s: {str(k): v for k, v in by_seed.items()} for s, by_seed in runs.items()},
        "summary": summarise(runs, rmse_target),
        "seconds_per_generation": timing_summary(runs),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="RHF/STO-3G, one seed, one generation: checks the code"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from advloop.flows.cli import use_prefect_defaults

    use_prefect_defaults()
    t0 = time.perf_counter()
    if args.quick:
        results = run([0], generations=1, labels_per_generation=3, quick=True, n_frames=3)
    else:
        results = run([0, 1, 2], generations=5, labels_per_generation=8, quick=False)
    header = record_header(
        "benchmarks.ammonia_dft",
        argv,
        ("schnetpack", "pyscf", "prefect", "ase"),
        args.quick,
        time.perf_counter() - t0,
    )
    record = {
        **header,
        "environment": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
        **results,
    }
    return write_record(args.output, record)


if __name__ == "__main__":
    main()
