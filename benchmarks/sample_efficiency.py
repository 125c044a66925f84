"""Labels to a robust potential: advloop's exploration against committee MD and random
displacement, through the production loop, side by side.

Run ``python -m benchmarks.sample_efficiency [--systems ammonia_xtb,malonaldehyde_xtb]
[--strategies adversarial,hybrid,md,...] [--seeds 5] [--generations 12]
[--labels-per-generation 8] [--jobs 2] [--no-stability] [--quick] [--output PATH]``;
writes ``benchmarks/results/sample_efficiency.json``. ``--strategies`` also takes the
ablations of the default (:data:`ABLATIONS`: one part of it at a time set back to the
published attack's). Each seed's runs are also kept as they finish, in
``<output>.partial/<system>-seed<k>.json``: a benchmark longer than one sitting runs in
seed groups (``--seed-list 0,1``, then ``--seed-list 2,3,4``, same settings), and
``--merge PARTIAL...`` writes the record of all of them.

For every system and seed, generation 0 (the initial labels and its committee) is made
once and shared by every strategy (:func:`benchmarks.zeolite_xtb.share_generation_zero`),
so that strategies differ only in what they explore. Each strategy then runs advloop's own
loop (:func:`benchmarks.measured_run.measured_run`; its stop rule set so that every
strategy spends its budget, the stop rules replayed on the rows afterwards by
:mod:`benchmarks.stop_rules`) with the same label budget per generation and the same batch selection (the ``selection`` section of
the config, :data:`SELECTION`); only the exploration differs (:data:`STRATEGIES`). After
each generation's training the committee is measured against the oracle (GFN2-xTB):

- ``rare_event``: the barrier error (kcal/mol) of the system's transition (NH3 inversion,
  the malonaldehyde proton transfer);
- ``thermal``: force RMSE (eV/Å) on oracle MD frames at the application temperature and
  at 1.5 times it;
- ``stability``: the fraction of committee-driven MD runs that stay physical at and above
  the application temperature (20 runs each, so the fraction moves in steps of 0.05);

and the energies of what each strategy labelled are kept (per generation: quantiles of
the labelled structures' energy above the oracle minimum, eV per atom).

The summary (``summary.<system>.<metric>``) takes committee MD's final value (mean over
seeds) as the target, and gives for every strategy the explored labels each seed needed
to reach it (null: never, within ``max_explored_labels``), the ratio of the mean to
committee MD's (below 1: fewer labels) with a paired 95 % bootstrap interval over seeds
(:func:`benchmarks.stats.bootstrap_ratio_ci`; a run that never reaches the target is
censored at the budget and the ratio says which bound it is), and the metric at committee
MD's final label count against MD's (:func:`benchmarks.stats.difference_at_labels`).
``default_strategy`` names the strategy whose exploration the config defaults use.

``--quick`` (about two minutes) runs in CI to keep the code working; its numbers are
not results.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from ase import Atoms

from advloop.calculators.factory import TBLiteLabels, make_calculator
from advloop.flows.config import RunConfig
from advloop.flows.run_folder import RunLayout
from advloop.potentials.committee import Committee
from advloop.potentials.dataset import Dataset
from benchmarks import ammonia_xtb, malonaldehyde_xtb, stats
from benchmarks.committee import record_header, write_record
from benchmarks.measured_run import frames_force_rmse, measured_run
from benchmarks.zeolite_xtb import share_generation_zero

RESULTS = Path(__file__).parent / "results" / "sample_efficiency.json"
MetricKind = Literal["thermal", "stability", "rare_event"]

#: The strategy whose exploration advloop's defaults use.
DEFAULT_STRATEGY = "adversarial"

#: The batch selection every strategy gets (config ``selection`` fields).
SELECTION = {"method": "diverse", "weighting": "element", "percentile": 50.0}


#: Committee MD as DP-GEN2 users run it: at 1.5 × the application temperature, the upper
#: trust level a multiple of the committee's own training-set deviation, and DP-GEN2's
#: adaptive lower level (``candidate_fraction``): the most deviating tenth of the sampled
#: frames are candidates, about four per label for the shared selection, so that MD
#: always proposes geometries and spends its budget like the other strategies (with the
#: training-set lower level alone it found none within 10-34 labels on 3 of 5 ammonia
#: seeds, and its runs ended there).
def _md(t: float) -> dict:
    return {"temperature": 1.5 * t, "trust_mode": "adaptive", "candidate_fraction": 0.1}


#: Strategy -> (exploration kind, its settings beyond the system's, selection overrides).
#: ``adversarial`` is advloop's default exploration; ``adversarial_paper`` the attack as
#: published (endpoints only, the most uncertain first, random seeds); ``md`` committee MD
#: as DP-GEN2 and aims-PAX users run it (:func:`_md`); ``random`` Gaussian displacements
#: with an energy cap; ``hybrid`` the default attack and that MD from the same seeds,
#: their candidates in one selection.
STRATEGIES: dict[str, tuple[str, Callable[[float], dict], dict]] = {
    "adversarial": ("adversarial", lambda t: {"pool_every": 10, "seeds": "mixed"}, {}),
    "adversarial_paper": (
        "adversarial",
        lambda t: {"pool_every": 0, "seeds": "random"},
        {"method": "threshold", "weighting": "none"},
    ),
    "md": ("md", _md, {}),
    # the default attack and the MD above, from the same seeds, in one selection
    "hybrid": ("hybrid", lambda t: {"md": _md(t)}, {}),
    "random": ("random", lambda t: {"std": 0.1, "max_energy_rise": 0.5}, {}),
}
BASELINE = "md"

#: The default attack with one of its parts taken back to the published attack's
#: (``--strategies`` takes these names too): which part of the default does the work.
ABLATIONS: dict[str, tuple[str, Callable[[float], dict], dict]] = {
    "adversarial_endpoints": ("adversarial", lambda t: {"pool_every": 0, "seeds": "mixed"}, {}),
    "adversarial_random_seeds": (
        "adversarial",
        lambda t: {"pool_every": 10, "seeds": "random"},
        {},
    ),
    "adversarial_threshold": (
        "adversarial",
        lambda t: {"pool_every": 10, "seeds": "mixed"},
        {"method": "threshold"},
    ),
    "adversarial_unweighted": (
        "adversarial",
        lambda t: {"pool_every": 10, "seeds": "mixed"},
        {"weighting": "none"},
    ),
}
_ALL_STRATEGIES = {**STRATEGIES, **ABLATIONS}


@dataclass(frozen=True)
class Metric:
    kind: MetricKind
    unit: str
    higher_is_better: bool = False


@dataclass(frozen=True)
class System:
    """A benchmark system: its application temperature (K), how to make its oracle
    reference and each strategy's config, and how to measure a committee."""

    name: str
    temperature: float
    metrics: dict[str, Metric]
    reference: Callable[[bool], dict]
    config: Callable[[dict, int, Path, bool, int, int], RunConfig]
    # (committee, reference, quick, rng, stability) -> metrics; without stability, the
    # committee-driven MD runs (the costliest measurement) are left out
    measure: Callable[[Committee, dict, bool, np.random.Generator, bool], dict]


