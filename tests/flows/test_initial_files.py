"""A run that starts from labels a researcher already has (``initial_data.files``).

Labelled frames are imported with their level of theory as provenance and never labelled
again; unlabelled frames join the initial batch for the run's labeller; a file of another
level of theory is refused before anything is computed unless the config says it is the
same calculation; and the files are part of the run's data settings, so a resume with other
files is refused. EMT is the labeller of these tests (a stand-in: they are about the data
that reaches the dataset, checked against the calculator that made it).
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from advloop.calculators.label_store import LabelStore
from advloop.flows.config import ConfigError
from advloop.flows.loop import ActiveLearningLoop, LocalJobs
from advloop.flows.run_folder import RunLayout, hold, open_run, resume_problems
from advloop.flows.steps import initial_dataset
from advloop.flows.validation import validate_config
from advloop.potentials.dataset import Dataset, Provenance
from tests.flows.configs import EXAMPLES

NH3 = EXAMPLES / "structures" / "nh3.xyz"

CONFIG = """
system: {{name: nh3, structures: {structures}}}
initial_data:
  n_structures: {n_structures}
  files:
{files}
labels: {{kind: emt}}
model: {{n_atom_basis: 16, n_interactions: 2, n_rbf: 10, cutoff: 4.0}}
committee: {{n_members: 2, seed: 0}}
training: {{max_epochs: 15, warm_start_epochs: 5, batch_size: 6}}
exploration: {{kind: adversarial, n_seeds: 4, n_steps: 5, temperature: 1000.0}}
selection: {{percentile: 0, rmsd_threshold: 0.001, max_selected: 2}}
convergence: {{force_std_threshold: 1.0e-6}}
budget: {{max_generations: 1, max_labels: 10}}
output_dir: {output_dir}
"""


def _frames(n: int, seed: int, labelled: bool) -> list[Atoms]:
    """NH3 displaced at random, with EMT's energy and forces attached if ``labelled``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        atoms = molecule("NH3")
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        if labelled:
            atoms.calc = EMT()
            atoms.calc = SinglePointCalculator(
                atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces()
            )
        out.append(atoms)
    return out


def _emt(atoms: Atoms) -> tuple[float, np.ndarray]:
    probe = atoms.copy()
    probe.calc = EMT()
    return probe.get_potential_energy(), probe.get_forces()


def _config(tmp_path, files: str, n_structures: int = 0, run_folder: bool = True):
    """The config with these ``files`` entries, validated (with its run folder, unless
    ``run_folder`` is False: a resume's problems are then left to the test)."""
    path = tmp_path / "config.yaml"
    path.write_text(
        CONFIG.format(
            structures=NH3,
            n_structures=n_structures,
            files=files or "    []",
            output_dir=tmp_path / "runs",
        )
    )
    return validate_config(path, run_folder=run_folder)


def test_labelled_frames_are_imported_and_the_others_labelled(tmp_path):
    labelled, bare = _frames(3, 0, True), _frames(2, 1, False)
    # relative to the config file's folder
    write(str(tmp_path / "mine.extxyz"), labelled + bare)
    config = _config(tmp_path, "    - {path: mine.extxyz, level_of_theory: EMT}", n_structures=2)
    report = initial_dataset(config)
    layout = RunLayout(config.run_dir())
    dataset = Dataset(layout.dataset)
    strategies = [p.strategy for p in dataset.provenance()]
    assert strategies.count("imported") == 3 and strategies.count("initial") == 4
    assert {p.level_of_theory for p in dataset.provenance()} == {"EMT"}
    arrays = dataset.to_atoms()
    by_strategy = {s: [a for a in arrays if a.info["strategy"] == s] for s in set(strategies)}
    # imported: the file's own numbers, not recomputed
    assert [a.get_potential_energy() for a in by_strategy["imported"]] == pytest.approx(
        [a.get_potential_energy() for a in labelled], abs=1e-10
    )
    # the unlabelled frames of the file are labelled by the run's labeller, with the 2
    # displaced structures: 4 labels computed, none for the imported frames
    geometries = [a.positions for a in by_strategy["initial"]]
    assert any(np.allclose(x, bare[0].positions) for x in geometries)
    assert any(np.allclose(x, bare[1].positions) for x in geometries)
    for atoms in by_strategy["initial"]:
        energy, forces = _emt(atoms)
        assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-8)
        assert np.allclose(atoms.get_forces(), forces, atol=1e-8)
    assert len(LabelStore(layout.labels)) == 4
    assert report.added == 4
    # idempotent: a second invocation imports and labels nothing again
    again = initial_dataset(config)
    assert len(Dataset(layout.dataset)) == 7 and again.failed == 0
    assert len(LabelStore(layout.labels)) == 4


