"""The convergence policy and budgets as plain functions (no Prefect, no compute): each
criterion stops a run with its own reason, in a fixed order of precedence."""

from __future__ import annotations

import math

import pytest

from advloop.flows.config import RunConfig
from advloop.flows.loop import decide, labelling_needed, wall_time_stop
from advloop.flows.records import GenerationRecord
from advloop.flows.steps import ExploreReport, SelectReport


def _config(convergence: dict | None = None, budget: dict | None = None) -> RunConfig:
    return RunConfig.model_validate(
        {
            "system": {"name": "nh3", "structures": "nh3.xyz"},
            "convergence": convergence or {},
            "budget": budget or {},
        }
    )


def _gen(
    generation: int, sigma: float | None = 0.2, selected: int | None = 2, above: int | None = 5
) -> GenerationRecord:
    """A generation record as the flow writes it (None: that step did not run)."""
    record = {"generation": generation, "train_val_forces_mae": 0.1}
    if sigma is not None:
        record["attack_sigma_f_mean"] = sigma
    if selected is not None:
        record.update(
            selected=selected,
            candidates_above_threshold=above,
            selection_threshold=0.08,
            labels_added=selected,
        )
    return GenerationRecord.from_dict(record)


def test_budgets_end_with_a_training_only_generation():
    config = _config(budget={"max_generations": 2, "max_labels": 10})
    assert decide(config, [_gen(0)], 0.0) is None
    final = GenerationRecord(2, train_val_forces_mae=0.05)
    stop = decide(config, [_gen(0), _gen(1), final], 0.0)
    assert stop.reason == "max_generations" and "budget.max_generations = 2" in stop.explanation
    stop = decide(config, [_gen(0), GenerationRecord(1)], 0.0)  # labels ran out first
    assert stop.reason == "max_labels" and "budget.max_labels = 10" in stop.explanation


def test_force_uncertainty_below_threshold_for_patience_generations():
    config = _config(convergence={"force_std_threshold": 0.05, "patience": 2})
    records = [_gen(0, sigma=0.3), _gen(1, sigma=0.01, selected=None)]
    assert decide(config, records, 0.0) is None  # one generation below: not yet
    records.append(_gen(2, sigma=0.04, selected=None))
    stop = decide(config, records, 0.0)
    assert stop.reason == "converged" and "0.05 eV/Å for 2 generation(s)" in stop.explanation
    # an uncertain generation in between resets the count
    records = [
        _gen(0, sigma=0.01, selected=None),
        _gen(1, sigma=0.3),
        _gen(2, sigma=0.01, selected=None),
    ]
    assert decide(config, records, 0.0) is None


def test_fewer_candidates_than_min_candidates_above_the_selection_threshold():
    config = _config(convergence={"min_candidates": 3})
    stop = decide(config, [_gen(0, above=2, selected=2)], 0.0)
    assert stop.reason == "few_candidates"
    assert "only 2 attacked geometries" in stop.explanation
    assert "convergence.min_candidates = 3" in stop.explanation and "0.08" in stop.explanation
    assert decide(config, [_gen(0, above=3)], 0.0) is None
    assert decide(_config(), [_gen(0, above=0, selected=1)], 0.0) is None  # 0: criterion off


def test_selection_that_chooses_nothing_stops_the_run():
    stop = decide(_config(), [_gen(0, selected=0, above=4)], 0.0)
    assert stop.reason == "no_candidates"


def test_an_exploration_that_proposed_nothing_has_not_converged():
    """Committee MD whose frames all stayed below its trust window reports σ_F 0 over no
    candidates: that measured nothing, so the run stops as no_candidates, not converged."""
    config = _config(convergence={"force_std_threshold": 0.05})
    empty = GenerationRecord.from_dict(
        {**_gen(0, sigma=0.0, selected=0, above=0).to_dict(), "attack_candidates": 0}
    )
    stop = decide(config, [empty], 0.0)
    assert stop.reason == "no_candidates" and "proposed no geometry" in stop.explanation
    report = ExploreReport(n_seeds=4, n_stopped=0, sigma_f_mean=0.0, sigma_f_max=0.0, seconds=1.0)
    assert labelling_needed(config, explore=report)  # n_candidates 0: select, find nothing
    measured = GenerationRecord.from_dict({**empty.to_dict(), "attack_candidates": 3})
    assert decide(config, [measured], 0.0).reason == "converged"


def test_wall_time_budget_counts_this_invocation():
    config = _config(budget={"max_wall_hours": 0.5})
    assert decide(config, [_gen(0)], 1799.0) is None
    stop = decide(config, [_gen(0)], 1800.0)
    assert stop.reason == "max_wall_time" and "budget.max_wall_hours = 0.5" in stop.explanation
    assert "resume" in stop.explanation
    assert decide(config, [], 3600.0).reason == "max_wall_time"  # before any generation
    assert wall_time_stop(_config(), 1e9) is None  # no limit set
    # a run that converged says so, even past its wall time
    converged = decide(
        _config(convergence={"force_std_threshold": 0.05}, budget={"max_wall_hours": 0.5}),
        [_gen(0, sigma=0.01, selected=None)],
        7200.0,
    )
    assert converged.reason == "converged"


def test_a_generation_labels_only_what_the_policy_lets_through():
    config = _config(convergence={"force_std_threshold": 0.05, "min_candidates": 2})
    explored = ExploreReport(
        n_seeds=4, n_stopped=0, sigma_f_mean=0.2, sigma_f_max=0.5, seconds=1.0, n_candidates=4
    )
    assert labelling_needed(config, explore=explored)
    calm = ExploreReport(
        n_seeds=4, n_stopped=0, sigma_f_mean=0.01, sigma_f_max=0.02, seconds=1.0, n_candidates=4
    )
    assert not labelling_needed(config, explore=calm)
    assert labelling_needed(config, select=SelectReport([0, 1], 0.1, {}, n_above=2))
    assert not labelling_needed(config, select=SelectReport([0], 0.1, {}, n_above=1))
    assert not labelling_needed(config, select=SelectReport([], 0.1, {}, n_above=5))
    assert math.isnan(SelectReport([], 0.1, {}).sigma_f_mean)


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("convergence", "min_candidates", -1),
        ("budget", "max_wall_hours", 0),
        ("compute", "label_workers", 0),
        ("compute", "label_retries", -1),
        ("compute", "label_timeout_seconds", -5),
    ],
)
def test_new_limits_are_validated(section, key, value):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=key):
        RunConfig.model_validate(
            {"system": {"name": "nh3", "structures": "nh3.xyz"}, section: {key: value}}
        )
