"""The labellers a run can choose (calculators/factory.py): the theory mapping each gives,
which keys the label store and the run folder's fingerprint, and each one's own
pre-flight checks."""

from __future__ import annotations

import pytest
from ase import Atoms
from ase.build import bulk, molecule

from advloop.calculators.factory import (
    EMTLabels,
    PeriodicPySCFLabels,
    PySCFLabels,
    PythonLabels,
    TBLiteLabels,
    label_problems,
    level_of_theory,
    make_calculator,
    theory_settings,
)
from advloop.calculators.label_store import label_key

NH3 = molecule("NH3")
CU = bulk("Cu", "fcc", a=3.6, cubic=True)
CU3 = Atoms("Cu3", positions=[[0, 0, 0], [2.5, 0, 0], [1.25, 2.1, 0]])  # 87 electrons

# The theory mappings, levels of theory and label-store keys that the code before labels
# became kinds gave for the same levels of theory (computed with main at 94037f9, where
# they were theory_settings(LabelSettings(calculator=...), dft, periodic_dft)): a change
# would make every existing run folder refuse to resume and every stored label be
# recomputed.
PINNED = [
    (
        PySCFLabels(),
        {
            "calculator": "pyscf",
            "method": "RKS",
            "xc": "PBE",
            "basis": "6-31G*",
            "charge": 0,
            "spin": 0,
            "density_fit": False,
            "grid_level": 3,
            "conv_tol": 1e-09,
            "dispersion": None,
        },
        "RKS/PBE/6-31G*",
    ),
    (
        PySCFLabels(method="UKS", xc="B3LYP", basis="def2-SVP", charge=1, spin=1),
        {
            "calculator": "pyscf",
            "method": "UKS",
            "xc": "B3LYP",
            "basis": "def2-SVP",
            "charge": 1,
            "spin": 1,
            "density_fit": False,
            "grid_level": 3,
            "conv_tol": 1e-09,
            "dispersion": None,
        },
        "UKS/B3LYP/DEF2-SVP",
    ),
    (
        PeriodicPySCFLabels(),
        {
            "calculator": "pyscf_periodic",
            "method": "RKS",
            "xc": "PBE",
            "basis": "gth-szv",
            "pseudo": "gth-pbe",
            "charge": 0,
            "spin": 0,
            "ke_cutoff": None,
            "smearing": 0.0,
            "conv_tol": 1e-08,
        },
        "RKS-PBE/gth-szv/gth-pbe/Γ",
    ),
    (
        PeriodicPySCFLabels(xc="LDA", basis="gth-szv", smearing=0.01),
        {
            "calculator": "pyscf_periodic",
            "method": "RKS",
            "xc": "LDA",
            "basis": "gth-szv",
            "pseudo": "gth-pbe",
            "charge": 0,
            "spin": 0,
            "ke_cutoff": None,
            "smearing": 0.01,
            "conv_tol": 1e-08,
        },
        None,
    ),
    (
        TBLiteLabels(charge=1, uhf=1),  # before: dft.charge 1, dft.spin 1
        {"calculator": "tblite", "method": "GFN2-xTB", "charge": 1, "multiplicity": 2},
        "GFN2-xTB",
    ),
    (EMTLabels(), {"calculator": "emt"}, "EMT"),
    (
        PythonLabels(factory="ase.calculators.emt:EMT", options={"a": 1}),
        {"calculator": "python", "python": "ase.calculators.emt:EMT", "options": {"a": 1}},
        "ase.calculators.emt:EMT",
    ),
]

# label_key(structure, theory) of main at 94037f9 for these structures and settings.
PINNED_KEYS = [
    (
        PySCFLabels(method="RHF", basis="STO-3G"),
        NH3,
        "4e3d47427be88626a3f14d810cb0cf83e7f1a8a0b4d72c8a3b554f94d8e96e3c",
    ),
    (
        PeriodicPySCFLabels(xc="LDA", smearing=0.01),
        CU,
        "477d5a1d27936677043ce288f7136e248b472076f173246762a9b31b17b34c72",
    ),
    (
        TBLiteLabels(charge=1, uhf=1),
        NH3,
        "ff7ebe8707510872d5b863acad4a5e633a7f6683aff18e09eecceb7b1eece47f",
    ),
    (EMTLabels(), CU, "b2eb04c33aa2d578e19a8a9aace22918481d1167eba54175b165a03251ecb3c9"),
    (
        PythonLabels(factory="ase.calculators.emt:EMT", options={"asap_cutoff": True}),
        CU,
        "446f0b75291a339bf99e9996c07b8becc6b7a42e3dcb15099e26f3238c0a83c0",
    ),
]