# -- ammonia (GFN2-xTB) ----------------------------------------------------------------

_NH3_T = 1000.0  # K, the application temperature of the ammonia benchmark


def _ammonia_reference(quick: bool) -> dict:
    n = 6 if quick else 40
    ref = ammonia_xtb.oracle_reference(n, np.random.default_rng(0), temperature=_NH3_T)
    hot = ammonia_xtb.oracle_reference(n, np.random.default_rng(1), temperature=1.5 * _NH3_T)
    return {
        **ref,
        "frames_by_T": {_NH3_T: ref["frames"], 1.5 * _NH3_T: hot["frames"]},
        "minimum_energy_eV": _oracle_energy(ref["numbers"], ref["minimum"]),
    }


def _oracle_energy(numbers: np.ndarray, positions: np.ndarray) -> float:
    atoms = Atoms(numbers, positions=positions)
    atoms.calc = make_calculator(TBLiteLabels())[0]
    return float(atoms.get_potential_energy())


def _ammonia_config(
    ref: dict, seed: int, root: Path, quick: bool, per_generation: int, generations: int
) -> RunConfig:
    config = ammonia_xtb._config(
        "adversarial", seed, root, quick, per_generation, generations, name="base"
    )
    return config.model_copy(
        update={
            "system": config.system.model_copy(update={"temperature": _NH3_T}),
            "budget": config.budget.model_copy(update={"max_labels": per_generation * generations}),
        }
    )


