"""The attack benchmark runs end to end on a tiny batch and records every number."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest
import torch

from benchmarks.attack import run

PER_SIZE = (
    "n_atoms",
    "n_structures_per_batch",
    "n_atoms_per_batch",
    "n_pairs",
    "forward_seconds",
    "forward_timing",
    "attack_step_seconds",
    "attack_step_timing",
    "attack_step_over_forward",
    "attack_step_over_forward_min_times",
    "geometry_steps_per_second",
    "atom_steps_per_second",
    "attack_step_parts_seconds",
    "attack_step_parts_sum_seconds",
    "pooled_attack_step_seconds",
    "pooled_attack_step_over_forward",
    "pool_every",
    "features_prediction_over_prediction",
)
PARTS = (
    "geometry_checks",
    "neighbor_list",
    "committee_forward",
    "committee_forces_create_graph",
    "objective",
    "backward",
    "optimizer_step",
)


def numbers(value, path: str = "") -> Iterator[tuple[str, float]]:
    """Every number in a nested record, with its path."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numbers(item, f"{path}.{key}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


def test_attack_benchmark_records_positive_finite_numbers(tmp_path):
    out = tmp_path / "attack.json"
    threads = torch.get_num_threads()
    record = run([10], batch_atoms=20, min_time=0.01, threads=1, device="cpu", output=out)

    assert torch.get_num_threads() == threads
    assert json.loads(out.read_text()) == record
    for key in ("command", "machine", "versions", "date", "settings", "summary", "results"):
        assert key in record
    assert record["settings"]["threads"] == 1
    (result,) = record["results"]
    assert set(PER_SIZE) <= set(result)
    assert set(PARTS) == set(result["attack_step_parts_seconds"])
    assert result["n_atoms"] == 10 and result["n_structures_per_batch"] == 2
    values = dict(numbers(result))
    assert len(values) > len(PER_SIZE)
    for path, value in values.items():
        assert math.isfinite(value) and value > 0, (path, value)
    assert result["attack_step_over_forward"] == pytest.approx(
        result["attack_step_seconds"] / result["forward_seconds"]
    )
    assert result["geometry_steps_per_second"] == pytest.approx(2 / result["attack_step_seconds"])
    assert record["summary"]["max_attack_step_over_forward"] == result["attack_step_over_forward"]


def test_attack_benchmark_rejects_a_device_the_attack_cannot_use(tmp_path):
    with pytest.raises(ValueError, match="cpu"):
        run([10], batch_atoms=20, min_time=0.01, device="cuda", output=tmp_path / "a.json")