def test_other_label_keys_and_a_frame_selection(tmp_path):
    frames = _frames(6, 2, True)
    for atoms in frames:
        atoms.info["REF_energy"] = atoms.get_potential_energy()
        atoms.arrays["REF_forces"] = atoms.get_forces()
        atoms.calc = None
    write(str(tmp_path / "ref.extxyz"), frames)
    config = _config(
        tmp_path,
        "    - {path: ref.extxyz, level_of_theory: emt, index: '::2', "
        "energy_key: REF_energy, forces_key: REF_forces}",
    )
    initial_dataset(config)
    imported = Dataset(RunLayout(config.run_dir()).dataset).to_atoms()
    assert len(imported) == 3  # frames 0, 2 and 4
    assert [a.get_potential_energy() for a in imported] == pytest.approx(
        [frames[k].info["REF_energy"] for k in (0, 2, 4)], abs=1e-10
    )


def test_another_level_of_theory_is_refused_unless_declared_the_same(tmp_path):
    write(str(tmp_path / "pbe.extxyz"), _frames(3, 0, True))
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, "    - {path: pbe.extxyz, level_of_theory: RKS/PBE/def2-SVP}")
    text = str(err.value)
    assert "initial_data.files[0]" in text and "is labelled at 'RKS/PBE/def2-SVP'" in text
    assert "not at this run's level of theory 'EMT'" in text and "same_level_as_labels" in text
    assert not (tmp_path / "runs").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="give their level_of_theory"):
        _config(tmp_path, "    - {path: pbe.extxyz}")
    config = _config(
        tmp_path,
        "    - {path: pbe.extxyz, level_of_theory: EMT-like, same_level_as_labels: true}",
    )
    initial_dataset(config)
    dataset = Dataset(RunLayout(config.run_dir()).dataset)
    assert {p.level_of_theory for p in dataset.provenance()} == {"EMT-like"}  # as declared


def test_frames_a_run_cannot_use_are_refused_with_what_to_do(tmp_path):
    half = _frames(1, 0, False)[0]
    half.calc = SinglePointCalculator(half, energy=-1.0)  # an energy, no forces
    write(str(tmp_path / "half.extxyz"), [*_frames(2, 1, True), half])
    with pytest.raises(ConfigError, match="frame 2 has an energy but no forces"):
        _config(tmp_path, "    - {path: half.extxyz, level_of_theory: EMT}")
    water = molecule("H2O")
    water.calc = EMT()
    water.calc = SinglePointCalculator(
        water, energy=water.get_potential_energy(), forces=water.get_forces()
    )
    write(str(tmp_path / "water.extxyz"), [water])
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, "    - {path: water.extxyz, level_of_theory: EMT}")
    assert "not the atoms of its system's structures (H3N, 4 atoms)" in str(err.value)
    assert "initial_data: gives 1 initial structure(s)" in str(err.value)
    with pytest.raises(ConfigError, match=r"files\[0\].*not found"):
        _config(tmp_path, "    - {path: missing.extxyz, level_of_theory: EMT}")


