"""Orchestration: labelling over Dask workers, and what Prefect costs per generation.

Run ``python -m benchmarks.orchestration [--quick] [--output PATH]``; writes
``benchmarks/results/orchestration.json``. Flows run on Prefect's temporary local server
with ``PREFECT_HOME`` in a temporary folder (nothing is left in ``~/.prefect``).

- **Labelling over Dask workers.** The generation's labelling sub-flow
  (:func:`advloop.flows.active_learning.label_candidates`, one task per structure) on a local
  Dask cluster of 1 and then 2 worker processes (one thread each), labelling the same
  structures (full: 16 CH3OH at PBE/6-31G*, about 1.6 s each; quick: 4 NH3 with
  GFN2-xTB) into fresh label stores, after warming each cluster's workers up on other
  structures. Parallel efficiency ``t1 / (2 t2)`` of the sub-flow's wall time; the
  labels' own compute time is reported beside it, and the workers' busy fraction
  (compute / (workers × wall time)), which separates orchestration idle time from cores
  shared with other jobs.
- **Orchestration overhead per generation.** A small real run of
  :func:`advloop.flows.active_learning.run_active_learning` (NH3, RHF/STO-3G labels, a committee of
  4 small PaiNN models); its ``generations.jsonl`` splits each generation's wall time into
  training, exploration, selection, labelling and orchestration (:mod:`advloop.flows.timing`).
  ``overhead_fraction`` is ``seconds_orchestration / seconds`` per generation (and its
  mean): the time no step body was running (task and flow-run bookkeeping with the
  server, submission, result passing). Full mode also runs it with the labelling on a
  2-worker Dask cluster (a sub-flow per generation).

``server_busy_retries`` counts the flow process's Prefect client retries after the
temporary server answered 503 (SQLite "database is locked" under concurrent writers,
infra/README.md), each a wait of about 2 s: on this 2-core machine they, not Prefect's
own bookkeeping, are most of the orchestration time of a generation. A PostgreSQL server
avoids them. Retries in worker processes are not counted.

The load average of the machine (``os.getloadavg``) is recorded before and after each
part: on a shared machine, other jobs slow the parallel part most.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import numpy as np
from ase.build import molecule
from ase.io import write

from advloop.flows.config import RunConfig
from benchmarks.committee import machine_info, write_record

RESULTS = Path(__file__).parent / "results" / "orchestration.json"
PHASES = ("training", "exploration", "selection", "labelling", "orchestration")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class ServerBusy(logging.Filter):
    """Counts the Prefect client's retries after a 503 from the server (SQLite's "database
    is locked": each waits about 2 s) in this process, logged at DEBUG; lets the other
    records through as the configured level would."""

    def __init__(self, level: int):
        super().__init__()
        self.level = level
        self.retries = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO and "retryable status code 503" in record.getMessage():
            self.retries += 1
        return record.levelno >= self.level


@contextlib.contextmanager
def _server_busy() -> Iterator[ServerBusy]:
    logger = logging.getLogger("prefect.client")
    counter = ServerBusy(logger.getEffectiveLevel())
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addFilter(counter)
    try:
        yield counter
    finally:
        logger.removeFilter(counter)
        logger.setLevel(level)


def _labelling_config(root: Path, name: str, quick: bool, workers: int) -> RunConfig:
    """A run that labels on a local Dask cluster of ``workers`` single-threaded workers."""
    mol = "NH3" if quick else "CH3OH"
    root.mkdir(parents=True, exist_ok=True)
    structures = root / f"{mol}.xyz"
    write(str(structures), molecule(mol))
    labels = (
        {"labels": {"kind": "tblite"}}
        if quick
        else {"labels": {"kind": "pyscf", "method": "RKS", "xc": "PBE", "basis": "6-31G*"}}
    )
    config = RunConfig.model_validate(
        {
            "system": {"name": name, "structures": str(structures)},
            **labels,
            "compute": {"label_workers": workers, "label_retries": 0},
            "runners": {
                "labelling": {"kind": "dask", "n_workers": workers, "threads_per_worker": 1}
            },
            "output_dir": str(root / "runs"),
        }
    )
    return config


def _write_candidates(config: RunConfig, n: int) -> None:
    """``n`` candidates of generation 0 on disk, as exploration would have left them (the
    molecule displaced at random, the same for every run)."""
    from ase.io import read

    from advloop.adversarial.structures import Candidates
    from advloop.flows.run_folder import RunLayout, write_candidates

    rng = np.random.default_rng(11)
    frames = []
    for _ in range(n):
        atoms = read(str(config.system.structures))
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        frames.append(atoms)
    candidates = Candidates.from_atoms(
        frames, np.zeros(n), np.full(n, 0.1), np.full(n, 0.2), np.ones(n)
    )
    write_candidates(RunLayout(config.run_dir()), 0, candidates, {"n_candidates": n})


def labelling_efficiency(root: Path, quick: bool) -> dict:
    """Wall time of the labelling sub-flow on 1 and 2 Dask workers, same structures."""
    from advloop.flows import runners
    from advloop.flows.active_learning import label_candidates
    from advloop.flows.report import GenerationTable

    n, warm = (4, 2) if quick else (16, 2)
    out: dict = {"n_structures": n, "warm_up_structures_per_worker": 1}
    keys = {}
    for workers in (1, 2):
        config = _labelling_config(root / f"w{workers}", f"labels-{workers}w", quick, workers)
        _write_candidates(config, warm + n)
        out["molecule"] = config.system.structures.stem
        out["level_of_theory"] = config.labels.level_of_theory
        load_before = _load()
        t_start = time.perf_counter()
        with runners.open_clusters(config) as clusters, _server_busy() as busy:
            t_cluster = time.perf_counter() - t_start
            flow = label_candidates.with_options(
                task_runner=runners.task_runner(
                    config.runners.labelling, "labelling", clusters.labelling
                )
            )
            table = GenerationTable(io.StringIO())
            with runners.api_for_workers():
                flow(config, 0, list(range(workers)), table)  # imports on every worker
                t0 = time.perf_counter()
                results, clock = flow(config, 0, list(range(warm, warm + n)), table)
                seconds = time.perf_counter() - t0
        failed = sum(not r.ok for r in results)
        if failed or len(results) != n:
            raise RuntimeError(f"{failed} of {n} labels failed with {workers} worker(s)")
        keys[workers] = np.array([r.key for r in sorted(results, key=lambda r: r.index)])
        compute = sum(c.end - c.start for c in clock)
        out[f"workers_{workers}"] = {
            "seconds": seconds,
            "seconds_cluster_start": t_cluster,
            "seconds_label_compute_sum": compute,
            "seconds_per_label_mean": compute / n,
            # the share of the workers' time spent inside label bodies: below 1 by the
            # orchestration around them; a longer seconds_per_label_mean with more workers
            # means the cores were shared (other jobs, the flow process)
            "worker_busy_fraction": compute / (workers * seconds),
            "server_busy_retries": busy.retries,
            "load_average_before": load_before,
            "load_average_after": _load(),
        }
        print(
            f"{workers} Dask worker(s): {n} labels in {seconds:.2f} s "
            f"(labels' own compute {compute:.2f} s)"
        )
    if not (keys[1] == keys[2]).all():
        raise RuntimeError("the two runs labelled different structures")
    t1, t2 = out["workers_1"]["seconds"], out["workers_2"]["seconds"]
    out["speedup"] = t1 / t2
    out["parallel_efficiency"] = t1 / (2 * t2)
    return out


def _run_config(root: Path, name: str, quick: bool, runners: dict | None = None) -> RunConfig:
    root.mkdir(parents=True, exist_ok=True)
    nh3 = root / "NH3.xyz"
    write(str(nh3), molecule("NH3"))
    return RunConfig.model_validate(
        {
            "system": {"name": name, "structures": str(nh3)},
            "initial_data": {"n_structures": 8, "displacement": 0.05, "seed": 0},
            "labels": {"kind": "pyscf", "method": "RHF", "basis": "STO-3G"},
            "model": {"n_atom_basis": 16, "n_interactions": 2, "n_rbf": 10, "cutoff": 4.0},
            "committee": {"n_members": 2 if quick else 4, "seed": 0},
            "training": (
                {"max_epochs": 10, "warm_start_epochs": 5, "batch_size": 8}
                if quick
                else {"max_epochs": 60, "warm_start_epochs": 30, "batch_size": 8}
            ),
            "exploration": {
                "kind": "adversarial",
                "n_seeds": 4 if quick else 8,
                "n_steps": 5 if quick else 20,
                "temperature": 1000.0,
            },
            "selection": {
                "percentile": 0,
                "rmsd_threshold": 0.001,
                "max_selected": 2 if quick else 6,
            },
            "convergence": {"force_std_threshold": 1.0e-6},
            "budget": {"max_generations": 1 if quick else 3, "max_labels": 100},
            "compute": {"label_workers": 2, "label_retries": 0},
            "runners": runners or {},
            "output_dir": str(root / "runs"),
        }
    )


def orchestration_overhead(
    root: Path, quick: bool, runners: dict | None = None, name: str = "overhead"
) -> dict:
    """A small run through ``run_active_learning``; the split of each generation's time."""
    from advloop.flows.active_learning import run_active_learning
    from advloop.flows.report import GenerationTable
    from advloop.flows.run_folder import read_generations

    config = _run_config(root / name, name, quick, runners)
    load_before = _load()
    t0 = time.perf_counter()
    with _server_busy() as busy:
        summary = run_active_learning(config, GenerationTable(io.StringIO()))
    wall = time.perf_counter() - t0
    records = [r.to_dict() for r in read_generations(config.run_dir())]
    generations = []
    for r in records:
        row = {
            "generation": r["generation"],
            "seconds": r["seconds"],
            **{f"seconds_{p}": r[f"seconds_{p}"] for p in PHASES},
            "overhead_fraction": r["seconds_orchestration"] / r["seconds"],
            "labels_added": r.get("labels_added", 0),
        }
        generations.append(row)
        print(
            f"{name} generation {row['generation']}: {row['seconds']:.1f} s, orchestration "
            f"{row['seconds_orchestration']:.2f} s ({row['overhead_fraction']:.1%})"
        )
    fractions = [g["overhead_fraction"] for g in generations]
    total = sum(g["seconds"] for g in generations)
    return {
        "runners": {p: getattr(config.runners, p).kind for p in ("training", "labelling")},
        "settings": {
            "n_members": config.committee.n_members,
            "max_epochs": config.training.max_epochs,
            "warm_start_epochs": config.training.warm_start_epochs,
            "n_seeds": config.exploration.n_seeds,
            "attack_steps": config.exploration.n_steps,
            "max_selected": config.selection.max_selected,
            "max_generations": config.budget.max_generations,
            "labels": config.labels.level_of_theory,
        },
        "stop_reason": summary["stop_reason"],
        "run_wall_seconds": wall,
        "server_busy_retries": busy.retries,
        "overhead_fraction": float(np.mean(fractions)),
        "overhead_fraction_of_total": sum(g["seconds_orchestration"] for g in generations) / total,
        "seconds_orchestration_mean": float(
            np.mean([g["seconds_orchestration"] for g in generations])
        ),
        "generations": generations,
        "load_average_before": load_before,
        "load_average_after": _load(),
    }


