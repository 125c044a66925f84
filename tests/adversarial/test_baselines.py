"""Random displacement and committee MD, the baselines of the adversarial attack
(Schwalbe-Koda et al., Nat. Commun. 12, 5104, 2021; DP-GEN trust levels: Zhang et al.,
Comput. Phys. Commun. 253, 107206, 2020; adaptive levels as DP-GEN2's adaptive lower level
and aims-PAX's threshold, Henkes et al., J. Chem. Inf. Model. 2026), each tuned as its
users tune it: an adaptive trust window for MD, an energy cap for random displacement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk, molecule

from advloop.adversarial.baselines import (
    ADAPTIVE_TRUST,
    FIXED_TRUST,
    CommitteeMDSettings,
    committee_md,
    icommittee_md,
    training_force_deviation,
)
from advloop.adversarial.geometry import check_geometry
from advloop.adversarial.random_displacement import RandomDisplacementSettings, random_displacement
from advloop.adversarial.structures import Seeds
from advloop.potentials.committee import Committee
from advloop.potentials.model import ModelSpec
from tests.conftest import make_member

# Untrained members for tests about bookkeeping rather than physics: cheaper than TINY_SPEC.
SMALL_SPEC = ModelSpec(n_atom_basis=8, n_interactions=1, n_rbf=6, cutoff=4.0)
FIXED = dict(trust_mode="fixed")
WIDE = dict(**FIXED, trust_lower=0.0, trust_upper=1e3)  # a window that accepts every frame


def seeds_from(structures: list[Atoms]) -> Seeds:
    return Seeds(
        numbers=np.concatenate([a.numbers for a in structures]).astype(np.int64),
        positions=np.concatenate([a.positions for a in structures]),
        n_atoms=np.array([len(a) for a in structures]),
        cells=np.array([a.cell.array for a in structures]),
        pbc=np.array([a.pbc for a in structures]),
        index=np.arange(len(structures)),
    )


def small_committee(n: int = 2) -> Committee:
    return Committee([make_member(100 + k, SMALL_SPEC) for k in range(n)])


def assert_scores_match_committee(committee: Committee, cands) -> None:
    pred = committee.predict_arrays(
        cands.numbers, cands.positions, cands.n_atoms, cands.cells, cands.pbc
    )
    np.testing.assert_allclose(cands.sigma_f_mean, pred.forces_std_mean, rtol=1e-6)
    np.testing.assert_allclose(cands.sigma_f_max, pred.forces_std_max, rtol=1e-6)


def test_settings_reject_bad_values():
    RandomDisplacementSettings()
    CommitteeMDSettings()
    for kwargs, match in [
        ({"std": 0}, r"random\.std = 0: must be > 0 Å"),
        ({"n_per_seed": 0}, "random.n_per_seed"),
        ({"min_distance_factor": 3.0}, "random.max_bond_factor"),
        ({"max_energy_rise": 0.0}, r"random\.max_energy_rise = 0\.0: must be > 0 eV/atom"),
        ({"max_redraws": -1}, "random.max_redraws"),
        ({"redraw_std_factor": 0.0}, r"random\.redraw_std_factor = 0\.0: must be in \(0, 1\]"),
        ({"redraw_std_factor": 1.5}, "random.redraw_std_factor"),
    ]:
        with pytest.raises(ValueError, match=match):
            RandomDisplacementSettings(**kwargs)
    for kwargs, match in [
        ({"temperature": 0}, "md.temperature"),
        ({"timestep": -1}, "md.timestep"),
        ({"friction": -0.1}, "md.friction"),
        ({"sample_interval": 0}, "md.sample_interval"),
        ({"trust_lower": 0.5, "trust_upper": 0.5}, "md.trust_upper"),
        (
            {**FIXED, "trust_upper": 0.01},
            r"md\.trust_upper \(0\.01\).*md\.trust_lower \(0\.05, the",
        ),
        ({"max_frames_per_seed": 0}, "md.max_frames_per_seed"),
        ({"trust_mode": "auto"}, r"md\.trust_mode = 'auto': must be one of 'fixed', 'adaptive'"),
        ({"adaptive_upper": 0.0}, "md.adaptive_upper = 0.0"),
        ({"adaptive_lower": -1.0}, "md.adaptive_lower = -1.0"),
        ({"adaptive_lower": 2.0, "adaptive_upper": 2.0}, r"md\.adaptive_upper \(2\.0\) must be"),
        ({"adaptive_lower": 12.0}, r"md\.adaptive_upper \(10\.0\) must be larger"),
        ({"candidate_fraction": 0.0}, "md.candidate_fraction = 0.0"),
        ({"candidate_fraction": 1.5}, "md.candidate_fraction = 1.5"),
        # a level of the other mode would not be read: refused, not ignored
        (
            {"trust_lower": 0.1},
            r"md\.trust_lower = 0\.1 is read only with md\.trust_mode = 'fixed'",
        ),
        ({"trust_upper": 2.0}, "md.trust_upper = 2.0 is read only"),
        ({**FIXED, "adaptive_upper": 8.0}, "md.adaptive_upper = 8.0 is read only with"),
        ({"candidate_fraction": 0.1, "adaptive_lower": 1.0}, "md.adaptive_lower = 1.0 is not read"),
        ({**FIXED, "candidate_fraction": 0.1, "trust_lower": 0.0}, "md.trust_lower = 0.0 is not"),
    ]:
        with pytest.raises(ValueError, match=match):
            CommitteeMDSettings(**kwargs)


def test_adaptive_is_the_default_and_its_window_scales_with_reference_sigma():
    assert CommitteeMDSettings().trust_mode == "adaptive"
    assert ADAPTIVE_TRUST == (1.0, 10.0) and FIXED_TRUST == (0.05, 0.5)
    for sigma in (0.02, 0.04, 0.3):  # eV/Å
        assert CommitteeMDSettings().trust_levels(sigma) == pytest.approx((sigma, 10 * sigma))
        custom = CommitteeMDSettings(adaptive_lower=0.5, adaptive_upper=4.0)
        assert custom.trust_levels(sigma) == pytest.approx((0.5 * sigma, 4 * sigma))
        only = CommitteeMDSettings(candidate_fraction=0.1, adaptive_upper=3.0)
        assert only.trust_levels(sigma) == (None, pytest.approx(3 * sigma))
        # fixed levels are absolute: a reference, if passed, changes nothing
        assert CommitteeMDSettings(**FIXED).trust_levels(sigma) == FIXED_TRUST
    assert CommitteeMDSettings(**WIDE).trust_levels() == (0.0, 1e3)


def test_adaptive_mode_without_a_reference_fails_before_any_step():
    # committee=None: any committee call would raise AttributeError, not ValueError
    seeds = seeds_from([molecule("NH3")])
    rng = np.random.default_rng(0)
    settings = CommitteeMDSettings()
    with pytest.raises(ValueError, match=r"trust_mode = 'adaptive' needs reference_sigma"):
        committee_md(None, seeds, settings, rng)
    with pytest.raises(ValueError, match=r"needs reference_sigma"):
        icommittee_md(None, seeds, settings, rng)  # raised on the call, not on iteration
    for bad in (0.0, -0.1, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match=r"reference_sigma = .*must be a finite number > 0"):
            committee_md(None, seeds, settings, rng, reference_sigma=bad)
    with pytest.raises(ValueError, match="percentile"):
        training_force_deviation(None, None, percentile=101.0)


def test_random_displacement_keeps_the_bonds_of_periodic_seeds():
    """A zeolite with a guest (examples/structures/sod_nh3.cif) displaced by 0.45 Å per
    component: the copies kept are exactly those without a clash and without a broken
    bond of their seed (:func:`advloop.adversarial.geometry.bonded_pairs`), fewer than a clash
    test alone would keep."""
    from pathlib import Path

    from ase.io import read

    from advloop.adversarial.geometry import bonded_pairs

    atoms = read(Path(__file__).resolve().parents[2] / "examples" / "structures" / "sod_nh3.cif")
    settings = RandomDisplacementSettings(std=0.45, n_per_seed=40)
    cands = random_displacement(
        small_committee(), seeds_from([atoms]), settings, np.random.default_rng(0)
    )
    copies = np.tile(atoms.positions, (40, 1)) + np.random.default_rng(0).normal(
        0, 0.45, (40 * 40, 3)
    )
    copies = copies.reshape(40, 40, 3)
    bonds = bonded_pairs(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    reasons = [
        check_geometry(atoms.numbers, x, 0.5, 2.0, atoms.cell.array, atoms.pbc, bonds)
        for x in copies
    ]
    clash_only = [
        check_geometry(atoms.numbers, x, 0.5, 2.0, atoms.cell.array, atoms.pbc) for x in copies
    ]
    assert any(r is not None and r.startswith("bond broken") for r in reasons)
    kept = [k for k, r in enumerate(reasons) if r is None]
    assert 0 < len(kept) < sum(r is None for r in clash_only)
    np.testing.assert_allclose(cands.positions.reshape(-1, 40, 3), copies[kept])


def test_random_displacement_has_requested_std_and_parents(nh3_emt_data):
    committee = small_committee()
    seeds = Seeds.from_arrays(nh3_emt_data, np.arange(5))
    settings = RandomDisplacementSettings(std=0.05, n_per_seed=40)
    cands = random_displacement(committee, seeds, settings, np.random.default_rng(0))
    assert len(cands) == 200 and not cands.stopped
    np.testing.assert_array_equal(cands.parent, np.repeat(np.arange(5), 40))
    np.testing.assert_array_equal(cands.n_atoms, 4)
    starts = seeds.starts
    origin = np.concatenate([seeds.positions[starts[p] : starts[p + 1]] for p in cands.parent])
    np.testing.assert_array_equal(cands.numbers, np.tile(seeds.numbers[:4], 200))
    delta = cands.positions - origin  # 2400 Gaussian samples
    assert abs(delta.mean()) < 4 * 0.05 / np.sqrt(delta.size)
    assert delta.std() == pytest.approx(0.05, rel=0.06)
    np.testing.assert_array_equal(cands.score, cands.sigma_f_mean)
    assert_scores_match_committee(committee, cands)


def test_random_displacement_drops_clashes_with_a_reason():
    clash = molecule("NH3")
    clash.positions[1] = clash.positions[0] + [0.05, 0.0, 0.0]  # an H inside the N
    seeds = seeds_from([molecule("NH3"), clash, molecule("H2O")])
    cands = random_displacement(
        small_committee(),
        seeds,
        RandomDisplacementSettings(std=1e-3, n_per_seed=2),
        np.random.default_rng(1),
    )
    np.testing.assert_array_equal(cands.parent, [0, 0, 2, 2])
    assert list(cands.stopped) == [1]
    assert cands.stopped[1].startswith("2 of 2 displacements rejected: atoms 0 and 1")


def test_periodic_clash_uses_images_and_skips_connectivity():
    cell = np.eye(3) * 8.0
    # Two Cu atoms 6.6 Å apart: "fragmented" as a molecule, a sane (dilute) crystal.
    dilute = Atoms("Cu2", [[0.2, 0.2, 0.2], [4.0, 4.0, 4.0]], cell=cell, pbc=True)
    # 7.9 Å apart in the listed coordinates, 0.1 Å through the cell boundary.
    across = Atoms("Cu2", [[0.05, 1.0, 1.0], [7.95, 1.0, 1.0]], cell=cell, pbc=True)
    assert check_geometry(dilute.numbers, dilute.positions).startswith("fragmented")
    seeds = seeds_from([dilute, across])
    cands = random_displacement(
        small_committee(), seeds, RandomDisplacementSettings(std=1e-3), np.random.default_rng(2)
    )
    np.testing.assert_array_equal(cands.parent, [0])
    np.testing.assert_array_equal(cands.cells[0], cell)
    assert "atoms 0 and 1 at 0.10 Å" in cands.stopped[1] and "periodic" in cands.stopped[1]


def test_nve_conserves_committee_mean_energy_plus_kinetic(trained_members, nh3_emt_data):
    # Velocity Verlet (friction 0) with a tiny step: H = <E>_committee + K is conserved to
    # O(dt²) while K itself fluctuates; wrong units, masses or force signs break this.
    committee = Committee(trained_members[:2])
    seeds = Seeds.from_arrays(nh3_emt_data, np.arange(4))
    settings = CommitteeMDSettings(
        temperature=300.0, timestep=0.1, n_steps=40, friction=0.0, **WIDE
    )
    steps = list(icommittee_md(committee, seeds, settings, np.random.default_rng(3)))
    assert len(steps) == 41 and steps[-1].active.all()
    total = np.array([s.energy + s.kinetic for s in steps])  # [steps, seeds] eV
    kinetic = np.array([s.kinetic for s in steps])
    assert np.all(kinetic.std(axis=0) > 2e-3)
    assert np.all(np.abs(total - total[0]).max(axis=0) < 0.02 * kinetic.std(axis=0))
    # Maxwell-Boltzmann start with no centre-of-mass momentum: mean K = (3N - 3) kT / 2.
    assert kinetic[0].mean() == pytest.approx(4.5 * units.kB * 300.0, rel=0.6)


def test_langevin_thermostat_reaches_target_temperature(trained_members, nh3_emt_data):
    # Started at the potential minimum's neighbourhood, NVE would settle near T/2 by
    # equipartition with the potential energy; strong friction holds 3N·kT/2 of kinetic energy.
    committee = Committee(trained_members[:2])
    seeds = Seeds.from_arrays(nh3_emt_data)  # 20 seeds, 240 degrees of freedom per step
    settings = CommitteeMDSettings(
        temperature=500.0, timestep=0.5, n_steps=50, friction=0.5, **WIDE
    )
    steps = list(icommittee_md(committee, seeds, settings, np.random.default_rng(4)))
    assert steps[-1].active.all()
    kinetic = np.array([s.kinetic for s in steps[15:]])  # [steps, seeds] eV
    temperature = 2.0 * kinetic.sum(axis=1).mean() / (3 * seeds.n_atoms.sum() * units.kB)
    assert temperature == pytest.approx(500.0, rel=0.15)


def test_trust_window_selects_the_most_uncertain_frames(trained_members, nh3_emt_data):
    committee = Committee(trained_members[:2])
    seeds = Seeds.from_arrays(nh3_emt_data, np.arange(6))
    base = dict(temperature=800.0, n_steps=30, sample_interval=3)
    wide = list(
        icommittee_md(
            committee, seeds, CommitteeMDSettings(**base, **WIDE), np.random.default_rng(5)
        )
    )
    dev = np.array([s.sigma_f_max for s in wide])  # [steps, seeds] eV/Å
    lower, upper = np.quantile(dev[3::3], [0.3, 0.8])
    settings = CommitteeMDSettings(
        **base, **FIXED, trust_lower=lower, trust_upper=upper, max_frames_per_seed=2
    )
    cands = committee_md(committee, seeds, settings, np.random.default_rng(5))

    # Same random stream, so each trajectory follows the wide run until it reaches upper.
    expected_parent, expected_score = [], []
    for s in range(len(seeds)):
        over = np.flatnonzero(dev[:, s] >= upper)
        end = over[0] if len(over) else len(dev)
        assert (s in cands.stopped) == bool(len(over))
        if len(over):
            assert cands.stopped[s].startswith(f"step {end}:") and "trust_upper" in cands.stopped[s]
        window = [dev[t, s] for t in range(3, end, 3) if lower <= dev[t, s] < upper]
        top = sorted(window, reverse=True)[:2]
        expected_parent += [s] * len(top)
        expected_score += top
    assert len(cands) > 0 and cands.stopped
    np.testing.assert_array_equal(cands.parent, expected_parent)
    np.testing.assert_allclose(cands.score, expected_score, rtol=1e-9)
    assert np.all((cands.sigma_f_max >= lower) & (cands.sigma_f_max < upper))
    np.testing.assert_array_equal(cands.score, cands.sigma_f_max)
    assert_scores_match_committee(committee, cands)


def test_tiny_trust_upper_stops_every_seed(nh3_emt_data):
    seeds = Seeds.from_arrays(nh3_emt_data, np.arange(3))
    settings = CommitteeMDSettings(**FIXED, trust_lower=0.0, trust_upper=1e-9)
    cands = committee_md(small_committee(), seeds, settings, np.random.default_rng(6))
    assert len(cands) == 0
    assert sorted(cands.stopped) == [0, 1, 2]
    assert all(r.startswith("step 0:") and "trust_upper" in r for r in cands.stopped.values())


def test_unphysical_or_non_finite_seeds_are_frozen_and_reported():
    committee = small_committee()
    broken = make_member(7, SMALL_SPEC)
    with torch.no_grad():  # finite weights that overflow to NaN for any structure with oxygen
        broken.network.representation.embedding.weight[8] = 1e300
    committee = Committee([committee.members[0], broken])
    seeds = seeds_from([molecule("NH3"), molecule("H2O"), molecule("CH4")])
    # Hot, with a tight bond criterion, so the molecules come apart within a few steps.
    settings = CommitteeMDSettings(
        temperature=5000.0, timestep=1.0, n_steps=15, friction=0.0, max_bond_factor=1.1, **WIDE
    )
    steps = list(icommittee_md(committee, seeds, settings, np.random.default_rng(7)))
    for s in steps:
        for value in (s.positions, s.sigma_f_max, s.sigma_f_mean, s.energy, s.kinetic):
            assert np.all(np.isfinite(value))
    stopped = steps[-1].stopped
    assert stopped[1].startswith("step 0: committee energy or forces not finite")
    assert "fragmented" in stopped[0] or "fragmented" in stopped[2]
    starts = seeds.starts
    for s, why in stopped.items():
        at = int(why.split(":")[0].removeprefix("step "))
        rows = slice(starts[s], starts[s + 1])
        frozen = [step.positions[rows] for step in steps[at:]]
        assert all(np.array_equal(frozen[0], p) for p in frozen)  # did not move again
        assert check_geometry(seeds.numbers[rows], frozen[0], 0.5, 1.1) is None  # last sane one
        assert not steps[-1].active[s] and steps[-1].kinetic[s] == 0.0
    for cap in (None, 0.5):  # with a cap, the seed's own energy is already not finite
        settings = RandomDisplacementSettings(std=1e-3, max_energy_rise=cap)
        cands = random_displacement(committee, seeds, settings, np.random.default_rng(8))
        assert 1 not in cands.parent and "not finite" in cands.stopped[1]


def test_periodic_seed_runs_and_keeps_its_cell():
    copper = bulk("Cu", "fcc", a=3.6, cubic=True)  # 4 atoms; cell shorter than the cutoff
    shaken = copper.copy()
    shaken.positions += np.random.default_rng(9).normal(0.0, 0.05, shaken.positions.shape)
    seeds = seeds_from([copper, shaken])
    settings = CommitteeMDSettings(temperature=300.0, n_steps=12, sample_interval=3, **WIDE)
    steps = list(icommittee_md(small_committee(), seeds, settings, np.random.default_rng(10)))
    assert steps[-1].active.all()
    assert np.all(np.isfinite(steps[-1].positions))
    cands = committee_md(small_committee(), seeds, settings, np.random.default_rng(10))
    assert len(cands) == 8 and not cands.stopped
    np.testing.assert_array_equal(cands.cells, np.broadcast_to(copper.cell.array, (8, 3, 3)))
    assert cands.pbc.all()
    assert_scores_match_committee(small_committee(), cands)


# --- tuned as their users tune them: adaptive trust levels, an energy cap ------------------


def test_adaptive_window_outlasts_a_fixed_one_too_tight_for_the_committee(
    trained_members, nh3_emt_data
):
    """The new user's case: a small committee whose deviation on its own training data is
    already near DP-GEN's 0.5 eV/Å. The fixed window stops every trajectory within a few
    dozen steps; the adaptive one, scaled by the committee's training-set deviation, runs
    every trajectory to the end and fills each seed's quota of candidates."""
    committee = Committee(trained_members[:2])
    reference = training_force_deviation(committee, nh3_emt_data)  # 95th percentile, eV/Å
    pred = committee.predict_arrays(
        nh3_emt_data.numbers, nh3_emt_data.positions, nh3_emt_data.n_atoms
    )
    assert reference == pytest.approx(np.percentile(pred.forces_std_max, 95))
    assert FIXED_TRUST[1] < 2 * reference  # the premise: 0.5 eV/Å is tight for this committee
    seeds = Seeds.from_arrays(nh3_emt_data, np.arange(6))
    base = dict(n_steps=60, sample_interval=10)  # 6 sampled frames per seed, quota 4

    fixed = CommitteeMDSettings(**base, **FIXED)
    fixed_steps = list(icommittee_md(committee, seeds, fixed, np.random.default_rng(5)))
    assert len(fixed_steps) < 61 and not fixed_steps[-1].active.any()
    assert all("trust_upper 0.5 eV/Å" in r for r in fixed_steps[-1].stopped.values())
    fixed_cands = committee_md(committee, seeds, fixed, np.random.default_rng(5))

    adaptive = CommitteeMDSettings(**base)
    steps = list(
        icommittee_md(
            committee, seeds, adaptive, np.random.default_rng(5), reference_sigma=reference
        )
    )
    assert len(steps) == 61 and steps[-1].active.all() and not steps[-1].stopped
    cands = committee_md(
        committee, seeds, adaptive, np.random.default_rng(5), reference_sigma=reference
    )
    dev = np.array([s.sigma_f_max for s in steps[10::10]])  # [6 sampled frames, seeds] eV/Å
    quota = np.minimum(4, ((dev >= reference) & (dev < 10 * reference)).sum(axis=0))
    np.testing.assert_array_equal(np.bincount(cands.parent, minlength=6), quota)
    assert len(cands) >= 2 * len(fixed_cands) and len(cands) >= 18
    assert np.all((cands.score >= reference) & (cands.score < 10 * reference))
    assert_scores_match_committee(committee, cands)