def test_another_runs_dataset_brings_its_provenance(tmp_path):
    other = Dataset.create(tmp_path / "other" / "dataset.h5")
    frames = _frames(4, 3, True)
    other.append(
        frames,
        [a.get_potential_energy() for a in frames],
        [a.get_forces() for a in frames],
        [Provenance(0, "initial", "EMT")] * 2 + [Provenance(1, "adversarial", "EMT", 0)] * 2,
    )
    config = _config(tmp_path, f"    - {{path: {tmp_path / 'other' / 'dataset.h5'}}}")
    initial_dataset(config)
    dataset = Dataset(RunLayout(config.run_dir()).dataset)
    assert dataset.hashes() == other.hashes()
    assert dataset.arrays().energy == pytest.approx(other.arrays().energy, abs=1e-12)
    assert {(p.strategy, p.level_of_theory) for p in dataset.provenance()} == {("imported", "EMT")}

    foreign = Dataset.create(tmp_path / "foreign.h5")
    foreign.append(
        frames[:2], [0.0, 0.0], [np.zeros((4, 3))] * 2, [Provenance(0, "x", "RHF/STO-3G")] * 2
    )
    with pytest.raises(ConfigError, match="is labelled at 'RHF/STO-3G'"):
        _config(tmp_path, f"    - {{path: {tmp_path / 'foreign.h5'}}}")
    with pytest.raises(ConfigError, match="leave level_of_theory out for a dataset.h5"):
        _config(tmp_path, f"    - {{path: {tmp_path / 'foreign.h5'}, level_of_theory: EMT}}")


def test_a_submission_names_the_files_by_absolute_path(tmp_path):
    """A submitted config is validated on the worker, in another folder: the files it
    names must be found there by their absolute paths (a shared filesystem)."""
    import yaml

    from advloop.flows.deployments import Submission

    write(str(tmp_path / "mine.extxyz"), _frames(3, 0, True))
    config = _config(tmp_path, "    - {path: mine.extxyz, level_of_theory: EMT}")
    packed = Submission.pack(tmp_path / "config.yaml", config)
    [entry] = yaml.safe_load(packed.config_yaml)["initial_data"]["files"]
    assert entry == {"path": str(tmp_path / "mine.extxyz"), "level_of_theory": "EMT"}


def test_other_files_on_resume_are_refused(tmp_path):
    frames = _frames(3, 0, True)
    write(str(tmp_path / "mine.extxyz"), frames)
    entry = "    - {path: mine.extxyz, level_of_theory: EMT}"
    config = _config(tmp_path, entry, n_structures=2)
    with open_run(config):
        initial_dataset(config)
    assert resume_problems(config) == []
    # the same frames in a file moved elsewhere: the same data
    (tmp_path / "moved").mkdir()
    write(str(tmp_path / "moved" / "mine.extxyz"), frames)
    moved = _config(tmp_path, "    - {path: moved/mine.extxyz, level_of_theory: EMT}", 2)
    assert resume_problems(moved) == []
    # one energy changed: other data, refused before anything runs
    frames[1].calc = SinglePointCalculator(frames[1], energy=-5.0, forces=frames[1].get_forces())
    write(str(tmp_path / "mine.extxyz"), frames)
    with pytest.raises(ConfigError, match=r"initial_data.files: files \w+… → files \w+…"):
        _config(tmp_path, entry, n_structures=2)
    # no files where the run had some
    problems = resume_problems(_config(tmp_path, "", n_structures=2, run_folder=False))
    assert problems[0].startswith("initial_data.files: files ") and "→ none" in problems[0]


def test_a_run_explores_from_imported_labels(tmp_path):
    write(str(tmp_path / "mine.extxyz"), _frames(5, 4, True))
    config = _config(tmp_path, "    - {path: mine.extxyz, level_of_theory: EMT}")
    with hold(config.run_dir()):
        summary = ActiveLearningLoop(config, LocalJobs()).run()
    assert summary.labels_imported == 5 and summary.labels_initial == 0
    assert summary.labels_explored > 0 and summary.generations == 2
    assert summary.dataset_size == 5 + summary.labels_explored
    assert "0 initial, 5 imported, " in summary.composition()
    dataset = Dataset(RunLayout(config.run_dir()).dataset)
    explored = [p for p in dataset.provenance() if p.strategy == "adversarial"]
    assert len(explored) == summary.labels_explored and {p.generation for p in explored} == {0}