def _ammonia_measure(committee: Committee, ref: dict, quick: bool, rng, stability: bool) -> dict:
    n_md, md_steps = (4, 100) if quick else (20, 1000)
    metrics = {
        "barrier_error_kcal_mol": ammonia_xtb.committee_metrics(committee, ref, 0, 0, rng)[
            "barrier_error_kcal_mol"
        ]
    }
    for t, frames in ref["frames_by_T"].items():
        metrics[f"force_rmse_{t:g}K"] = frames_force_rmse(committee, ref["numbers"], frames)
    for t in (_NH3_T, 2.5 * _NH3_T) if stability else ():
        out = ammonia_xtb.committee_metrics(committee, ref, n_md, md_steps, rng, md_temperature=t)
        metrics[f"md_stable_fraction_{t:g}K"] = out["md_stable_fraction"]
    return metrics


AMMONIA = System(
    name="ammonia_xtb",
    temperature=_NH3_T,
    metrics={
        "barrier_error_kcal_mol": Metric("rare_event", "kcal/mol"),
        f"force_rmse_{_NH3_T:g}K": Metric("thermal", "eV/Å"),
        f"force_rmse_{1.5 * _NH3_T:g}K": Metric("thermal", "eV/Å"),
        f"md_stable_fraction_{_NH3_T:g}K": Metric("stability", "fraction of runs", True),
        f"md_stable_fraction_{2.5 * _NH3_T:g}K": Metric("stability", "fraction of runs", True),
    },
    reference=_ammonia_reference,
    config=_ammonia_config,
    measure=_ammonia_measure,
)


# -- malonaldehyde (GFN2-xTB) ------------------------------------------------------------


_MAL_T = malonaldehyde_xtb.TEMPERATURE


def _malonaldehyde_sizes(quick: bool, per_generation: int = 8, generations: int = 4):
    base = malonaldehyde_xtb.QUICK if quick else malonaldehyde_xtb.FULL
    return replace(base, labels_per_generation=per_generation, generations=generations)


def _malonaldehyde_reference(quick: bool) -> dict:
    sizes = _malonaldehyde_sizes(quick)
    ref = malonaldehyde_xtb.oracle_reference(sizes, np.random.default_rng(0))
    folder = Path(tempfile.mkdtemp(prefix="advloop-malonaldehyde-"))
    return {
        **ref,
        "structure": str(malonaldehyde_xtb.write_structure(ref, folder)),
        "minimum_energy_eV": _oracle_energy(ref["numbers"], ref["minimum"]),
    }


def _malonaldehyde_config(
    ref: dict, seed: int, root: Path, quick: bool, per_generation: int, generations: int
) -> RunConfig:
    sizes = _malonaldehyde_sizes(quick, per_generation, generations)
    config = malonaldehyde_xtb.make_config(
        "adversarial", seed, root, sizes, Path(ref["structure"]), name="base"
    )
    return config.model_copy(
        update={"system": config.system.model_copy(update={"temperature": _MAL_T})}
    )


