"""The malonaldehyde benchmark: the oracle's minimum and proton-transfer saddle are what
they are said to be, the stability check lets the proton change oxygens but nothing else,
and the quick mode runs the real loop end to end and writes its record."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks.malonaldehyde_xtb import (
    ERRORS,
    MIRROR,
    OXYGENS,
    PROTON,
    QUICK,
    STABILITY,
    STRATEGIES,
    TEMPERATURES,
    build_minimum,
    build_transition_state,
    distance_ratios,
    frequencies,
    main,
    make_config,
    saddle_order,
    write_structure,
)
from benchmarks.zeolite_xtb import BOND_FACTOR, topology_kept


@pytest.fixture(scope="module")
def structures():
    return build_minimum(), build_transition_state()


def _oh(atoms) -> np.ndarray:
    """The proton's distances to the two oxygens, Å."""
    return np.linalg.norm(atoms.positions[PROTON] - atoms.positions[list(OXYGENS)], axis=1)


def test_the_minimum_is_a_minimum_and_the_ts_a_first_order_saddle_above_it(structures):
    minimum, ts = structures
    for atoms in structures:
        assert np.abs(atoms.get_forces()).max() < 2e-3  # eV/Å, unconstrained: stationary
    assert saddle_order(frequencies(minimum)) == 0
    freqs = frequencies(ts)
    assert saddle_order(freqs) == 1
    assert np.abs(freqs.imag).max() > 500  # cm⁻¹: the proton's transfer, not a soft mode
    barrier = ts.get_potential_energy() - minimum.get_potential_energy()
    assert 0.05 < barrier < 0.5  # eV; GFN2-xTB gives 0.163 (3.76 kcal/mol)
    # the enol: the proton on one oxygen, hydrogen-bonded to the other; at the saddle midway
    near, far = sorted(_oh(minimum))
    assert near == pytest.approx(1.0, abs=0.05) and 1.5 < far < 2.0
    assert _oh(ts)[0] == pytest.approx(_oh(ts)[1], abs=1e-6) and 1.1 < _oh(ts)[0] < 1.4
    assert np.abs(minimum.positions[:, 2]).max() < 1e-6  # planar (Cs)


def test_saddle_order_counts_imaginary_modes_beyond_translations_and_rotations():
    trivial = [3j, 0.5, 1.0, 2j, 4.0, 10.0]
    assert saddle_order(np.array([*trivial, 1228j, 300, 1600])) == 1
    assert saddle_order(np.array([*trivial, 250, 300, 1600])) == 0
    with pytest.raises(ValueError, match="not a stationary point"):
        saddle_order(np.array([3j, 0.5, 1.0, 2j, 4.0, 80.0, 250, 300, 1600]))


def test_stability_topology_lets_the_proton_change_oxygens_and_nothing_else(structures):
    minimum, ts = structures
    z = minimum.numbers
    ratios = distance_ratios(z, minimum.positions[None])
    bonds = ratios[0] < BOND_FACTOR
    assert bonds.sum() // 2 == 9  # C-C 2, C-O 2, C-H 3, the proton to each oxygen
    mirrored = minimum.positions[MIRROR] * np.array([-1.0, 1.0, 1.0])  # transferred
    lost = minimum.positions.copy()
    centre = minimum.positions[list(OXYGENS)].mean(axis=0)
    lost[PROTON] = centre + 3.0 * np.array([0.0, 1.0, 0.0])  # far from both oxygens
    clash = minimum.positions.copy()
    clash[6] = minimum.positions[3] + np.array([0.6, 0.0, 0.0])  # a C-H hydrogen onto O3
    stretched = minimum.positions.copy()
    stretched[5] += np.array([0.0, -1.0, 0.0])  # the central C-H from 1.08 to 2.08 Å
    frames = np.stack([minimum.positions, ts.positions, mirrored, lost, clash, stretched])
    kept = topology_kept(distance_ratios(z, frames), bonds)
    assert kept.tolist() == [True, True, True, False, False, False]


def test_quick_mode_runs_the_loop_end_to_end_and_writes_its_record(tmp_path, structures):
    out = tmp_path / "malonaldehyde_xtb.json"
    record = main(["--quick", "--output", str(out)])
    assert json.loads(out.read_text()) == record
    for key in ("command", "machine", "versions", "date", "mode", "seconds", "oracle"):
        assert key in record, key
    assert record["mode"] == "quick"
    assert set(record["versions"]) == {"python", "torch", "schnetpack", "tblite", "ase"}
    oracle = record["oracle"]
    assert oracle["saddle_order"] == {"minimum": 0, "ts": 1}
    assert 0.05 < oracle["barrier_eV"] < 0.5 and oracle["ts_imaginary_frequency_cm1"] > 500
    for t in TEMPERATURES:
        trajectory = oracle["trajectories"][f"{t:g}K"]
        assert trajectory["frames"] == QUICK.n_frames
        assert trajectory["max_bond_ratio"] < 1.4 and trajectory["min_contact_ratio"] > 1.1
    assert record["settings"]["n_md"] >= 20  # the stable fraction moves in steps of 0.05
    assert set(record["runs"]) == set(STRATEGIES) == set(record["summary"])
    zero = None
    for strategy, by_seed in record["runs"].items():
        rows = by_seed["0"]
        assert [r["generation"] for r in rows] == [0, 1], strategy
        assert rows[0]["n_labels"] == QUICK.n_initial < rows[1]["n_labels"]
        # generation 0 (labels, committee, metrics) is shared; its exploration is not
        shared = {k: rows[0][k] for k in (*ERRORS, *STABILITY, "n_labels", "seconds_training")}
        zero = zero or shared
        assert shared == zero
        for row in rows:
            for key in (*ERRORS, "seconds_training", "seconds_metrics"):
                assert math.isfinite(row[key]) and row[key] >= 0, (strategy, key)
            for key in STABILITY:
                assert 0.0 <= row[key] <= 1.0
                assert round(row[key] * QUICK.n_md) == pytest.approx(row[key] * QUICK.n_md)
        summary = record["summary"][strategy]
        assert summary["final"]["n_labels"]["mean"] == rows[-1]["n_labels"]
        assert len(summary["explored_labels_to_barrier_target"]) == 1
        ratio = summary.get("labels_to_barrier_target_ratio_to_md")
        assert (ratio is None) == (strategy == "md")
        if ratio is not None:
            assert ratio["budget"] == QUICK.generations * QUICK.labels_per_generation
            assert ratio["low"] <= ratio["estimate"] <= ratio["high"]
    minimum = structures[0]
    structure = write_structure(
        {"numbers": minimum.numbers, "minimum": minimum.positions}, tmp_path
    )
    for strategy in STRATEGIES:  # every strategy explores at the hotter temperature
        config = make_config(strategy, 0, tmp_path, QUICK, structure)
        assert config.exploration.kind == strategy
        assert config.system.name == f"malonaldehyde-{strategy}-0"
        if strategy != "random":
            assert config.exploration.temperature == TEMPERATURES[-1]
