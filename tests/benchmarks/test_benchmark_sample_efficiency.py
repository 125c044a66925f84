"""`python -m benchmarks.sample_efficiency`: the summary computed from learning curves as
its docstring defines it, and the quick mode run from nothing through the production loop
(GFN2-xTB labels) with every field of the machine-readable summary."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks.sample_efficiency import (
    ABLATIONS,
    AMMONIA,
    BASELINE,
    STRATEGIES,
    main,
    markdown_table,
    run,
    strategy_config,
    summarise,
)


def _rows(curve: list[tuple[int, float, float]]) -> list[dict]:
    return [
        {"explored_labels": n, "barrier_error_kcal_mol": e, "md_stable_fraction_1000K": s}
        for n, e, s in curve
    ]


def test_summary_takes_committee_md_final_value_as_the_target():
    md = {
        0: _rows([(0, 3.0, 0.5), (8, 2.0, 0.6), (16, 1.0, 0.8)]),
        1: _rows([(0, 3.0, 0.5), (8, 1.5, 0.7), (16, 1.0, 0.8)]),
    }
    fast = {  # reaches MD's final values with half the labels
        0: _rows([(0, 3.0, 0.5), (8, 1.0, 0.8), (16, 0.5, 0.9)]),
        1: _rows([(0, 3.0, 0.5), (8, 0.9, 0.85), (16, 0.5, 0.9)]),
    }
    slow = {  # never gets there within the budget
        0: _rows([(0, 3.0, 0.5), (8, 2.5, 0.5), (16, 2.0, 0.6)]),
        1: _rows([(0, 3.0, 0.5), (8, 2.5, 0.5), (16, 2.0, 0.6)]),
    }
    out = summarise(
        AMMONIA, {"md": md, "adversarial": fast, "random": slow}, 16, np.random.default_rng(0), 500
    )
    barrier = out["barrier_error_kcal_mol"]
    assert barrier["kind"] == "rare_event" and barrier["target"] == pytest.approx(1.0)
    assert barrier["seeds"] == [0, 1] and barrier["max_explored_labels"] == 16
    adv = barrier["strategies"]["adversarial"]
    assert adv["labels_to_target"] == [8, 8]
    assert adv["ratio_to_md"] == pytest.approx(0.5)
    assert adv["ratio_to_md_ci95"] == pytest.approx([0.5, 0.5])
    assert adv["ratio_bound"] == "estimate"
    assert adv["at_md_labels_minus_md"] == pytest.approx(-0.5)  # 0.5 against 1.0 at 16
    rnd = barrier["strategies"]["random"]
    assert rnd["labels_to_target"] == [None, None]
    assert rnd["ratio_bound"] == "lower_bound" and rnd["ratio_to_md"] == pytest.approx(1.0)
    stable = out["md_stable_fraction_1000K"]
    assert stable["kind"] == "stability" and stable["higher_is_better"]
    assert stable["target"] == pytest.approx(0.8)
    assert stable["strategies"]["adversarial"]["labels_to_target"] == [8, 8]
    # a metric a run did not measure is left out, not invented
    assert "force_rmse_1000K" not in out
    table = markdown_table({"ammonia_xtb": out})
    row = (
        "| adversarial | 0.5 (0.5–0.5); MD 1 | 8, 8 (MD: 16, 16) | 0.5 (0.5–0.5) "
        "| -0.5 (-0.5–-0.5) | -0.5 (-0.5–-0.5) |"
    )
    assert row in table
    assert "| random |" in table and "lower_bound" in table


def test_an_md_run_stopped_early_is_compared_where_it_ended(tmp_path):
    md = {  # seed 1's MD run was ended by the stop rule after 8 labels
        0: _rows([(0, 3.0, 0.5), (8, 2.0, 0.6), (16, 1.0, 0.8)]),
        1: _rows([(0, 3.0, 0.5), (8, 1.5, 0.7)]),
    }
    other = {
        0: _rows([(0, 3.0, 0.5), (8, 1.8, 0.6), (16, 0.8, 0.8)]),
        1: _rows([(0, 3.0, 0.5), (8, 1.0, 0.7), (16, 0.2, 0.9)]),
    }
    out = summarise(AMMONIA, {"md": md, "adversarial": other}, 16, np.random.default_rng(0), 200)
    adv = out["barrier_error_kcal_mol"]["strategies"]["adversarial"]
    assert out["barrier_error_kcal_mol"]["compared_at_labels"] == 8
    # at 8 labels for both seeds: (1.8 - 2.0 + 1.0 - 1.5) / 2
    assert adv["at_md_labels_minus_md"] == pytest.approx(-0.35)
    # seed 0 at 16 (0.8 - 1.0), seed 1 at its MD's 8 (1.0 - 1.5)
    assert adv["at_own_md_labels_minus_md"] == pytest.approx(-0.35)
    other[0] = _rows([(0, 3.0, 0.5), (8, 1.8, 0.6), (16, 0.4, 0.8)])
    out = summarise(AMMONIA, {"md": md, "adversarial": other}, 16, np.random.default_rng(0), 200)
    adv = out["barrier_error_kcal_mol"]["strategies"]["adversarial"]
    assert adv["at_md_labels_minus_md"] == pytest.approx(-0.35)  # 8 labels: unchanged
    assert adv["at_own_md_labels_minus_md"] == pytest.approx(-0.55)  # (-0.6 - 0.5) / 2

    # the same summary again from a written record, nothing run
    record = {
        "settings": {"generations": 2, "labels_per_generation": 8},
        "systems": {
            "ammonia_xtb": {
                "runs": {
                    name: {str(s): {"rows": rows} for s, rows in by_seed.items()}
                    for name, by_seed in {"md": md, "adversarial": other}.items()
                }
            }
        },
    }
    source = tmp_path / "record.json"
    source.write_text(json.dumps(record))
    again = main(["--summarise", str(source), "--output", str(tmp_path / "again.json")])
    entry = again["summary"]["ammonia_xtb"]["barrier_error_kcal_mol"]["strategies"]
    assert entry["adversarial"]["at_own_md_labels_minus_md"] == pytest.approx(-0.55)
    assert json.loads((tmp_path / "again.json").read_text())["resummarised"].endswith(str(source))


def test_every_strategy_explores_and_md_is_the_baseline():
    assert BASELINE in STRATEGIES and "adversarial" in STRATEGIES


def test_each_ablation_sets_exactly_one_part_of_the_default_back(tmp_path):
    base = AMMONIA.config({}, 0, tmp_path, True, 3, 2)
    default = strategy_config(base, AMMONIA, "adversarial", 0)

    def parts(config):
        return {
            **{f"exploration.{k}": v for k, v in config.exploration.__dict__.items()},
            **{f"selection.{k}": v for k, v in config.selection.__dict__.items()},
        }

    changed = {}
    for name in ABLATIONS:
        ablated = parts(strategy_config(base, AMMONIA, name, 0))
        changed[name] = {k for k, v in parts(default).items() if ablated[k] != v}
    assert changed == {
        "adversarial_endpoints": {"exploration.pool_every"},
        "adversarial_random_seeds": {"exploration.seeds"},
        "adversarial_threshold": {"selection.method"},
        "adversarial_unweighted": {"selection.weighting"},
    }
    with pytest.raises(ValueError, match="unknown strategies"):
        run(["ammonia_xtb"], [0], 1, 1, True, ("md", "adversarial_typo"), 1)


@pytest.mark.slow
def test_quick_mode_reports_every_field(prefect_backend, tmp_path):
    out = tmp_path / "sample_efficiency.json"
    record = main(["--quick", "--systems", "ammonia_xtb", "--output", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert not out.with_suffix(".partial").exists()  # the seeds' partial records, merged
    assert record["default_strategy"] == "adversarial"
    summary = record["summary"]["ammonia_xtb"]
    assert set(summary) == set(AMMONIA.metrics)
    for entry in summary.values():
        assert entry["kind"] in ("thermal", "stability", "rare_event")
        assert math.isfinite(entry["target"]) and entry["seeds"] == [0]
        assert entry["max_explored_labels"] == 6
        assert set(entry["strategies"]) == set(STRATEGIES)
        for s in entry["strategies"].values():
            assert len(s["labels_to_target"]) == 1
            assert {"ratio_to_md", "ratio_to_md_ci95"} <= set(s)
    runs = record["systems"]["ammonia_xtb"]["runs"]
    first = {name: runs[name]["0"]["rows"][0] for name in STRATEGIES}
    # one generation 0 for every strategy of a seed
    assert len({row["force_rmse_1000K"] for row in first.values()}) == 1
    for name in STRATEGIES:
        rows = runs[name]["0"]["rows"]
        assert rows[0]["explored_labels"] == 0 and rows[-1]["explored_labels"] > 0
        # every strategy spends its budget: no stop rule ends a learning curve early
        assert rows[-1]["generation"] == 2, (name, rows[-1].get("stop_reason"))
        assert "initial" in runs[name]["0"]["labelled_energy_per_atom_q10_q50_q90"]
    assert set(record["cost"]["ammonia_xtb"]) == set(STRATEGIES)
    # the hybrid's labels, counted by the strategy that proposed them
    hybrid = runs["hybrid"]["0"]["rows"][0]
    assert set(hybrid["selected_sources"]) == {"adversarial", "md"}
    assert sum(hybrid["selected_sources"].values()) == hybrid["n_selected"] > 0


def test_seed_groups_merge_into_one_record(tmp_path):
    """Seeds run in separate sittings (their partial records) give the record one run
    of all of them would: the same runs per seed and a summary over every seed."""
    from benchmarks.sample_efficiency import merge_partial

    def rows(seed: int, strategy: str) -> list[dict]:
        # a learning curve per seed and strategy: md's reaches 0.1 at 6 labels
        offset = 0.02 * seed + (0.0 if strategy == "md" else 0.01)
        return [
            {
                "generation": g,
                "n_labels": 4 + 3 * g,
                "explored_labels": 3 * g,
                "force_rmse_1000K": 0.3 - 0.1 * g + offset,
                **dict.fromkeys(
                    ("seconds_training", "seconds_exploration", "seconds_labelling"), 1.0
                ),
            }
            for g in range(3)
        ]

    files = []
    for seed in (0, 1, 2):
        path = tmp_path / f"ammonia_xtb-seed{seed}.json"
        runs = {
            st: {"rows": rows(seed, st), "labelled_energy_per_atom_q10_q50_q90": {}, "seconds": 1.0}
            for st in ("adversarial", "md")
        }
        path.write_text(json.dumps({"system": "ammonia_xtb", "seed": seed, "runs": runs}))
        files.append(path)
    merged = merge_partial(files, generations=2, per_generation=3, n_boot=200)
    entry = merged["summary"]["ammonia_xtb"]["force_rmse_1000K"]
    assert entry["seeds"] == [0, 1, 2]
    assert set(merged["systems"]["ammonia_xtb"]["runs"]["md"]) == {"0", "1", "2"}
    assert len(entry["strategies"]["adversarial"]["labels_to_target"]) == 3
    with pytest.raises(ValueError, match="other strategies"):
        other = json.loads(files[0].read_text())
        other["runs"].pop("adversarial")
        other["seed"] = 3
        (tmp_path / "x.json").write_text(json.dumps(other))
        merge_partial([*files, tmp_path / "x.json"], 2, 3, n_boot=200)