def _malonaldehyde_measure(
    committee: Committee, ref: dict, quick: bool, rng, stability: bool
) -> dict:
    sizes = _malonaldehyde_sizes(quick)
    sizes = sizes if stability else replace(sizes, n_md=0)
    out = malonaldehyde_xtb.committee_metrics(committee, ref, sizes, rng)
    return {k: v for k, v in out.items() if not k.startswith(("md_survival", "barrier_eV"))}


MALONALDEHYDE = System(
    name="malonaldehyde_xtb",
    temperature=_MAL_T,
    metrics={
        "barrier_error_kcal_mol": Metric("rare_event", "kcal/mol"),
        **{f"force_rmse_{t:g}K": Metric("thermal", "eV/Å") for t in malonaldehyde_xtb.TEMPERATURES},
        **{
            f"md_stable_fraction_{t:g}K": Metric("stability", "fraction of runs", True)
            for t in malonaldehyde_xtb.TEMPERATURES
        },
    },
    reference=_malonaldehyde_reference,
    config=_malonaldehyde_config,
    measure=_malonaldehyde_measure,
)

SYSTEMS = {s.name: s for s in (AMMONIA, MALONALDEHYDE)}


def strategy_config(base: RunConfig, system: System, strategy: str, seed: int) -> RunConfig:
    """``base`` exploring as ``strategy`` does, with the shared selection, named
    ``<system>-<strategy>-<seed>``."""
    kind, settings, selection = _ALL_STRATEGIES[strategy]
    config = base.exploring(kind, **settings(system.temperature))
    config = config.model_copy(
        update={
            "system": config.system.model_copy(update={"name": f"{strategy}-{seed}"}),
            "selection": replace(config.selection, **{**SELECTION, **selection}),
            # every strategy spends its budget: the learning curves go on to the same
            # label count, and the stop rules are replayed on them afterwards
            # (benchmarks.stop_rules)
            "convergence": config.convergence.model_copy(
                update={"force_std_threshold": 1e-9, "min_candidates": 0}
            ),
        }
    )
    return RunConfig.model_validate(config.model_dump())


def _labelled_energies(config: RunConfig, e_min_per_atom: float) -> dict[str, list[float]]:
    """Per generation: the 10/50/90 % quantiles of the energy per atom above the oracle
    minimum (eV/atom) of the structures that generation labelled."""
    dataset = Dataset(RunLayout(config.run_dir()).dataset)
    data = dataset.arrays()
    per_atom = data.energy / data.n_atoms - e_min_per_atom
    out: dict[str, list[float]] = {}
    for k, p in enumerate(dataset.provenance()):
        key = "initial" if p.strategy == "initial" else str(p.generation)
        out.setdefault(key, []).append(float(per_atom[k]))
    return {k: [float(q) for q in np.quantile(v, [0.1, 0.5, 0.9])] for k, v in out.items()}


def run_seed(
    system_name: str,
    seed: int,
    strategies: tuple[str, ...],
    quick: bool,
    per_gen: int,
    gens: int,
    root: str,
    ref: dict,
    stability: bool = True,
) -> dict:
    """Every strategy of one seed of one system, from one shared generation 0."""
    torch.set_num_threads(1)
    system = SYSTEMS[system_name]
    folder = Path(root) / system.name
    base = system.config(ref, seed, folder, quick, per_gen, gens)

    def measure(committee: Committee, g: int) -> dict:
        return system.measure(committee, ref, quick, np.random.default_rng([seed, g]), stability)

    e_min = _oracle_minimum_per_atom(ref)
    configs = {name: strategy_config(base, system, name, seed) for name in strategies}
    first, *others = configs.values()
    # generation 0 alone (the loop with no generation to explore), then shared
    zero = first.model_copy(
        update={"budget": first.budget.model_copy(update={"max_generations": 0})}
    )
    [first_row] = measured_run(zero, measure)
    first_row.pop("stop_reason", None)  # the zero run's, not a strategy's
    for config in others:
        share_generation_zero(first, config)
    out: dict[str, dict] = {}
    for strategy, config in configs.items():
        t0 = time.perf_counter()
        rows = measured_run(config, measure, first_row)
        initial = rows[0]["n_labels"]
        for row in rows:
            row["explored_labels"] = row["n_labels"] - initial
        out[strategy] = {
            "rows": rows,
            "labelled_energy_per_atom_q10_q50_q90": _labelled_energies(config, e_min),
            "seconds": time.perf_counter() - t0,
        }
        last = rows[-1]
        print(
            f"{system.name} {strategy:18s} seed {seed}: {last['explored_labels']:3d} labels "
            + "  ".join(f"{k} {last[k]:.3g}" for k in system.metrics if k in last),
            flush=True,
        )
    return out


