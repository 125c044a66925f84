"""Splitting a generation's wall time into compute phases and orchestration."""

from __future__ import annotations

import inspect
import time

import pytest

from advloop.flows.timing import Timed, split_generation, timed


def _t(phase, start, end):
    return Timed(None, phase, start, end)


def test_parallel_members_count_once_and_gaps_are_orchestration():
    steps = [
        _t("training", 0.5, 4.0),
        _t("training", 1.0, 5.0),  # two members in parallel
        _t("exploration", 5.5, 7.0),
        _t("selection", 7.0, 7.25),
        _t("labelling", 7.5, 9.0),
    ]
    split = split_generation(steps, 0.0, 10.0)
    assert split["seconds_training"] == pytest.approx(4.5)
    assert split["seconds_exploration"] == pytest.approx(1.5)
    assert split["seconds_selection"] == pytest.approx(0.25)
    assert split["seconds_labelling"] == pytest.approx(1.5)
    # 0-0.5, 5-5.5, 7.25-7.5, 9-10
    assert split["seconds_orchestration"] == pytest.approx(2.25)
    assert sum(split.values()) == pytest.approx(10.0)


def test_intervals_outside_the_generation_are_clipped_and_bad_windows_refused():
    split = split_generation([_t("labelling", -5.0, 1.0), _t("training", 3.0, 20.0)], 0.0, 4.0)
    assert split["seconds_labelling"] == pytest.approx(1.0)
    assert split["seconds_training"] == pytest.approx(1.0)
    assert split["seconds_orchestration"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="before it starts"):
        split_generation([], 2.0, 1.0)


def test_timed_keeps_the_signature_and_measures_the_body():
    def step(config: str, generation: int) -> int:
        time.sleep(0.05)
        return generation + 1

    wrapped = timed("exploration", step)
    assert list(inspect.signature(wrapped).parameters) == ["config", "generation"]
    out = wrapped("c", generation=2)
    assert out.value == 3 and out.phase == "exploration"
    assert 0.05 <= out.end - out.start < 1.0