def test_adaptive_window_is_the_fixed_window_scaled_by_reference_sigma(
    trained_members, nh3_emt_data
):
    # The same run as a fixed window [a_lo·σ_ref, a_hi·σ_ref): same frames, same stops; a
    # tighter reference stops more trajectories.
    committee = Committee(trained_members[:2])
    seeds = Seeds.from_arrays(nh3_emt_data, np.arange(4))
    base = dict(n_steps=30, sample_interval=3, max_frames_per_seed=3)
    reference = training_force_deviation(committee, nh3_emt_data)
    n_stopped = []
    for sigma in (reference, 2 * reference):
        adaptive = CommitteeMDSettings(**base, adaptive_lower=1.0, adaptive_upper=2.0)
        fixed = CommitteeMDSettings(**base, **FIXED, trust_lower=sigma, trust_upper=2.0 * sigma)
        a = committee_md(
            committee, seeds, adaptive, np.random.default_rng(3), reference_sigma=sigma
        )
        f = committee_md(committee, seeds, fixed, np.random.default_rng(3))
        assert len(a) > 0
        for name in ("parent", "score", "sigma_f_mean", "positions"):
            np.testing.assert_array_equal(getattr(a, name), getattr(f, name))
        assert {s: r.split(":")[0] for s, r in a.stopped.items()} == {
            s: r.split(":")[0] for s, r in f.stopped.items()
        }
        assert all("adaptive_upper 2 × reference_sigma" in r for r in a.stopped.values())
        n_stopped.append(len(a.stopped))
    assert n_stopped[0] > n_stopped[1]


