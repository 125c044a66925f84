"""Committee throughput: looped vs vmapped inference, and training one member.

Run ``python -m benchmarks.committee [--quick] [--threads N] [--device cpu]``; writes
``benchmarks/results/committee.json``.

Inference: energies and forces of a 4-member PaiNN committee (n_atom_basis 64,
3 interactions, cutoff 5 Å, float32) on batches of random molecules, with
``Committee.energies_forces`` (the production path, ``looped``: a Python
loop of one forward and one backward pass per member), ``looped_own_backward`` (that
loop called directly, ``member_by_member_energies_forces``), ``looped_single_backward``
(all forward passes over per-member views of the positions, then one backward pass,
``single_backward_energies_forces``),
``stacked_energies_forces`` (``torch.vmap``, stacking the members on every call) and
``StackedCommittee.energies_forces`` (stacked once, as an attack would use it).
Training: one epoch of ``advloop.potentials.training.itrain`` on 32 structures, per member.

Structures are random molecules (H, C, N, O) at about 0.1 atoms/Å³ (liquid water) with no
two atoms closer than 1 Å, no cell and no periodicity; labels for training are random.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from advloop.potentials.batched import (
    StackedCommittee,
    member_by_member_energies_forces,
    single_backward_energies_forces,
    stacked_energies_forces,
)
from advloop.potentials.committee import Committee
from advloop.potentials.dataset import Arrays
from advloop.potentials.model import EnergyModel, ModelSpec, build_graph
from advloop.potentials.training import TrainingSettings, itrain

SPEC = ModelSpec(architecture="painn", n_atom_basis=64, n_interactions=3, n_rbf=20, cutoff=5.0)
N_MEMBERS = 4
ELEMENTS = np.array([1, 6, 7, 8])
ELEMENT_WEIGHTS = np.array([0.5, 0.2, 0.1, 0.2])
DENSITY = 0.1  # atoms / Å³
MIN_DISTANCE = 1.0  # Å
RESULTS = Path(__file__).parent / "results" / "committee.json"


def random_molecule(n_atoms: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """numbers [n_atoms] and positions [n_atoms, 3] Å: atoms placed one by one in a cube
    of volume n_atoms / DENSITY, rejecting any closer than MIN_DISTANCE to another."""
    side = (n_atoms / DENSITY) ** (1.0 / 3.0)
    positions = np.empty((n_atoms, 3))
    placed = 0
    for _ in range(1000 * n_atoms):
        trial = rng.uniform(0.0, side, 3)
        if (
            placed == 0
            or np.min(np.linalg.norm(positions[:placed] - trial, axis=1)) >= MIN_DISTANCE
        ):
            positions[placed] = trial
            placed += 1
            if placed == n_atoms:
                break
    else:
        raise RuntimeError(f"could not place {n_atoms} atoms at {MIN_DISTANCE} Å apart")
    return rng.choice(ELEMENTS, size=n_atoms, p=ELEMENT_WEIGHTS), positions


def random_arrays(n_structures: int, n_atoms: int, rng: np.random.Generator) -> Arrays:
    """Random molecules with random labels (eV, eV/Å), for timing only."""
    mols = [random_molecule(n_atoms, rng) for _ in range(n_structures)]
    total = n_structures * n_atoms
    return Arrays(
        numbers=np.concatenate([z for z, _ in mols]).astype(np.int64),
        positions=np.concatenate([x for _, x in mols]),
        forces=rng.normal(0.0, 1.0, (total, 3)),
        energy=rng.normal(-100.0 * n_atoms, 1.0, n_structures),
        n_atoms=np.full(n_structures, n_atoms, dtype=np.int64),
        cell=np.zeros((n_structures, 3, 3)),
        pbc=np.zeros((n_structures, 3), dtype=bool),
    )


def make_members(device: torch.device, seed: int = 0) -> list[EnergyModel]:
    members = []
    for k in range(N_MEMBERS):
        members.append(EnergyModel(SPEC, torch.Generator().manual_seed(seed + k)).to(device))
    return members


def time_variants(
    variants: dict[str, Callable[[], object]],
    min_time: float,
    min_rounds: int = 3,
    device: torch.device | None = None,
) -> dict[str, dict]:
    """Median and min seconds per call of each variant after one warm-up call each.

    Variants run interleaved, one call each per round, so that load from other
    processes on a shared machine affects them alike.
    """

    def sync():
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in variants.values():
        fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in variants}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or time.perf_counter() - start < min_time:
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {
        name: {"median_s": statistics.median(t), "min_s": min(t), "repeats": len(t)}
        for name, t in times.items()
    }


def bench_inference(
    n_atoms: int, batch_atoms: int, min_time: float, device: torch.device, rng: np.random.Generator
) -> dict:
    n_structures = max(1, batch_atoms // n_atoms)
    data = random_arrays(n_structures, n_atoms, rng)
    graph = build_graph(data.numbers, data.positions, data.n_atoms, SPEC.cutoff).to(device)
    positions = torch.as_tensor(data.positions, dtype=torch.float64, device=device)
    members = make_members(device)
    committee = Committee(members)
    stacked = StackedCommittee(members)

    e_loop, f_loop = committee.energies_forces(graph, positions)
    e_vmap, f_vmap = stacked.energies_forces(graph, positions)
    variants = {
        "looped": lambda: committee.energies_forces(graph, positions),
        "looped_own_backward": lambda: member_by_member_energies_forces(members, graph, positions),
        "looped_single_backward": lambda: single_backward_energies_forces(
            members, graph, positions
        ),
        "batched": lambda: stacked_energies_forces(members, graph, positions),
        "batched_prestacked": lambda: stacked.energies_forces(graph, positions),
    }
    timings = time_variants(variants, min_time, device=device)
    out = {
        "n_atoms": n_atoms,
        "n_structures_per_batch": n_structures,
        "n_pairs": int(graph.idx_i.shape[0]),
        "max_abs_energy_diff_eV": float((e_vmap - e_loop).detach().abs().max()),
        "max_abs_force_diff_eV_per_A": float((f_vmap - f_loop).abs().max()),
    }
    for name, t in timings.items():
        out[f"{name}_structures_per_s"] = n_structures / t["median_s"]
        out[f"{name}_timing"] = t
    looped = timings["looped"]["median_s"]
    out["batched_over_looped_speedup"] = looped / timings["batched"]["median_s"]
    out["batched_prestacked_over_looped_speedup"] = (
        looped / timings["batched_prestacked"]["median_s"]
    )
    out["batched_over_looped_speedup_min_times"] = (
        timings["looped"]["min_s"] / timings["batched"]["min_s"]
    )
    out["looped_single_backward_over_looped_speedup"] = (
        looped / timings["looped_single_backward"]["median_s"]
    )
    out["batched_over_looped_own_backward_speedup"] = (
        timings["looped_own_backward"]["median_s"] / timings["batched"]["median_s"]
    )
    return out


def bench_training(
    n_atoms: int, n_structures: int, device: torch.device, rng: np.random.Generator
) -> dict:
    """One member, two epochs; the second is the steady state (the first also builds
    the neighbour lists and fits the reference energies)."""
    if device.type != "cpu":
        return {"n_atoms": n_atoms, "skipped": "itrain collates on the CPU"}
    data = random_arrays(n_structures, n_atoms, rng)
    model = make_members(device)[0]
    settings = TrainingSettings(max_epochs=2, batch_size=16, val_fraction=0.0)
    epochs = itrain(model, data, None, settings, np.random.default_rng(0))
    times = []
    t0 = time.perf_counter()
    for _ in epochs:
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
    return {
        "n_atoms": n_atoms,
        "n_structures": n_structures,
        "batch_size": settings.batch_size,
        "first_epoch_s": times[0],
        "epoch_s": times[-1],
        "structures_per_s_per_member": n_structures / times[-1],
    }


def write_record(path: Path, record: dict) -> dict:
    """Write a benchmark's record as JSON (creating the folder) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    return record


