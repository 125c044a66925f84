"""Several systems trained into one potential (``system.parts``): NH3 and H2O, each with
its own starting structure, initial data and share of each generation's labels, in one
committee. EMT labels them (a stand-in: the tests are about which structures are made,
explored and chosen, not about their energies)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from ase.build import molecule
from ase.io import write

from advloop.flows.config import ConfigError
from advloop.flows.loop import ActiveLearningLoop, LocalJobs
from advloop.flows.report import GenerationTable
from advloop.flows.run_folder import RunLayout, hold, read_initial, resume_problems
from advloop.flows.steps import generation_candidates, label_shares
from advloop.flows.validation import validate_config
from advloop.potentials.committee import Committee
from advloop.potentials.dataset import Dataset

CONFIG = """
system:
  name: guests
  parts:
{parts}
initial_data: {{n_structures: 4, displacement: 0.05, seed: 0}}
labels: {{kind: emt}}
model: {{n_atom_basis: 16, n_interactions: 2, n_rbf: 10, cutoff: 4.0}}
committee: {{n_members: 2, seed: 0}}
training: {{max_epochs: 10, warm_start_epochs: 5, batch_size: 8}}
exploration: {{kind: adversarial, n_seeds: 3, n_steps: 4, temperature: 1000.0, pool_every: 2}}
selection: {{percentile: 0, rmsd_threshold: 0.001, max_selected: 3}}
convergence: {{force_std_threshold: 1.0e-6}}
budget: {{max_generations: 1, max_labels: 10}}
output_dir: {output_dir}
"""

PARTS = """\
    - {name: nh3, structures: nh3.xyz, share: 2}
    - {name: water, structures: h2o.xyz, initial_data: {n_structures: 3, seed: 5}, n_seeds: 2}
"""


def _config(tmp_path, parts: str = PARTS, run_folder: bool = True):
    write(str(tmp_path / "nh3.xyz"), molecule("NH3"))
    write(str(tmp_path / "h2o.xyz"), molecule("H2O"))
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(parts=parts, output_dir=tmp_path / "runs"))
    return validate_config(path, run_folder=run_folder)


def _formula(numbers: np.ndarray) -> str:
    from ase import Atoms

    return Atoms(numbers=numbers).get_chemical_formula()


def test_labels_are_shared_by_largest_remainders():
    assert label_shares([2, 1], 3) == [2, 1]
    assert label_shares([1, 1, 1], 4) == [2, 1, 1]  # ties to the earlier part
    assert label_shares([1, 3], 2) == [1, 1] and label_shares([1, 4], 2) == [0, 2]
    assert sum(label_shares([0.7, 0.2, 0.1], 17)) == 17
    assert label_shares([1.0], 8) == [8]


def test_parts_that_cannot_be_one_potential_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="each part needs its own name"):
        _config(tmp_path, PARTS.replace("name: water", "name: nh3"))
    same = "    - {name: a, structures: nh3.xyz}\n    - {name: b, structures: nh3.xyz}\n"
    with pytest.raises(ConfigError, match="the atoms of part 'a', in the same order"):
        _config(tmp_path, same)
    with pytest.raises(ConfigError, match=r"system.parts\[1\] \(water\).structures: .*not found"):
        _config(tmp_path, PARTS.replace("h2o.xyz", "missing.xyz"))


def test_one_committee_learns_every_part_and_each_explores_its_own(tmp_path):
    config = _config(tmp_path)
    stream = io.StringIO()
    with hold(config.run_dir()):
        loop = ActiveLearningLoop(config, LocalJobs())
        table = GenerationTable(stream)
        for done in loop.irun():
            table.row(done.record)
    layout = RunLayout(config.run_dir())

    # the initial data of each part: 4 displaced NH3 (the run's), 3 displaced H2O (its own)
    formulas = [a.get_chemical_formula() for a in read_initial(layout)]
    assert formulas == ["H3N"] * 4 + ["H2O"] * 3

    # each part's candidates come from seeds of its own composition
    dataset = Dataset(layout.dataset)
    data = dataset.arrays()
    record = loop.records[0]
    assert record.parts is not None and set(record.parts) == {"nh3", "water"}
    assert record.parts["nh3"]["seeds"] == 3 and record.parts["water"]["seeds"] == 2
    candidates = generation_candidates(config, 0)
    starts = np.concatenate([[0], np.cumsum(data.n_atoms)])
    cand_starts = candidates.starts
    per_part = {"H3N": 0, "H2O": 0}
    for k, parent in enumerate(candidates.parent):
        mine = _formula(candidates.numbers[cand_starts[k] : cand_starts[k + 1]])
        seed = _formula(data.numbers[starts[parent] : starts[parent + 1]])
        assert mine == seed
        per_part[mine] += 1
    assert per_part == {
        "H3N": record.parts["nh3"]["candidates"],
        "H2O": record.parts["water"]["candidates"],
    }

    # the labels of the generation split 2 : 1 by the parts' shares, each of its own
    explored = [
        a.get_chemical_formula() for a in dataset.to_atoms() if a.info["strategy"] == "adversarial"
    ]
    assert sorted(explored) == ["H2O", "H3N", "H3N"]
    assert record.parts["nh3"]["selected"] == 2 and record.parts["water"]["selected"] == 1

    # one committee predicts both systems
    committee = Committee.from_checkpoints(layout.committee_checkpoints(1))
    for name in ("NH3", "H2O"):
        atoms = molecule(name)
        pred = committee.predict_arrays(atoms.numbers, atoms.positions, np.array([len(atoms)]))
        assert np.isfinite(pred.energy_mean).all()

    # the table has a line per part under its generation's row
    printed = stream.getvalue()
    assert "    nh3: 3 seeds, " in printed and ", 2 selected" in printed
    assert "    water: 2 seeds, " in printed and ", 1 selected" in printed


def test_a_changed_part_is_a_changed_run(tmp_path):
    config = _config(tmp_path)
    from advloop.flows.run_folder import open_run
    from advloop.flows.steps import initial_dataset

    with open_run(config):
        initial_dataset(config)
    assert resume_problems(config) == []
    # a share changes what is labelled next, not what was made: the run goes on
    assert resume_problems(_config(tmp_path, PARTS.replace("share: 2", "share: 1"), False)) == []
    # a part's own initial data is part of the run's data
    changed = _config(tmp_path, PARTS.replace("seed: 5", "seed: 6"), run_folder=False)
    assert resume_problems(changed)[0].startswith("system.parts: parts ")
