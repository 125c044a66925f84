"""Sample efficiency on ammonia with GFN2-xTB (tblite) as the oracle.

Run ``python -m benchmarks.ammonia_xtb [--quick] [--output PATH]``; writes
``benchmarks/results/ammonia_xtb.json``.

The active-learning loop of advloop itself (the plain generation steps of
:mod:`advloop.flows.steps`: train, explore, select, label, with ``labels.kind: tblite``)
runs once per exploration strategy (adversarial, committee MD, random displacement) and
seed, from the same initial labels, committee settings and label budget per generation.
After each generation's training the committee is measured against the oracle:

- the NH3 inversion barrier: committee-mean energy of the oracle's planar transition
  state minus that of its pyramidal minimum (both optimised with GFN2-xTB), against the
  oracle's barrier (goal: within 1 kcal/mol);
- the force RMSE on frames of a 1000 K oracle trajectory (Langevin, GFN2-xTB);
- stability: the fraction of committee-driven Langevin runs at 2500 K from the minimum
  that stay physical (no clash, no fragment) for 0.5 ps (16 runs). (At 1500 K and 0.1 ps every
  committee of every strategy stayed physical, from the first generation on.)

``ABLATIONS`` reruns the adversarial strategy with one attack setting changed at a time
(the attack temperature, the seed policy) to find out why its committees fit the 1000 K
frames less well than the baselines' (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from ase import units
from ase.io import read
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from ase.optimize import BFGS

from advloop.adversarial.baselines import CommitteeMDSettings, icommittee_md
from advloop.adversarial.structures import Seeds
from advloop.calculators.factory import Labeller, TBLiteLabels, make_calculator
from advloop.flows.config import RunConfig
from advloop.flows.validation import validate_config
from advloop.potentials.committee import Committee
from benchmarks.committee import record_header, write_record
from benchmarks.measured_run import Measure, measured_run

RESULTS = Path(__file__).parent / "results" / "ammonia_xtb.json"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ammonia.yaml"
STRATEGIES = ("adversarial", "md", "random")
KCAL_PER_MOL = units.kcal / units.mol  # eV


XTB = TBLiteLabels()
MD_TEMPERATURE = 2500.0  # K, stability runs

# One attack setting changed at a time (adversarial strategy only; config section -> fields)
ABLATIONS: dict[str, dict[str, dict]] = {
    "attack_temperature_1000K": {"exploration": {"temperature": 1000.0}},
    "attack_temperature_500K": {"exploration": {"temperature": 500.0}},
    "seeds_lowest_energy": {"exploration": {"seeds": "lowest_energy"}},
}


def _oracle(labels: Labeller = XTB):
    return make_calculator(labels)[0]


def oracle_reference(
    n_frames: int,
    rng: np.random.Generator,
    labels: Labeller = XTB,
    steps_per_frame: int = 20,
    temperature: float = 1000.0,
) -> dict:
    """The oracle's minimum, planar transition state, barrier (eV) and frames at
    ``temperature`` K (default 1000; one every ``steps_per_frame`` Langevin steps of 0.5 fs)."""
    minimum = read(EXAMPLE.parent / "structures" / "nh3.xyz")
    minimum.calc = _oracle(labels)
    BFGS(minimum, logfile=None).run(fmax=1e-3)
    planar = minimum.copy()
    planar.positions[:, 2] = 0.0  # D3h start; the in-plane forces keep it planar
    planar.calc = _oracle(labels)
    BFGS(planar, logfile=None).run(fmax=1e-3)
    barrier = planar.get_potential_energy() - minimum.get_potential_energy()

    hot = minimum.copy()
    hot.calc = _oracle(labels)
    thermalize_momenta(hot, temperature_K=temperature, rng=rng)
    dynamics = Langevin(
        hot,
        0.5 * units.fs,
        temperature_K=temperature,
        friction=0.02 / units.fs,
        fixcm=False,
        rng=rng,
    )
    frames = []
    for _ in range(n_frames):
        dynamics.run(steps_per_frame)
        frames.append((hot.positions.copy(), hot.get_forces().copy()))
    return {
        "minimum": minimum.positions.copy(),
        "ts": planar.positions.copy(),
        "numbers": minimum.numbers.copy(),
        "barrier_eV": float(barrier),
        "frames": frames,
    }


def committee_metrics(
    committee: Committee,
    ref: dict,
    n_md: int,
    md_steps: int,
    rng: np.random.Generator,
    md_temperature: float = MD_TEMPERATURE,
) -> dict:
    """Barrier error (kcal/mol), force RMSE on the oracle frames (eV/Å), MD stability
    (``n_md`` runs of ``md_steps`` steps at ``md_temperature`` K)."""
    z = ref["numbers"]
    n = len(z)
    pair = committee.predict_arrays(
        np.tile(z, 2), np.concatenate([ref["minimum"], ref["ts"]]), np.array([n, n])
    )
    barrier = float(pair.energy_mean[1] - pair.energy_mean[0])
    positions = np.concatenate([p for p, _ in ref["frames"]])
    forces = np.concatenate([f for _, f in ref["frames"]])
    pred = committee.predict_arrays(
        np.tile(z, len(ref["frames"])), positions, np.full(len(ref["frames"]), n)
    )
    rmse = float(np.sqrt(np.mean((pred.forces_mean - forces) ** 2)))
    out = {
        "barrier_eV": barrier,
        "barrier_error_kcal_mol": abs(barrier - ref["barrier_eV"]) / KCAL_PER_MOL,
        "force_rmse_1000K": rmse,
    }
    if n_md == 0:
        return out
    seeds = Seeds(
        np.tile(z, n_md),
        np.tile(ref["minimum"], (n_md, 1)),
        np.full(n_md, n),
        np.zeros((n_md, 3, 3)),
        np.zeros((n_md, 3), dtype=bool),
        np.arange(n_md),
    )
    md = CommitteeMDSettings(
        temperature=md_temperature,
        timestep=0.5,
        n_steps=md_steps,
        trust_mode="fixed",
        trust_lower=0.0,
        trust_upper=1e9,
    )
    state = None
    for state in icommittee_md(committee, seeds, md, rng):  # noqa: B007  (the last state)
        pass
    return {**out, "md_stable_fraction": 1.0 - len(state.stopped) / n_md}


def with_overrides(config: RunConfig, overrides: dict[str, dict] | None) -> RunConfig:
    """``config`` with the fields of some sections replaced (config section -> fields);
    a section is a pydantic model or a frozen dataclass."""

    def changed(section, fields: dict):
        return (
            section.model_copy(update=fields)
            if hasattr(section, "model_copy")
            else replace(section, **fields)
        )

    return config.model_copy(
        update={
            key: changed(getattr(config, key), fields) for key, fields in (overrides or {}).items()
        }
    )


def _config(
    strategy: str,
    seed: int,
    root: Path,
    quick: bool,
    labels_per_generation: int,
    generations: int,
    labels: Labeller = XTB,
    name: str | None = None,
    overrides: dict[str, dict] | None = None,
) -> RunConfig:
    base = validate_config(EXAMPLE, output_dir=root)
    training = replace(
        base.training, max_epochs=80 if quick else 300, warm_start_epochs=30 if quick else 120
    )
    config = base.exploring(strategy).model_copy(
        update={
            "system": base.system.model_copy(update={"name": f"{name or strategy}-{seed}"}),
            "labels": labels,
            "committee": base.committee.model_copy(
                update={"seed": seed, "n_members": 3 if quick else 4}
            ),
            "initial_data": base.initial_data.model_copy(update={"seed": seed}),
            "training": training,
            "selection": replace(base.selection, max_selected=labels_per_generation),
            "budget": base.budget.model_copy(update={"max_generations": generations}),
        }
    )
    return with_overrides(config, overrides)


def measure(ref: dict, n_md: int, md_steps: int, seed: int) -> Measure:
    """The metrics of :func:`committee_metrics` for :func:`benchmarks.measured_run.measured_run`, with
    MD velocities seeded by the committee seed and generation."""
    return lambda committee, g: committee_metrics(
        committee, ref, n_md, md_steps, np.random.default_rng([seed, g])
    )


def _labels_to_reach(rows: list[dict], key: str, target: float) -> int | None:
    return next((r["n_labels"] for r in rows if r[key] <= target), None)


def summarise(runs: dict[str, dict[int, list[dict]]], rmse_target: float) -> dict:
    out = {}
    for strategy, by_seed in runs.items():
        finals = [rows[-1] for rows in by_seed.values()]
        entry = {}
        for key in ("barrier_error_kcal_mol", "force_rmse_1000K", "md_stable_fraction", "n_labels"):
            if key not in finals[0]:
                continue
            values = np.array([f[key] for f in finals], dtype=float)
            entry[f"final_{key}_mean"] = float(values.mean())
            entry[f"final_{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        entry["labels_to_barrier_within_1_kcal_mol"] = {
            seed: _labels_to_reach(rows, "barrier_error_kcal_mol", 1.0)
            for seed, rows in by_seed.items()
        }
        entry["labels_to_force_rmse_target"] = {
            seed: _labels_to_reach(rows, "force_rmse_1000K", rmse_target)
            for seed, rows in by_seed.items()
        }
        out[strategy] = entry
    return out


def _print(name: str, seed: int, last: dict) -> None:
    stable = f"  MD stable {last['md_stable_fraction']:.2f}" if "md_stable_fraction" in last else ""
    print(
        f"{name:12s} seed {seed}: {last['n_labels']:3d} labels  barrier error "
        f"{last['barrier_error_kcal_mol']:6.2f} kcal/mol  force RMSE "
        f"{last['force_rmse_1000K']:.3f} eV/Å{stable}",
        flush=True,
    )


def run(
    seeds: list[int],
    generations: int,
    labels_per_generation: int,
    quick: bool,
    rmse_target: float = 0.1,
    n_frames: int = 20,
    n_md: int = 16,
    md_steps: int = 1000,
    strategies: tuple[str, ...] = STRATEGIES,
    root: Path | None = None,
    ablations: dict[str, dict[str, dict]] | None = None,
) -> dict:
    """Every strategy for every seed, then each ablation of the adversarial strategy
    (without the stability runs)."""
    torch.set_num_threads(1)
    ref = oracle_reference(n_frames, np.random.default_rng(0))
    runs: dict[str, dict[int, list[dict]]] = {}
    ablated: dict[str, dict[int, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="advloop-bench-") as tmp:
        base = Path(root or tmp)
        for strategy in strategies:
            for seed in seeds:
                config = _config(strategy, seed, base, quick, labels_per_generation, generations)
                runs.setdefault(strategy, {})[seed] = rows = measured_run(
                    config, measure(ref, n_md, md_steps, seed)
                )
                _print(strategy, seed, rows[-1])
        for name, overrides in (ablations or {}).items():
            for seed in seeds:
                config = _config(
                    "adversarial",
                    seed,
                    base,
                    quick,
                    labels_per_generation,
                    generations,
                    name=name,
                    overrides=overrides,
                )
                ablated.setdefault(name, {})[seed] = rows = measured_run(
                    config, measure(ref, 0, 0, seed)
                )
                _print(name, seed, rows[-1])
    return {
        "oracle": {
            "method": "GFN2-xTB (tblite)",
            "barrier_eV": ref["barrier_eV"],
            "barrier_kcal_mol": ref["barrier_eV"] / KCAL_PER_MOL,
            "trajectory_frames": n_frames,
            "trajectory_temperature_K": 1000.0,
        },
        "settings": {
            "seeds": seeds,
            "generations": generations,
            "labels_per_generation": labels_per_generation,
            "quick": quick,
            "force_rmse_target": rmse_target,
            "md_runs": n_md,
            "md_steps": md_steps,
            "md_temperature_K": MD_TEMPERATURE,
            "md_timestep_fs": 0.5,
        },
        "runs": {s: {str(k): v for k, v in by_seed.items()} for s, by_seed in runs.items()},
        "summary": summarise(runs, rmse_target),
        "ablations": {
            name: {
                "changed": ablations[name],
                "runs": {str(k): v for k, v in by_seed.items()},
                "summary": summarise({name: by_seed}, rmse_target)[name],
            }
            for name, by_seed in ablated.items()
        },
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="one seed, two generations, small committee"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    if args.quick:
        results = run(
            [0],
            generations=2,
            labels_per_generation=4,
            quick=True,
            n_frames=10,
            n_md=4,
            md_steps=100,
        )
    else:
        results = run(
            [0, 1, 2], generations=5, labels_per_generation=8, quick=False, ablations=ABLATIONS
        )
    header = record_header(
        "benchmarks.ammonia_xtb",
        argv,
        ("schnetpack", "tblite", "ase"),
        args.quick,
        time.perf_counter() - t0,
    )
    record = {**header, **results}
    return write_record(args.output, record)


if __name__ == "__main__":
    main()