@pytest.mark.parametrize(
    ("labels", "theory", "level"), PINNED, ids=[f"{p[0].kind}-{k}" for k, p in enumerate(PINNED)]
)
def test_theory_settings_are_those_of_before_kinds(labels, theory, level):
    assert theory_settings(labels) == theory
    assert list(theory_settings(labels)) == list(theory)  # the JSON keeps the order
    if level is not None:
        assert level_of_theory(labels) == level


@pytest.mark.parametrize(
    ("labels", "atoms", "key"), PINNED_KEYS, ids=[p[0].kind for p in PINNED_KEYS]
)
def test_label_store_keys_are_those_of_before_kinds(labels, atoms, key):
    assert label_key(atoms, theory_settings(labels)) == key


def test_make_calculator_gives_the_calculator_of_each_kind():
    from ase.calculators.emt import EMT
    from tblite.ase import TBLite

    from advloop.calculators.pyscf_calculator import PySCFCalculator, PySCFSettings

    calc, theory, level = make_calculator(PySCFLabels(method="RHF", basis="STO-3G"))
    assert isinstance(calc, PySCFCalculator) and level == "RHF/STO-3G"
    assert type(calc.settings) is PySCFSettings and calc.settings.basis == "STO-3G"
    assert isinstance(make_calculator(EMTLabels())[0], EMT)
    tb = make_calculator(TBLiteLabels(charge=1, uhf=1))[0]
    assert isinstance(tb, TBLite) and tb.parameters["multiplicity"] == 2
    assert isinstance(make_calculator(PythonLabels(factory="ase.calculators.emt:EMT"))[0], EMT)


def test_odd_electron_cu3_is_refused_by_pyscf_only():
    """87 electrons: PySCF with spin 0 cannot hold them and says so naming labels.spin;
    EMT, tblite (uhf 0 is one unpaired electron there) and a python calculator take them."""
    problems = label_problems(PySCFLabels(basis="def2-SVP"), [CU3])
    assert any(p.startswith("labels.spin (2S = 0) cannot fit 87 electrons") for p in problems)
    assert label_problems(PySCFLabels(method="UKS", basis="def2-SVP", spin=1), [CU3]) == []
    assert label_problems(EMTLabels(), [CU3]) == []
    assert label_problems(TBLiteLabels(), [CU3]) == []
    assert label_problems(PythonLabels(factory="ase.calculators.emt:EMT"), [CU3]) == []


def test_tblite_refuses_unpaired_electrons_of_the_wrong_parity():
    """tblite itself fails with 'Total number of electrons (33) and number unpaired
    electrons (2) is not compatible' on Cu3 with uhf 2; the check says so before a run."""
    problems = label_problems(TBLiteLabels(uhf=2), [CU3])
    assert len(problems) == 1 and problems[0].startswith("labels.uhf")
    assert "cannot fit 87 electrons" in problems[0]
    assert label_problems(TBLiteLabels(uhf=3), [CU3]) == []
    assert label_problems(TBLiteLabels(uhf=1), [NH3])[0].startswith("labels.uhf")
    atoms = CU3.copy()
    atoms.calc = make_calculator(TBLiteLabels(uhf=2))[0]
    with pytest.raises(Exception, match="not compatible"):
        atoms.get_potential_energy()


def test_each_labeller_checks_molecule_or_cell_and_elements():
    assert "pyscf_periodic" in label_problems(PySCFLabels(), [CU])[0]
    assert "needs a periodic cell" in label_problems(PeriodicPySCFLabels(), [NH3])[0]
    assert label_problems(
        EMTLabels(), [Atoms("SiH4", positions=[[0, 0, 0]] + [[1.5 * k, 0, 0] for k in range(1, 5)])]
    )[0].startswith("labels.kind: emt has no parameters for Si")
    assert label_problems(TBLiteLabels(), [Atoms("Og")])[0].startswith("labels.method: GFN2-xTB")
    assert label_problems(PythonLabels(factory="no_such_module_here:f"), [NH3])[0].startswith(
        "labels.factory: cannot import module 'no_such_module_here'"
    )