def test_frames_past_the_lower_level_never_stop_a_trajectory_and_all_become_candidates(
    trained_members, nh3_emt_data
):
    committee = Committee(trained_members[:2])
    seeds = Seeds.from_arrays(nh3_emt_data, np.arange(4))
    reference = training_force_deviation(committee, nh3_emt_data)
    settings = CommitteeMDSettings(n_steps=40, sample_interval=4, max_frames_per_seed=100)
    steps = list(
        icommittee_md(
            committee, seeds, settings, np.random.default_rng(4), reference_sigma=reference
        )
    )
    dev = np.array([s.sigma_f_max for s in steps[4::4]])  # [10 sampled frames, seeds] eV/Å
    inside = (dev >= reference) & (dev < 10 * reference)
    # every seed is past the lower level before its last sampled frame, and runs on to the end
    assert inside[:-1].any(axis=0).all()
    assert len(steps) == 41 and steps[-1].active.all()
    cands = committee_md(
        committee, seeds, settings, np.random.default_rng(4), reference_sigma=reference
    )
    assert len(cands) == inside.sum() > 4 * len(seeds)  # every window frame, past the default cap
    np.testing.assert_array_equal(np.bincount(cands.parent), inside.sum(axis=0))
    capped = committee_md(
        committee,
        seeds,
        CommitteeMDSettings(n_steps=40, sample_interval=4, max_frames_per_seed=2),
        np.random.default_rng(4),
        reference_sigma=reference,
    )
    expected = np.concatenate([np.sort(dev[inside[:, s], s])[::-1][:2] for s in range(4)])
    np.testing.assert_allclose(capped.score, expected, rtol=1e-12)


