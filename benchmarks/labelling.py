"""Labelling cost: seconds per label by method and size, density-matrix reuse, and workers.

Run ``python -m benchmarks.labelling [--quick] [--output PATH]``; writes
``benchmarks/results/labelling.json``.

- Seconds per label (energy and forces) for small molecules from ``ase.build.molecule``,
  displaced by 0.02 Å, with PySCF (RKS-PBE/6-31G*; full mode adds RKS-PBE/def2-SVP with
  density fitting) and GFN2-xTB (tblite), one OpenMP thread each.
- Reuse of the previous geometry's density matrix as the SCF guess: a sequence of
  geometries 0.02 Å apart (as consecutive labels of a run are), labelled with and
  without reuse: wall time and SCF cycles.
- Throughput with 1 and 2 labelling worker processes (one thread each) on the same
  structures, and the parallel efficiency.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import molecule

from advloop.calculators.factory import TBLiteLabels, make_calculator
from advloop.calculators.labeller import label_structures
from advloop.calculators.pyscf_calculator import PySCFCalculator, PySCFSettings
from benchmarks.committee import machine_info, write_record

RESULTS = Path(__file__).parent / "results" / "labelling.json"
PBE = PySCFSettings(method="RKS", xc="PBE", basis="6-31G*")
PBE_DF = PySCFSettings(method="RKS", xc="PBE", basis="def2-SVP", density_fit=True)


def _one_thread() -> None:
    from pyscf import lib

    lib.num_threads(1)


def rattled(
    name: str, n: int, std: float, rng: np.random.Generator, chain: bool = False
) -> list[Atoms]:
    """``n`` copies of molecule ``name`` with Gaussian noise (std in Å per coordinate) on
    the equilibrium geometry, or, with ``chain``, each on the one before (as consecutive
    labels of a run are)."""
    atoms = molecule(name)
    out = []
    for _ in range(n):
        start = out[-1] if chain and out else atoms
        new = start.copy()
        new.positions += rng.normal(0.0, std, new.positions.shape)
        out.append(new)
    return out


def _calculator(method: str, settings: PySCFSettings | None):
    if method == "GFN2-xTB":
        return make_calculator(TBLiteLabels())[0]
    return PySCFCalculator(settings=settings)


def seconds_per_label(
    name: str, method: str, settings: PySCFSettings | None, repeats: int, rng: np.random.Generator
) -> dict:
    structures = rattled(name, repeats + 1, 0.02, rng)
    calc = _calculator(method, settings)
    label_structures(structures[:1], calc)  # warm-up: imports, basis parsing, grids
    outcomes = label_structures(structures[1:], calc)
    times = [o.seconds for o in outcomes]
    return {
        "molecule": name,
        "n_atoms": len(structures[0]),
        "method": method,
        "seconds_per_label_median": float(np.median(times)),
        "seconds_per_label_min": float(np.min(times)),
        "repeats": len(times),
        "failed": sum(not o.ok for o in outcomes),
    }


def density_reuse(name: str, n: int, rng: np.random.Generator) -> dict:
    structures = rattled(name, n, 0.02, rng, chain=True)
    out = {
        "molecule": name,
        "n_atoms": len(structures[0]),
        "method": PBE.level_of_theory,
        "n_geometries": n,
        "step_A": 0.02,
    }
    energies = {}
    for reuse in (False, True):
        calc = PySCFCalculator(settings=replace(PBE, reuse_density=reuse))
        cycles = 0
        t0 = time.perf_counter()
        values = []
        for atoms in structures:
            outcome = label_structures([atoms], calc)[0]
            cycles += int(getattr(calc, "scf_cycles", 0) or 0)
            values.append(outcome.energy)
        key = "with_reuse" if reuse else "without_reuse"
        out[f"{key}_seconds"] = time.perf_counter() - t0
        out[f"{key}_scf_cycles"] = cycles
        energies[reuse] = np.array(values)
    out["speedup"] = out["without_reuse_seconds"] / out["with_reuse_seconds"]
    out["max_energy_difference_eV"] = float(np.max(np.abs(energies[True] - energies[False])))
    return out


def _label_chunk(structures: list[Atoms]) -> float:
    _one_thread()
    calc = PySCFCalculator(settings=PBE)
    t0 = time.perf_counter()
    label_structures(structures, calc)
    return time.perf_counter() - t0


def workers(name: str, n: int, rng: np.random.Generator) -> dict:
    structures = rattled(name, n, 0.02, rng)
    out = {
        "molecule": name,
        "n_atoms": len(structures[0]),
        "method": PBE.level_of_theory,
        "n_structures": n,
    }
    for n_workers in (1, 2):
        chunks = [structures[k::n_workers] for k in range(n_workers)]
        with ProcessPoolExecutor(n_workers) as pool:
            list(pool.map(_label_chunk, [c[:1] for c in chunks]))  # start and warm the workers
            t0 = time.perf_counter()
            list(pool.map(_label_chunk, chunks))
            wall = time.perf_counter() - t0
        out[f"workers_{n_workers}_seconds"] = wall
        out[f"workers_{n_workers}_labels_per_s"] = n / wall
    out["parallel_efficiency_2"] = out["workers_1_seconds"] / (2 * out["workers_2_seconds"])
    return out


def run(
    quick: bool,
    molecules: list[str] | None = None,
    repeats: int | None = None,
    reuse_molecule: str | None = None,
    reuse_geometries: int | None = None,
    worker_molecule: str = "CH3OH",
    worker_structures: int | None = None,
) -> dict:
    """All three measurements; the keyword arguments override the mode's sizes."""
    _one_thread()
    rng = np.random.default_rng(0)
    molecules = molecules or (
        ["H2O", "NH3", "CH3OH"] if quick else ["H2O", "NH3", "CH3OH", "C2H6", "C6H6"]
    )
    repeats = repeats or (3 if quick else 5)
    methods = [("RKS/PBE/6-31G*", PBE), ("GFN2-xTB", None)]
    if not quick:
        methods.append(("RKS/PBE/def2-SVP/DF", PBE_DF))
    per_label = []
    for name in molecules:
        for method, settings in methods:
            per_label.append(seconds_per_label(name, method, settings, repeats, rng))
            r = per_label[-1]
            print(
                f"{name:6s} {r['n_atoms']:3d} atoms  {method:22s} "
                f"{r['seconds_per_label_median']:8.3f} s/label",
                flush=True,
            )
    reuse = density_reuse(
        reuse_molecule or ("CH3OH" if quick else "C6H6"),
        reuse_geometries or (6 if quick else 10),
        rng,
    )
    print(
        f"density reuse: {reuse['without_reuse_seconds']:.2f} s -> "
        f"{reuse['with_reuse_seconds']:.2f} s ({reuse['speedup']:.2f}x), SCF cycles "
        f"{reuse['without_reuse_scf_cycles']} -> {reuse['with_reuse_scf_cycles']}",
        flush=True,
    )
    parallel = workers(worker_molecule, worker_structures or (8 if quick else 16), rng)
    print(
        f"workers: 1 -> {parallel['workers_1_labels_per_s']:.2f}/s, 2 -> "
        f"{parallel['workers_2_labels_per_s']:.2f}/s (efficiency "
        f"{parallel['parallel_efficiency_2']:.2f})",
        flush=True,
    )
    return {"seconds_per_label": per_label, "density_reuse": reuse, "workers": parallel}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three small molecules, fewer repeats")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = run(args.quick)
    record = {
        "command": " ".join(
            [
                Path(sys.executable).name,
                "-m",
                "benchmarks.labelling",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        ),
        "machine": {**machine_info(), "openmp_threads_per_label": 1},
        "versions": {
            "python": platform.python_version(),
            "pyscf": version("pyscf"),
            "tblite": version("tblite"),
            "ase": version("ase"),
            "numpy": np.__version__,
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "results": results,
    }
    return write_record(args.output, record)


if __name__ == "__main__":
    main()