def _oracle_minimum_per_atom(ref: dict) -> float:
    return float(ref.get("minimum_energy_eV", 0.0)) / len(ref["numbers"])


def summarise(
    system: System,
    runs: dict[str, dict[int, list[dict]]],
    budget: int,
    rng: np.random.Generator,
    n_boot: int = 10_000,
) -> dict:
    """``summary.<system>`` of the module docstring from per-strategy, per-seed rows."""
    out: dict[str, dict] = {}
    seeds = sorted(next(iter(runs.values())))
    md = runs[BASELINE]
    for key, metric in system.metrics.items():
        if any(key not in rows[-1] for by_seed in runs.values() for rows in by_seed.values()):
            continue
        target = float(np.mean([md[s][-1][key] for s in seeds]))

        def curve(rows: list[dict], key=key) -> tuple[list[int], list[float]]:
            return [r["explored_labels"] for r in rows], [float(r[key]) for r in rows]

        to_target = {
            name: [
                stats.labels_to_target(*curve(by_seed[s]), target, metric.higher_is_better)
                for s in seeds
            ]
            for name, by_seed in runs.items()
        }
        md_labels = int(min(md[s][-1]["explored_labels"] for s in seeds))
        entry: dict = {
            "kind": metric.kind,
            "unit": metric.unit,
            "higher_is_better": metric.higher_is_better,
            "target": target,
            "seeds": seeds,
            "max_explored_labels": budget,
            "compared_at_labels": md_labels,
            "strategies": {},
        }
        for name, by_seed in runs.items():
            finals = [float(by_seed[s][-1][key]) for s in seeds]
            final = stats.bootstrap_mean_ci(finals, rng=rng, n_boot=n_boot)
            at = stats.difference_at_labels(
                [curve(by_seed[s]) for s in seeds],
                [curve(md[s]) for s in seeds],
                md_labels,
                rng=rng,
                n_boot=n_boot,
                paired=True,
            )
            # each seed at its own MD run's final label count (an MD run the stop rule
            # ended early is compared where it ended, not where the shortest one did)
            own = stats.difference_at_labels(
                [curve(by_seed[s]) for s in seeds],
                [curve(md[s]) for s in seeds],
                [md[s][-1]["explored_labels"] for s in seeds],
                rng=rng,
                n_boot=n_boot,
                paired=True,
            )
            strategy_entry = {
                "labels_to_target": to_target[name],
                "ratio_to_md": None,
                "ratio_to_md_ci95": None,
                "ratio_bound": None,
                "final_mean": final.estimate,
                "final_ci95": [final.low, final.high],
                "at_md_labels_minus_md": at.estimate,
                "at_md_labels_minus_md_ci95": [at.low, at.high],
                "at_own_md_labels_minus_md": own.estimate,
                "at_own_md_labels_minus_md_ci95": [own.low, own.high],
            }
            try:
                ratio = stats.bootstrap_ratio_ci(
                    to_target[name],
                    to_target[BASELINE],
                    budget,
                    rng=rng,
                    n_boot=n_boot,
                    paired=True,
                )
            except ValueError as err:  # MD at the target from generation 0 on: no ratio
                strategy_entry["ratio_note"] = str(err)
            else:
                strategy_entry.update(
                    ratio_to_md=ratio.estimate,
                    ratio_to_md_ci95=[ratio.low, ratio.high],
                    ratio_bound=ratio.bound,
                )
            entry["strategies"][name] = strategy_entry
        out[key] = entry
    return out