def test_candidate_fraction_sets_the_lower_level_from_the_frames(trained_members, nh3_emt_data):
    # DP-GEN2's adaptive lower level: the ⌈f·N⌉ most deviating of the N sampled frames.
    committee = Committee(trained_members[:2])
    seeds = Seeds.from_arrays(nh3_emt_data, np.arange(4))
    base = dict(n_steps=20, sample_interval=2, max_frames_per_seed=100, **FIXED, trust_upper=1e3)
    steps = list(
        icommittee_md(committee, seeds, CommitteeMDSettings(**base), np.random.default_rng(6))
    )
    dev = np.array([s.sigma_f_max for s in steps[2::2]]).ravel()  # N = 40
    for fraction, k in ((0.25, 10), (0.26, 11), (0.01, 1), (1.0, 40)):
        settings = CommitteeMDSettings(**base, candidate_fraction=fraction)
        cands = committee_md(committee, seeds, settings, np.random.default_rng(6))
        assert len(cands) == k
        np.testing.assert_allclose(np.sort(cands.score), np.sort(dev)[-k:], rtol=1e-12)
    # with a per-seed cap the pooled choice is then capped per seed
    settings = CommitteeMDSettings(**{**base, "max_frames_per_seed": 1}, candidate_fraction=1.0)
    cands = committee_md(committee, seeds, settings, np.random.default_rng(6))
    np.testing.assert_array_equal(cands.parent, np.arange(4))


