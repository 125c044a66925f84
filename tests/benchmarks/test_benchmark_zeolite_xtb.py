"""The zeolite benchmark: its structures are oracle minima, and a tiny run of the real
loop (real tblite, real schnetpack committees) reports every field for every strategy."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from ase.io import read
from ase.neighborlist import neighbor_list

from benchmarks import zeolite_xtb
from benchmarks.zeolite_xtb import (
    BOND_FACTOR,
    BREAK_FACTOR,
    CONTACT_FACTOR,
    FRAMEWORK_CIF,
    GUEST_CIF,
    QUICK,
    STRATEGIES,
    _oracle,
    distance_ratios,
    topology_kept,
)

TINY = replace(
    QUICK,
    labels_per_generation=2,
    n_initial=4,
    n_atom_basis=8,
    cutoff=4.0,
    max_epochs=8,
    warm_start_epochs=4,
    n_explore_seeds=3,
    attack_steps=5,
    explore_md_steps=20,
    n_md=2,
    md_steps=10,
    oracle_equilibration=2,
    n_frames=2,
    frame_interval=2,
)


@pytest.mark.parametrize("path, guest", [(FRAMEWORK_CIF, []), (GUEST_CIF, ["H", "H", "H", "N"])])
def test_structures_are_periodic_sodalite_minima_of_the_oracle(path, guest):
    atoms = read(path)
    assert atoms.pbc.all() and atoms.cell.volume == pytest.approx(8.97**3, rel=0.01)
    symbols = atoms.get_chemical_symbols()
    assert (symbols.count("Si"), symbols.count("O")) == (12, 24)
    assert sorted(s for s in symbols if s not in ("Si", "O")) == guest
    i, j, d = neighbor_list("ijd", atoms, 2.0)
    si_o = (atoms.numbers[i] == 14) & (atoms.numbers[j] == 8)
    for k in np.flatnonzero(atoms.numbers == 14):  # every Si four-coordinated by O
        assert np.sum(si_o & (i == k)) == 4
    for k in np.flatnonzero(atoms.numbers == 8):  # every O bridges two Si
        assert np.sum((i == k) & (atoms.numbers[j] == 14)) == 2
    assert np.all((d[si_o] > 1.58) & (d[si_o] < 1.65))  # Å
    atoms.calc = _oracle()
    assert np.abs(atoms.get_forces()).max() < 0.005  # eV/Å: a minimum of GFN2-xTB
    assert np.abs(atoms.get_stress()).max() < 1e-3  # eV/Å³: and of its cell


def test_periodic_oracle_forces_are_the_energy_gradient():
    atoms = read(GUEST_CIF)
    atoms.positions += np.random.default_rng(0).normal(0.0, 0.05, atoms.positions.shape)
    atoms.calc = _oracle()
    analytic = atoms.get_forces()[36, 2]  # N, z
    h = 1e-3  # Å
    energies = []
    for step in (h, -2 * h):
        atoms.positions[36, 2] += step
        energies.append(atoms.get_potential_energy())
    assert -(energies[0] - energies[1]) / (2 * h) == pytest.approx(analytic, abs=1e-3)


def test_topology_check_sees_broken_bonds_and_contacts_not_periodic_images():
    atoms = read(GUEST_CIF)
    cell = atoms.cell.array
    ratios = distance_ratios(atoms.numbers, atoms.positions[None], cell)
    bonds = ratios[0] < BOND_FACTOR
    assert bonds.sum() // 2 == 48 + 3  # Si-O and N-H
    h, n = 37, 36
    o = int(np.argmin(ratios[0, h] + np.where(atoms.numbers == 8, 0.0, np.inf)))
    moved = np.stack(
        [
            atoms.positions,
            atoms.positions + cell[1] - 2 * cell[2],
            atoms.positions.copy(),
            atoms.positions.copy(),
        ]
    )
    moved[2, h] += moved[2, h] - moved[2, n]  # N-H from 1.0 to 2.0 Å: broken
    moved[3, h] = moved[3, o] + 0.6 * (moved[3, h] - moved[3, o]) / np.linalg.norm(
        moved[3, h] - moved[3, o]
    )  # H at 0.6 Å from a framework O: a contact
    kept = topology_kept(distance_ratios(atoms.numbers, moved, cell), bonds)
    assert kept.tolist() == [True, True, False, False]


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("zeolite") / "zeolite_xtb.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zeolite_xtb, "QUICK", TINY)
        zeolite_xtb.main(["--quick", "--output", str(out)])
    return json.loads(out.read_text())


def test_tiny_run_records_every_field_for_every_strategy(record):
    for key in (
        "command",
        "machine",
        "versions",
        "date",
        "mode",
        "seconds",
        "settings",
        "oracle",
        "runs",
        "summary",
    ):
        assert key in record, key
    assert set(record["versions"]) == {"python", "torch", "schnetpack", "tblite", "ase"}
    assert record["mode"] == "quick" and record["settings"]["n_md"] == TINY.n_md
    oracle = record["oracle"]
    assert oracle["n_atoms"] == 40
    # the oracle's own hot dynamics stays well inside the limits the committee's must keep
    assert oracle["trajectory_max_bond_ratio"] < BREAK_FACTOR - 0.1
    assert oracle["trajectory_min_contact_ratio"] > CONTACT_FACTOR + 0.1
    assert oracle["max_force_at_structure_eV_A"] < 0.005
    assert set(record["runs"]) == set(STRATEGIES) == set(record["summary"])
    for strategy, by_seed in record["runs"].items():
        rows = by_seed["0"]
        assert rows[0]["n_labels"] == TINY.n_initial
        if strategy == "md" and len(rows) == 1:  # md found no frame inside its trust window:
            # the production loop's stop rule ends the run there
            assert rows[0]["stop_reason"] in ("no_candidates", "converged", "few_candidates")
        else:
            assert [r["generation"] for r in rows] == [0, 1]
            assert rows[0]["n_selected"] == rows[1]["n_labels"] - rows[0]["n_labels"]
            assert rows[1]["n_labels"] > rows[0]["n_labels"], strategy
            assert rows[-1]["stop_reason"] == "max_generations"
        for row in rows:
            for key in (
                "force_rmse_hot",
                "md_survival_fs_mean",
                "seconds_training",
                "seconds_exploration",
                "seconds_labelling",
                "seconds_metrics",
            ):
                assert math.isfinite(row[key]) and row[key] >= 0, (strategy, key)
            assert 0.0 <= row["md_stable_fraction"] <= 1.0
            assert row["md_survival_fs_mean"] <= TINY.md_steps * TINY.timestep
        final = record["summary"][strategy]["final"]
        assert final["n_labels"]["mean"] == rows[-1]["n_labels"]
        assert final["md_stable_fraction"]["std"] == 0.0  # one seed


def test_ablation_runs_the_adversarial_strategy_with_one_setting_changed(tmp_path):
    changed = {"exploration": {"seeds": "lowest_energy"}}
    results = zeolite_xtb.run(TINY, strategies=(), root=tmp_path, ablations={"lowest": changed})
    assert results["runs"] == {} and set(results["ablations"]) == {"lowest"}
    ablation = results["ablations"]["lowest"]
    assert ablation["changed"] == changed
    rows = ablation["runs"]["0"]
    assert [r["generation"] for r in rows] == [0, 1] and rows[1]["n_labels"] > rows[0]["n_labels"]
    assert ablation["summary"]["final"]["n_labels"]["mean"] == rows[-1]["n_labels"]
    config = zeolite_xtb.make_config("adversarial", 0, tmp_path, TINY, "lowest", changed)
    assert config.exploration.seeds == "lowest_energy" and config.exploration.kind == "adversarial"
    assert (tmp_path / "sod-nh3-lowest-0" / "dataset.h5").exists()