def cost(runs: dict[str, dict[int, list[dict]]]) -> dict:
    """Mean seconds per generation of training, exploration (with selection) and
    labelling, per strategy."""
    out = {}
    for name, by_seed in runs.items():
        rows = [r for seed_rows in by_seed.values() for r in seed_rows[1:]]
        out[name] = {
            k: float(np.mean([r[k] for r in rows])) if rows else None
            for k in ("seconds_training", "seconds_exploration", "seconds_labelling")
        }
    return out


def run(
    systems: list[str],
    seeds: list[int],
    generations: int,
    per_generation: int,
    quick: bool,
    strategies: tuple[str, ...] = tuple(STRATEGIES),
    jobs: int = 1,
    root: Path | None = None,
    n_boot: int = 10_000,
    stability: bool = True,
    partial: Path | None = None,
) -> dict:
    """Every strategy of every seed of every system; the record of the module docstring
    (without ``stability``, no stability metrics). With ``partial``, each seed's runs are
    also written there as they finish (``<system>-seed<k>.json``), so that a benchmark cut
    short keeps what it measured."""
    unknown = [s for s in strategies if s not in _ALL_STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}: choose from {list(_ALL_STRATEGIES)}")
    if BASELINE not in strategies:
        raise ValueError(f"the comparison needs the baseline strategy {BASELINE!r}")
    results: dict = {"systems": {}, "summary": {}, "cost": {}}
    with tempfile.TemporaryDirectory(prefix="advloop-efficiency-") as tmp:
        base = Path(root or tmp)
        for name in systems:
            system = SYSTEMS[name]
            ref = system.reference(quick)
            args = [
                (name, s, strategies, quick, per_generation, generations, str(base), ref, stability)
                for s in seeds
            ]
            per_seed = _run_seeds(args, jobs, partial)
            runs = {
                strategy: {s: out[strategy]["rows"] for s, out in zip(seeds, per_seed)}
                for strategy in strategies
            }
            results["systems"][name] = {
                "application_temperature_K": system.temperature,
                "runs": {
                    strategy: {
                        str(s): {
                            "rows": out[strategy]["rows"],
                            "labelled_energy_per_atom_q10_q50_q90": out[strategy][
                                "labelled_energy_per_atom_q10_q50_q90"
                            ],
                        }
                        for s, out in zip(seeds, per_seed)
                    }
                    for strategy in strategies
                },
            }
            results["summary"][name] = summarise(
                system, runs, per_generation * generations, np.random.default_rng(0), n_boot
            )
            results["cost"][name] = cost(runs)
    return results


def _run_seeds(args: list[tuple], jobs: int, partial: Path | None) -> list[dict]:
    """:func:`run_seed` of every argument tuple (``jobs`` at once), in their order;
    each written to ``partial`` as soon as it is done."""
    import json

    def keep(a: tuple, out: dict) -> dict:
        if partial is not None:
            partial.mkdir(parents=True, exist_ok=True)
            path = partial / f"{a[0]}-seed{a[1]}.json"
            path.write_text(json.dumps({"system": a[0], "seed": a[1], "runs": out}))
        return out

    if jobs == 1:
        return [keep(a, run_seed(*a)) for a in args]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_seed, *a): k for k, a in enumerate(args)}
        done: dict[int, dict] = {}
        for future in as_completed(futures):
            k = futures[future]
            done[k] = keep(args[k], future.result())
    return [done[k] for k in range(len(args))]