def _rise(committee: Committee, seeds: Seeds, cands) -> np.ndarray:
    """Committee-mean energy of each candidate above its seed's, eV per atom."""
    seed_e = committee.predict_arrays(
        seeds.numbers, seeds.positions, seeds.n_atoms, seeds.cells, seeds.pbc
    ).energy_mean
    e = committee.predict_arrays(
        cands.numbers, cands.positions, cands.n_atoms, cands.cells, cands.pbc
    ).energy_mean
    return (e - seed_e[cands.parent]) / cands.n_atoms


def test_energy_cap_drops_copies_above_the_seed_plus_cap(trained_members, nh3_emt_data):
    committee = Committee(trained_members[:2])
    seeds = Seeds.from_arrays(nh3_emt_data, np.arange(4))
    free = RandomDisplacementSettings(std=0.15, n_per_seed=10)
    every = random_displacement(committee, seeds, free, np.random.default_rng(0))
    assert len(every) == 40 and not every.stopped
    rise = _rise(committee, seeds, every)
    cap = 0.3  # eV/atom: about half the copies (median rise ≈ 0.45) lie above
    assert 5 < np.sum(rise > cap) < 35
    capped = RandomDisplacementSettings(std=0.15, n_per_seed=10, max_energy_rise=cap, max_redraws=0)
    cands = random_displacement(committee, seeds, capped, np.random.default_rng(0))
    below = rise <= cap
    # the same first draw, less exactly the copies above the cap
    np.testing.assert_array_equal(cands.parent, every.parent[below])
    np.testing.assert_array_equal(cands.positions, every.positions[np.repeat(below, 4)])
    assert np.all(_rise(committee, seeds, cands) <= cap)
    assert_scores_match_committee(committee, cands)
    for s in range(4):
        n_over = int(np.sum(~below[every.parent == s]))
        if n_over:
            assert cands.stopped[s].startswith(f"{n_over} of 10 displacements rejected: ")
            assert "over max_energy_rise 0.3 eV/atom" in cands.stopped[s]
        else:
            assert s not in cands.stopped


