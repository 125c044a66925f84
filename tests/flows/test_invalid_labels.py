"""A calculator that returns NaN forces for some structures: each such label is a failed
label with its reason, counted against ``budget.max_failure_ratio`` like a failed SCF;
the dataset holds only finite numbers; above the limit the run stops.

Labels come from ASE's EMT (tests/flows/stand_in.py, :class:`NaNForcesEMT`), a stand-in
for DFT that returns NaN forces for the structures whose hash falls in a fixed fraction
(the same structures as tests/flows/test_faults.py's failing SCFs: with 0.2, one of the 6
initial structures and one of generation 0's 3 selected candidates; with 0.6, 4 of the 6
initial ones).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from advloop.flows.report import GenerationTable
from advloop.flows.run_folder import RunLayout
from advloop.flows.validation import validate_config
from advloop.potentials.dataset import Dataset
from tests.flows.stand_in import calls, counter_path, fails, write_nan_forces_config

FRACTION = 0.2
REASON = r"InvalidLabelError: 1 force component is not finite \(nan or inf\)"


def _corrupted(computed: list[str], fraction: float = FRACTION) -> set[str]:
    return {h for h in computed if fails(h, fraction)}


@pytest.mark.slow
def test_nan_forces_are_failed_labels_and_the_dataset_stays_finite(prefect_backend, tmp_path):
    from advloop.flows.active_learning import run_active_learning
    from advloop.flows.run_folder import read_generations

    config = validate_config(write_nan_forces_config(tmp_path, "nh3-nan", FRACTION, 0.5))
    summary = run_active_learning(config, GenerationTable(io.StringIO()))
    assert summary["stop_reason"] == "max_generations"

    layout = RunLayout(config.run_dir())
    computed = calls(tmp_path, "nh3-nan")
    corrupted = _corrupted(computed)
    [record, _] = read_generations(layout.root)
    assert record.labels_failed == 1 and record.labels_added == 2  # 1 of 3 was NaN
    assert summary["labels_failed"] == len(corrupted) == 2  # and 1 of the 6 initial ones
    assert json.loads(layout.summary.read_text())["labels_failed"] == 2

    dataset = Dataset(layout.dataset)
    hashes = set(dataset.hashes())
    assert not corrupted & hashes and set(computed) - corrupted == hashes
    arrays = dataset.arrays()
    for values in (arrays.energy, arrays.forces, arrays.positions):
        assert np.isfinite(values).all()

    # The failures are kept in the label store with their reason: a re-run computes
    # nothing again.
    before = counter_path(tmp_path, "nh3-nan").read_text()
    again = run_active_learning(config, GenerationTable(io.StringIO()))
    assert counter_path(tmp_path, "nh3-nan").read_text() == before
    assert again["labels_failed"] == 2 and len(Dataset(layout.dataset)) == len(hashes)


@pytest.mark.slow
@pytest.mark.parametrize(
    "fraction, limit, message",
    [
        # the initial labels: 4 of 6 have NaN forces
        (
            0.6,
            0.5,
            r"4 of 6 initial DFT labels failed, a failure ratio of 0.667, above "
            r"budget.max_failure_ratio = 0.5: initial structure \d: " + REASON,
        ),
        # generation 0's labels: 1 of 3, after 1 of the 6 initial ones (0.17, within 0.3)
        (
            FRACTION,
            0.3,
            r"1 of 3 adversarial DFT labels failed, a failure ratio of 0.333, above "
            r"budget.max_failure_ratio = 0.3: adversarial structure \d: " + REASON,
        ),
    ],
)
def test_nan_forces_above_the_limit_stop_the_run(
    prefect_backend, tmp_path, fraction, limit, message
):
    from advloop.flows.active_learning import run_active_learning
    from advloop.flows.steps import LabellingError

    config = validate_config(write_nan_forces_config(tmp_path, "nh3-nan-more", fraction, limit))
    with pytest.raises(LabellingError, match=message):
        run_active_learning(config, GenerationTable(io.StringIO()))
    layout = RunLayout(config.run_dir())
    assert not layout.summary.exists() and not layout.generations.exists()
    dataset = Dataset(layout.dataset)
    computed = calls(tmp_path, "nh3-nan-more")
    assert set(dataset.hashes()) == set(computed) - _corrupted(computed, fraction)
    assert np.isfinite(dataset.arrays().forces).all()