def record_header(
    module: str, argv: list[str] | None, packages: tuple[str, ...], quick: bool, seconds: float
) -> dict:
    """The fields a benchmark record starts with: the command that made it, the machine,
    the versions of python, torch and ``packages``, the date, the mode and its seconds."""
    return {
        "command": " ".join(
            [Path(sys.executable).name, "-m", module, *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": machine_info(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            **{name: version(name) for name in packages},
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "seconds": seconds,
    }


def machine_info() -> dict:
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sizes 10, 50, 100 atoms only")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on small shared machines "
        "more threads than free cores makes every op wait)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    sizes = [10, 50, 100] if args.quick else [10, 50, 100, 250, 500]
    batch_atoms = 500 if args.quick else 1000
    min_time = 0.5 if args.quick else 2.0
    n_train = 32
    rng = np.random.default_rng(0)

    inference, training = [], []
    for n in sizes:
        inference.append(bench_inference(n, batch_atoms, min_time, device, rng))
        r = inference[-1]
        print(
            f"inference {n:4d} atoms: looped {r['looped_structures_per_s']:8.1f}/s  "
            f"own-backward loop {r['looped_own_backward_structures_per_s']:8.1f}/s  "
            f"single-backward loop {r['looped_single_backward_structures_per_s']:8.1f}/s  "
            f"batched {r['batched_structures_per_s']:8.1f}/s  "
            f"prestacked {r['batched_prestacked_structures_per_s']:8.1f}/s  "
            f"speedup {r['batched_over_looped_speedup']:.2f}",
            flush=True,
        )
        training.append(bench_training(n, n_train, device, rng))
        t = training[-1]
        if "epoch_s" in t:
            print(
                f"training  {n:4d} atoms: {t['structures_per_s_per_member']:8.1f} "
                f"structures/s per member",
                flush=True,
            )

    record = {
        "command": " ".join(
            [
                Path(sys.executable).name,
                "-m",
                "benchmarks.committee",
                *(argv if argv is not None else sys.argv[1:]),
            ]
        ),
        "machine": machine_info(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "schnetpack": version("schnetpack"),
            "numpy": np.__version__,
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            "model": SPEC.to_dict(),
            "n_members": N_MEMBERS,
            "dtype": "float32",
            "device": str(device),
            "batch_atoms": batch_atoms,
            "min_time_s": min_time,
            "density_atoms_per_A3": DENSITY,
            "min_distance_A": MIN_DISTANCE,
            "train_structures": n_train,
        },
        "results": {"inference": inference, "training": training},
    }
    return write_record(args.output, record)


if __name__ == "__main__":
    main()
