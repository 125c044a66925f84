"""Content-addressed labels: nothing computed twice, nothing lost, any ASE calculator."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.calculator import CalculationFailed
from ase.calculators.emt import EMT

from advloop.calculators.factory import (
    EMTLabels,
    PeriodicPySCFLabels,
    PySCFLabels,
    PythonLabels,
    TBLiteLabels,
    import_factory,
    make_calculator,
)
from advloop.calculators.label_store import LabelStore, label_key
from advloop.calculators.labeller import label_structures
from tests.conftest import displaced


class CountingEMT(EMT):
    """EMT (a stand-in oracle) that counts its calculations and fails on request."""

    def __init__(self, fail_below: float | None = None):
        super().__init__()
        self.calls = 0
        self.fail_below = fail_below

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        self.calls += 1
        if self.fail_below is not None and atoms.positions[0, 2] < self.fail_below:
            raise CalculationFailed("refused on purpose")
        super().calculate(atoms, properties, system_changes)


def _structures(n: int, seed: int = 0):
    return displaced(molecule("NH3"), n, 0.05, np.random.default_rng(seed))


THEORY = {"calculator": "emt"}


def test_labels_are_computed_once_and_read_back_identically(tmp_path):
    structures = _structures(4)
    store = LabelStore(tmp_path / "labels")
    calc = CountingEMT()
    first = label_structures(structures, calc, store, THEORY)
    assert calc.calls == 4 and len(store) == 4 and not any(o.cached for o in first)
    again = label_structures(structures + _structures(1, seed=9), calc, store, THEORY)
    assert calc.calls == 5  # only the new structure was computed
    assert [o.cached for o in again] == [True] * 4 + [False]
    for a, b in zip(first, again):
        assert a.energy == b.energy and np.array_equal(a.forces, b.forces)
    assert not list((tmp_path / "labels").rglob("*.tmp*"))


def test_other_settings_or_geometry_give_another_key(tmp_path):
    atoms = _structures(1)[0]
    key = label_key(atoms, THEORY)
    assert label_key(atoms, {"calculator": "emt", "x": 1}) != key
    moved = atoms.copy()
    moved.positions[0, 0] += 1e-5
    assert label_key(moved, THEORY) != key
    noisy = atoms.copy()
    noisy.positions[0, 0] += 1e-9  # below the hash's 1e-6 Å resolution
    assert label_key(noisy, THEORY) == key
    assert label_key(atoms, {"x": 1, "calculator": "emt"}) == label_key(
        atoms, {"calculator": "emt", "x": 1}
    )


def test_failures_are_stored_and_not_retried(tmp_path):
    structures = _structures(3)
    threshold = sorted(a.positions[0, 2] for a in structures)[1]  # the lowest one fails
    store = LabelStore(tmp_path)
    calc = CountingEMT(fail_below=threshold)
    out = label_structures(structures, calc, store, THEORY)
    assert sum(not o.ok for o in out) == 1
    again = label_structures(structures, calc, store, THEORY)
    assert calc.calls == 3
    assert [o.error for o in again] == [o.error for o in out]


def test_an_unreadable_label_file_is_recomputed(tmp_path):
    atoms = _structures(1)[0]
    store = LabelStore(tmp_path)
    calc = CountingEMT()
    label_structures([atoms], calc, store, THEORY)
    path = next(tmp_path.rglob("*.npz"))
    path.write_bytes(path.read_bytes()[:40])  # a torn write
    fresh = CountingEMT()
    out = label_structures([atoms], fresh, store, THEORY)
    assert fresh.calls == 1 and out[0].ok and not out[0].cached
    assert label_structures([atoms], fresh, store, THEORY)[0].cached  # stored again


def test_store_needs_theory():
    with pytest.raises(ValueError, match="theory"):
        label_structures(_structures(1), EMT(), LabelStore("/nonexistent"), None)


def test_tblite_labels_have_forces_equal_to_minus_the_energy_gradient():
    calc, theory, name = make_calculator(TBLiteLabels())
    assert name == "GFN2-xTB" and theory["method"] == "GFN2-xTB"
    atoms = _structures(1)[0]
    out = label_structures([atoms], calc)[0]
    h = 1e-4
    for atom, comp in [(0, 2), (1, 0), (3, 1)]:
        energies = []
        for sign in (1, -1):
            shifted = atoms.copy()
            shifted.positions[atom, comp] += sign * h
            energies.append(label_structures([shifted], calc)[0].energy)
        assert out.forces[atom, comp] == pytest.approx(
            -(energies[0] - energies[1]) / (2 * h), abs=2e-4
        )


def test_python_calculator_by_import_path(tmp_path):
    calc, theory, name = make_calculator(PythonLabels(factory="ase.calculators.emt:EMT"))
    assert isinstance(calc, EMT) and name == "ase.calculators.emt:EMT"
    assert theory == {"calculator": "python", "python": "ase.calculators.emt:EMT", "options": {}}
    with pytest.raises(ValueError, match="cannot import"):
        import_factory("no_such_package.module:thing")
    with pytest.raises(ValueError, match="no callable"):
        import_factory("ase.calculators.emt:NoSuchThing")
    with pytest.raises(ValueError, match="package.module:callable"):
        PythonLabels(factory="no_colon")
    with pytest.raises(TypeError):
        EMTLabels(factory="x:y")  # an EMT labeller has no factory


def test_pyscf_theory_ignores_settings_that_do_not_change_numbers():
    _, a, _ = make_calculator(PySCFLabels(verbose=0, max_memory_mb=1000))
    _, b, _ = make_calculator(PySCFLabels(verbose=4, max_memory_mb=4000))
    _, c, _ = make_calculator(PySCFLabels(basis="STO-3G"))
    assert a == b and a != c


def test_periodic_pyscf_from_the_factory():
    from advloop.calculators.pyscf_periodic import PeriodicPySCFCalculator, PeriodicPySCFSettings

    settings = PeriodicPySCFSettings(ke_cutoff=100.0)
    calc, theory, name = make_calculator(PeriodicPySCFLabels(ke_cutoff=100.0))
    assert calc.settings == settings
    assert isinstance(calc, PeriodicPySCFCalculator) and name == settings.level_of_theory
    assert theory["calculator"] == "pyscf_periodic" and theory["ke_cutoff"] == 100.0
    assert "verbose" not in theory


def test_concurrent_writers_of_one_label_never_leave_it_broken(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    store = LabelStore(tmp_path)
    key = "ab" + "0" * 62
    forces = np.arange(12.0).reshape(4, 3)

    def write(k: int) -> None:
        for _ in range(20):
            store.put(key, {"calculator": "test"}, -1.5, forces, None, 0.1)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(8)))
    label = store.get(key)
    assert label.energy == -1.5 and np.array_equal(label.forces, forces)
    # a temporary file left by a killed writer is not a label
    (tmp_path / "ab" / f"{key}.123-456.tmp.npz").write_bytes(b"partial")
    assert len(store) == 1


def _poison(store: LabelStore, key: str, energy: float, forces: np.ndarray) -> None:
    """Write a label file as an older advloop did for a broken calculator: a "success"
    (empty error) holding whatever it returned, in the store's layout."""
    path = store.root / key[:2] / f"{key}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        energy=np.float64(energy),
        forces=np.asarray(forces, dtype=np.float64),
        error=np.str_(""),
        seconds=np.float64(0.5),
        theory=np.str_('{"calculator":"emt"}'),
    )