def merge_partial(
    files: list[Path], generations: int, per_generation: int, n_boot: int = 10_000
) -> dict:
    """The ``systems``, ``summary`` and ``cost`` of a record from seeds' partial records
    (``<system>-seed<k>.json``, as :func:`run` writes them with ``partial``), which may
    come from several invocations (each a group of seeds, with the same settings): a
    benchmark too long for one sitting, run seed group by seed group."""
    import json

    by_system: dict[str, dict[int, dict]] = {}
    for path in files:
        entry = json.loads(Path(path).read_text())
        by_system.setdefault(entry["system"], {})[int(entry["seed"])] = entry["runs"]
    results: dict = {"systems": {}, "summary": {}, "cost": {}}
    for name, per_seed in by_system.items():
        seeds = sorted(per_seed)
        strategies = list(per_seed[seeds[0]])
        if any(list(per_seed[s]) != strategies for s in seeds):
            raise ValueError(f"{name}: the seeds' partial records ran other strategies")
        runs = {st: {s: per_seed[s][st]["rows"] for s in seeds} for st in strategies}
        results["systems"][name] = {
            "application_temperature_K": SYSTEMS[name].temperature,
            "runs": {
                st: {
                    str(s): {
                        "rows": per_seed[s][st]["rows"],
                        "labelled_energy_per_atom_q10_q50_q90": per_seed[s][st][
                            "labelled_energy_per_atom_q10_q50_q90"
                        ],
                    }
                    for s in seeds
                }
                for st in strategies
            },
        }
        results["summary"][name] = summarise(
            SYSTEMS[name], runs, generations * per_generation, np.random.default_rng(0), n_boot
        )
        results["cost"][name] = cost(runs)
    return results


def resummarise(source: Path, output: Path, n_boot: int = 10_000) -> dict:
    """``source``'s record with its summary computed again from its runs' rows by this
    version of :func:`summarise` (the runs, settings and costs as they were)."""
    import json

    record = json.loads(source.read_text())
    settings = record["settings"]
    budget = settings["generations"] * settings["labels_per_generation"]
    summary = {}
    for name, entry in record["systems"].items():
        runs = {
            strategy: {int(s): run["rows"] for s, run in by_seed.items()}
            for strategy, by_seed in entry["runs"].items()
        }
        summary[name] = summarise(SYSTEMS[name], runs, budget, np.random.default_rng(0), n_boot)
    record["summary"] = summary
    record["resummarised"] = f"python -m benchmarks.sample_efficiency --summarise {source}"
    out = write_record(output, record)
    print(markdown_table(out["summary"]))
    return out


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:.{digits}g}"