def run(quick: bool, root: Path) -> dict:
    """Both measurements, with the run folders under ``root``, on the Prefect API that is
    configured (the caller's; :func:`main` sets up a temporary one)."""
    load_start = _load()
    labelling = labelling_efficiency(root / "labelling", quick)
    overhead = orchestration_overhead(root / "run", quick)
    out = {
        "load_average": {"start": load_start},
        "labelling": labelling,
        "parallel_efficiency": labelling["parallel_efficiency"],
        "overhead": overhead,
        "overhead_fraction": overhead["overhead_fraction"],
    }
    if not quick:
        out["overhead_dask_labelling"] = orchestration_overhead(
            root / "run-dask",
            False,
            {"labelling": {"kind": "dask", "n_workers": 2}},
            name="overhead-dask",
        )
    out["load_average"]["end"] = _load()
    return out


def record(results: dict, argv: list[str], quick: bool, seconds: float) -> dict:
    """The benchmark's record: how, where and when it ran, then ``results``."""
    import prefect
    import torch

    return {
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.orchestration", *argv]),
        "machine": {**machine_info(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "versions": {
            "python": platform.python_version(),
            "prefect": prefect.__version__,
            "prefect_dask": version("prefect-dask"),
            "distributed": version("distributed"),
            "torch": torch.__version__,
            "pyscf": version("pyscf"),
            "tblite": version("tblite"),
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "seconds": seconds,
        **results,
    }


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="4 GFN2-xTB labels; a run of 2 members and 1+1 generations",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if "prefect" in sys.modules:
        parser.error(
            "run as a program (python -m benchmarks.orchestration): Prefect must not "
            "be imported before its temporary home is set"
        )
    home = tempfile.mkdtemp(prefix="advloop-bench-prefect-")
    # before prefect is imported (lazily, in the steps): a temporary local server with its
    # database in a throwaway folder
    os.environ["PREFECT_HOME"] = home
    from advloop.flows.cli import use_prefect_defaults

    use_prefect_defaults()
    import torch

    torch.set_num_threads(1)
    logging.getLogger("distributed").setLevel(logging.WARNING)  # a line per worker event
    t0 = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="advloop-bench-") as tmp:
            results = run(args.quick, Path(tmp))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    out = record(results, argv, args.quick, time.perf_counter() - t0)
    print(
        json.dumps(
            {k: out[k] for k in ("parallel_efficiency", "overhead_fraction", "load_average")}
        )
    )
    return write_record(args.output, out)


if __name__ == "__main__":
    main()