@pytest.mark.parametrize(
    "poison",
    ["nan_energy", "inf_force", "wrong_n_atoms", "four_columns", "flat_forces", "huge_force"],
)
def test_a_poisoned_label_file_is_recomputed(tmp_path, poison):
    atoms = _structures(1)[0]
    key = label_key(atoms, THEORY)
    store = LabelStore(tmp_path)
    energy, forces = -1.0, np.zeros((len(atoms), 3))
    if poison == "nan_energy":
        energy = np.nan
    elif poison == "inf_force":
        forces[2, 1] = -np.inf
    elif poison == "wrong_n_atoms":
        forces = forces[:-1]
    elif poison == "four_columns":
        forces = np.zeros((len(atoms), 4))
    elif poison == "flat_forces":
        forces = forces.ravel()
    elif poison == "huge_force":
        forces[0, 0] = 1e9
    _poison(store, key, energy, forces)

    calc = CountingEMT()
    [out] = label_structures([atoms], calc, store, THEORY)

    assert calc.calls == 1 and out.ok and not out.cached
    reference = atoms.copy()
    reference.calc = EMT()
    assert out.energy == pytest.approx(reference.get_potential_energy())
    np.testing.assert_allclose(out.forces, reference.get_forces())
    healed = store.get(key, n_atoms=len(atoms))  # the file is replaced by the valid label
    assert healed.energy == out.energy and np.array_equal(healed.forces, out.forces)
    assert label_structures([atoms], calc, store, THEORY)[0].cached and calc.calls == 1


def test_get_never_returns_an_invalid_success(tmp_path):
    store = LabelStore(tmp_path)
    nan_key, short_key, good_key = "aa" + "0" * 62, "ab" + "0" * 62, "ac" + "0" * 62
    _poison(store, nan_key, np.nan, np.zeros((4, 3)))
    _poison(store, short_key, -1.0, np.zeros((3, 3)))
    _poison(store, good_key, -1.0, np.ones((4, 3)))
    assert store.get(nan_key) is None and store.get(nan_key, n_atoms=4) is None
    # the number of atoms is not in the file: only a caller who knows it can check it
    assert store.get(short_key).forces.shape == (3, 3)
    assert store.get(short_key, n_atoms=4) is None
    assert store.get(good_key, n_atoms=4).energy == -1.0
    assert store.get(good_key, n_atoms=4).forces.shape == (4, 3)


def test_an_invalid_success_is_not_stored(tmp_path):
    store = LabelStore(tmp_path)
    with pytest.raises(ValueError, match="energy is nan"):
        store.put("ab" + "0" * 62, THEORY, float("nan"), np.zeros((4, 3)), None, 0.1)
    with pytest.raises(ValueError, match=r"forces have shape \(4,\)"):
        store.put("ab" + "0" * 62, THEORY, -1.0, np.zeros(4), None, 0.1)
    assert len(store) == 0