def test_energy_cap_redraws_with_a_smaller_std_before_dropping(trained_members, nh3_emt_data):
    committee = Committee(trained_members[:2])
    seeds = Seeds.from_arrays(nh3_emt_data, np.arange(4))
    cap, std = 0.1, 0.15  # eV/atom, Å: most first draws lie above the cap
    first = random_displacement(
        committee,
        seeds,
        RandomDisplacementSettings(std=std, n_per_seed=10),
        np.random.default_rng(0),
    )
    below = _rise(committee, seeds, first) <= cap
    dropped = random_displacement(
        committee,
        seeds,
        RandomDisplacementSettings(std=std, n_per_seed=10, max_energy_rise=cap, max_redraws=0),
        np.random.default_rng(0),
    )
    settings = RandomDisplacementSettings(std=std, n_per_seed=10, max_energy_rise=cap)
    cands = random_displacement(committee, seeds, settings, np.random.default_rng(0))
    assert len(dropped) == below.sum() < 20 and len(cands) == 40  # none is left above the cap
    assert not cands.stopped
    assert np.all(_rise(committee, seeds, cands) <= cap)
    assert_scores_match_committee(committee, cands)
    # copies below the cap at once keep the first draw; each redrawn one moved less than the
    # draw it replaced
    x, x0 = cands.positions.reshape(40, 4, 3), first.positions.reshape(40, 4, 3)
    np.testing.assert_array_equal(x[below], x0[below])
    origin = np.repeat(seeds.positions.reshape(4, 4, 3), 10, axis=0)
    moved, moved0 = (np.sqrt(((y - origin) ** 2).mean(axis=(1, 2))) for y in (x, x0))  # rms, Å
    assert np.all(moved[~below] < moved0[~below])
    # a cap no copy reaches changes nothing: the first draw is the same with and without one
    loose = RandomDisplacementSettings(std=std, n_per_seed=10, max_energy_rise=10.0)
    same = random_displacement(committee, seeds, loose, np.random.default_rng(0))
    np.testing.assert_array_equal(same.positions, first.positions)


def test_candidates_of_two_strategies_concatenate_in_order_with_both_stop_reasons():
    from advloop.adversarial.structures import Candidates

    nh3 = molecule("NH3")
    moved = nh3.copy()
    moved.positions += 0.05

    a = Candidates.from_atoms([nh3], [0], [0.1], [0.2], [1.0], stopped={1: "clash"})
    b = Candidates.from_atoms(
        [moved, nh3], [1, 0], [0.3, 0.4], [0.5, 0.6], [2.0, 3.0], {1: "upper"}
    )
    both = Candidates.concatenate({"adversarial": a, "md": b})
    assert len(both) == 3 and both.parent.tolist() == [0, 1, 0]
    assert both.sigma_f_mean.tolist() == [0.1, 0.3, 0.4]
    np.testing.assert_array_equal(both.positions[4:8], moved.positions)
    assert both.stopped == {1: "adversarial: clash; md: upper"}
    assert Candidates.concatenate({"md": b}) is b
    empty = Candidates.concatenate(
        {"adversarial": Candidates.empty({0: "x"}), "md": Candidates.empty()}
    )
    assert len(empty) == 0 and empty.stopped == {0: "adversarial: x"}
