"""Injected SCF failures: below ``budget.max_failure_ratio`` the run finishes with every
failure recorded and counted; above it, the run stops with a message naming the ratio
and the limit.

Labels come from ASE's EMT (tests/flows/stand_in.py), a stand-in for DFT that raises the
project's ``SCFConvergenceError`` for the structures whose hash falls in a fixed fraction
(the same structures in every run, whatever the order). With a fraction of 0.2, one of
the 6 initial structures fails (a ratio of 0.17) and one of generation 0's 3 selected
candidates (0.33): those ratios are what the limits below are set around.
"""

from __future__ import annotations

import io
import json

import pytest

from advloop.flows.report import GenerationTable
from advloop.flows.run_folder import RunLayout
from advloop.flows.validation import validate_config
from advloop.potentials.dataset import Dataset
from tests.flows.stand_in import calls, counter_path, fails, write_config

FRACTION = 0.2


def _failed(computed: list[str], fraction: float = FRACTION) -> set[str]:
    return {h for h in computed if fails(h, fraction)}


@pytest.mark.slow
def test_failures_below_the_limit_are_recorded_and_the_run_finishes(prefect_backend, tmp_path):
    from advloop.flows.active_learning import run_active_learning
    from advloop.flows.run_folder import read_generations

    config = validate_config(write_config(tmp_path, "nh3-failing", FRACTION, max_failure_ratio=0.5))
    summary = run_active_learning(config, GenerationTable(io.StringIO()))
    assert summary["stop_reason"] == "max_generations"

    layout = RunLayout(config.run_dir())
    computed = calls(tmp_path, "nh3-failing")
    failed = _failed(computed)
    [record, _] = read_generations(layout.root)
    assert record.labels_failed == 1 and record.labels_added == 2  # 1 of 3 failed
    assert summary["labels_failed"] == len(failed) == 2  # and 1 of the 6 initial ones
    hashes = set(Dataset(layout.dataset).hashes())
    assert not failed & hashes and set(computed) - failed == hashes

    # The failures are kept in the label store: a re-run does not compute them again.
    before = counter_path(tmp_path, "nh3-failing").read_text()
    again = run_active_learning(config, GenerationTable(io.StringIO()))
    assert counter_path(tmp_path, "nh3-failing").read_text() == before
    assert again["labels_failed"] == summary["labels_failed"]
    assert json.loads(layout.summary.read_text())["labels_failed"] == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "fraction, limit, message",
    [
        # the initial labels: 4 of 6 fail
        (
            0.6,
            0.5,
            r"4 of 6 initial DFT labels failed, a failure ratio of 0.667, above "
            r"budget.max_failure_ratio = 0.5: initial structure \d: SCFConvergenceError",
        ),
        # generation 0's labels: 1 of 3 fail, after 1 of the 6 initial ones (0.17, within 0.3)
        (
            FRACTION,
            0.3,
            r"1 of 3 adversarial DFT labels failed, a failure ratio of 0.333, above "
            r"budget.max_failure_ratio = 0.3: adversarial structure \d: SCFConvergenceError",
        ),
    ],
)
def test_failures_above_the_limit_stop_the_run_naming_ratio_and_limit(
    prefect_backend, tmp_path, fraction, limit, message
):
    from advloop.flows.active_learning import run_active_learning
    from advloop.flows.steps import LabellingError

    config = validate_config(write_config(tmp_path, "nh3-failing-more", fraction, limit))
    with pytest.raises(LabellingError, match=message):
        run_active_learning(config, GenerationTable(io.StringIO()))
    layout = RunLayout(config.run_dir())
    assert not layout.summary.exists() and not layout.generations.exists()
    hashes = set(Dataset(layout.dataset).hashes())  # the successes are kept
    computed = calls(tmp_path, "nh3-failing-more")
    assert hashes == set(computed) - _failed(computed, fraction) and hashes
    # the run's summary in the UI says it failed, why, and what is kept
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["nh3-failing-more-summary"]))
        )
    summary = max(found, key=lambda a: a.created)  # the parameters of this test share a server
    assert summary.data.startswith("# nh3-failing-more: failed")
    assert "DFT labels failed" in summary.data and "re-run to resume" in summary.data