def markdown_table(summary: dict) -> str:
    """The summary as the table of docs/benchmarks.md: per system, metric and strategy,
    the final value, labels to committee MD's final value per seed (— : not reached),
    the ratio to MD with its 95 % interval (and which bound it is), and the difference
    from MD at equal labels with its interval: at MD's smallest final label count, and at
    each seed's own MD final label count."""
    lines = [
        "| system | metric (target: MD final) | strategy | final (95 % CI) | labels to target "
        "| ratio to MD (95 % CI) | minus MD at equal labels (95 % CI) "
        "| minus MD at each seed's MD labels (95 % CI) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for system, metrics in summary.items():
        for key, entry in metrics.items():
            first = True
            for name, s in entry["strategies"].items():
                if name == BASELINE:
                    continue
                ratio = s["ratio_to_md"]
                ratio_text = (
                    f"{_fmt(ratio, 2)} ({_fmt(s['ratio_to_md_ci95'][0], 2)}–"
                    f"{_fmt(s['ratio_to_md_ci95'][1], 2)})"
                    + ("" if s["ratio_bound"] == "estimate" else f", {s['ratio_bound']}")
                    if ratio is not None
                    else "— (MD at target from generation 0)"
                )
                labels = ", ".join("—" if v is None else str(v) for v in s["labels_to_target"])
                md = entry["strategies"][BASELINE]
                lines.append(
                    f"| {system if first else ''} | {key} ({_fmt(entry['target'])}) | {name} "
                    f"| {_fmt(s['final_mean'])} ({_fmt(s['final_ci95'][0])}–"
                    f"{_fmt(s['final_ci95'][1])}); MD {_fmt(md['final_mean'])} | {labels} "
                    f"(MD: {', '.join('—' if v is None else str(v) for v in md['labels_to_target'])}) "
                    f"| {ratio_text} | {_fmt(s['at_md_labels_minus_md'])} "
                    f"({_fmt(s['at_md_labels_minus_md_ci95'][0])}–"
                    f"{_fmt(s['at_md_labels_minus_md_ci95'][1])}) "
                    f"| {_fmt(s['at_own_md_labels_minus_md'])} "
                    f"({_fmt(s['at_own_md_labels_minus_md_ci95'][0])}–"
                    f"{_fmt(s['at_own_md_labels_minus_md_ci95'][1])}) |"
                )
                first = False
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--seed-list",
        help="run these seeds only (e.g. 2,3,4): one group of a benchmark run in several "
        "sittings, whose partial records --merge puts together",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="PARTIAL",
        help="write the record of these seeds' partial records (<system>-seed<k>.json) "
        "to --output, with --generations, --labels-per-generation and --no-stability as "
        "they ran",
    )
    parser.add_argument("--generations", type=int, default=12)
    parser.add_argument("--labels-per-generation", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once (processes)")
    parser.add_argument("--quick", action="store_true", help="one seed, two small generations")
    parser.add_argument(
        "--no-stability",
        action="store_true",
        help="leave out the MD stability metrics (most of the measuring time), as an "
        "ablation of thermal and rare-event accuracy may",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--summarise",
        type=Path,
        metavar="RECORD",
        help="recompute the summary of an earlier record's runs (nothing is run again) "
        "and write the record with it to --output",
    )
    args = parser.parse_args(argv)
    if args.summarise is not None:
        return resummarise(args.summarise, args.output)
    t0 = time.perf_counter()
    seeds = [0] if args.quick else list(range(args.seeds))
    if args.seed_list:
        seeds = [int(k) for k in args.seed_list.split(",")]
    generations = 2 if args.quick else args.generations
    per_generation = 3 if args.quick else args.labels_per_generation
    if args.merge:
        results = merge_partial(args.merge, generations, per_generation)
        seeds = sorted(
            {
                int(k)
                for entry in results["systems"].values()
                for k in next(iter(entry["runs"].values()))
            }
        )
        args.strategies = ",".join(next(iter(results["systems"].values()))["runs"])
        args.systems = ",".join(results["systems"])
    else:
        results = run(
            args.systems.split(","),
            seeds,
            generations,
            per_generation,
            args.quick,
            tuple(args.strategies.split(",")),
            args.jobs,
            n_boot=200 if args.quick else 10_000,
            stability=not args.no_stability,
            partial=args.output.with_suffix(".partial"),
        )
    header = record_header(
        "benchmarks.sample_efficiency",
        argv,
        ("schnetpack", "tblite", "ase"),
        args.quick,
        time.perf_counter() - t0,
    )
    record = {
        **header,
        "default_strategy": DEFAULT_STRATEGY,
        "settings": {
            "seeds": seeds,
            "generations": generations,
            "labels_per_generation": per_generation,
            "stability": not args.no_stability,
            "strategies": {
                name: {
                    "exploration": kind,
                    "settings": {
                        s: settings(SYSTEMS[s].temperature) for s in args.systems.split(",")
                    },
                    "selection": {**SELECTION, **selection},
                }
                for name, (kind, settings, selection) in _ALL_STRATEGIES.items()
                if name in args.strategies.split(",")
            },
        },
        **results,
    }
    if args.merge:
        record["merged_from"] = [str(path) for path in args.merge]
    out = write_record(args.output, record)
    if not args.merge:  # the seeds' partial records are in the record now
        shutil.rmtree(args.output.with_suffix(".partial"), ignore_errors=True)
    print(markdown_table(record["summary"]))
    return out


if __name__ == "__main__":
    main()
