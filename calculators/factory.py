"""Which calculator labels a run, and the settings that identify its level of theory.

``labels.calculator`` picks one of:

- ``pyscf``: :class:`~calculators.pyscf_calculator.PySCFCalculator` with the run's ``dft``
  settings (DFT or Hartree-Fock, molecules);
- ``pyscf_periodic``: :class:`~calculators.pyscf_periodic.PeriodicPySCFCalculator` with the
  run's ``periodic_dft`` settings (Γ-point Kohn-Sham with GTH pseudopotentials, for
  zeolites and other cells; expensive, meant for cluster nodes);
- ``tblite``: GFN2-xTB (or GFN1-xTB, IPEA1-xTB) through tblite's ASE calculator, with the
  charge and multiplicity of the ``dft`` settings: a fast semi-empirical choice for
  screening and laptop-sized examples;
- ``emt``: ASE's effective-medium theory, a toy for tests and demonstrations;
- ``python``: a site's own calculator, ``package.module:factory`` called with
  ``labels.options`` as keyword arguments and returning an ASE calculator. The import
  path is trusted configuration: it runs code, so only name one you trust.

The *theory* mapping returned with each calculator holds every setting that changes the
numbers; it keys the content-addressed label store.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ase.calculators.calculator import BaseCalculator

from calculators.pyscf_calculator import PySCFCalculator, PySCFSettings
from calculators.pyscf_periodic import PeriodicPySCFCalculator, PeriodicPySCFSettings

__all__ = ["LabelSettings", "import_factory", "level_of_theory", "make_calculator",
           "theory_settings"]

# PySCF settings that change cost or robustness but not the converged numbers.
_NOT_THEORY = {"verbose", "max_memory_mb", "max_cycle", "scf_ladder", "reuse_density", "threads"}


@dataclass(frozen=True)
class LabelSettings:
    """How structures are labelled (see the module docstring)."""

    __pydantic_config__ = {"extra": "forbid"}

    calculator: Literal["pyscf", "pyscf_periodic", "tblite", "emt", "python"] = "pyscf"
    tblite_method: Literal["GFN2-xTB", "GFN1-xTB", "IPEA1-xTB"] = "GFN2-xTB"
    python: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.calculator == "python":
            if not self.python or ":" not in self.python:
                raise ValueError("labels.python must name a factory as 'package.module:callable' "
                                 "when labels.calculator is 'python'")
        elif self.python is not None or self.options:
            raise ValueError("labels.python and labels.options are for labels.calculator: python")


def import_factory(path: str):
    """The callable named by ``package.module:callable``; ValueError if there is none."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"labels.python: cannot import module {module_name!r}: {err}") from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"labels.python: {module_name!r} has no callable {attr!r}")
    return factory


def level_of_theory(labels: LabelSettings, dft: PySCFSettings,
                    periodic_dft: PeriodicPySCFSettings | None = None) -> str:
    """A short label of the level of theory, e.g. ``RKS/PBE/6-31G*`` or ``GFN2-xTB``."""
    periodic_dft = periodic_dft or PeriodicPySCFSettings()
    return {"pyscf": dft.level_of_theory, "pyscf_periodic": periodic_dft.level_of_theory,
            "tblite": labels.tblite_method, "emt": "EMT",
            "python": labels.python}[labels.calculator]


def theory_settings(labels: LabelSettings, dft: PySCFSettings,
                    periodic_dft: PeriodicPySCFSettings | None = None) -> dict:
    """Every setting of the run's labeller that changes the numbers it computes (JSON-able;
    it keys the label store and identifies a run's level of theory). Builds no calculator."""
    periodic_dft = periodic_dft or PeriodicPySCFSettings()
    if labels.calculator == "pyscf":
        return {"calculator": "pyscf",
                **{k: v for k, v in asdict(dft).items() if k not in _NOT_THEORY}}
    if labels.calculator == "pyscf_periodic":
        return {"calculator": "pyscf_periodic",
                **{k: v for k, v in asdict(periodic_dft).items() if k not in _NOT_THEORY}}
    if labels.calculator == "tblite":
        return {"calculator": "tblite", "method": labels.tblite_method,
                "charge": dft.charge, "multiplicity": dft.spin + 1}
    if labels.calculator == "emt":
        return {"calculator": "emt"}
    return {"calculator": "python", "python": labels.python, "options": labels.options}


def make_calculator(labels: LabelSettings, dft: PySCFSettings,
                    periodic_dft: PeriodicPySCFSettings | None = None,
                    ) -> tuple[BaseCalculator, dict, str]:
    """(calculator, theory settings, level-of-theory label) for a run.

    Raises ValueError when a ``python`` factory cannot be imported or does not return an
    ASE calculator.
    """
    periodic_dft = periodic_dft or PeriodicPySCFSettings()
    name = level_of_theory(labels, dft, periodic_dft)
    if labels.calculator == "pyscf":
        calc = PySCFCalculator(settings=dft)
        theory = {"calculator": "pyscf",
                  **{k: v for k, v in asdict(dft).items() if k not in _NOT_THEORY}}
        return calc, theory, name
    if labels.calculator == "pyscf_periodic":
        theory = {"calculator": "pyscf_periodic",
                  **{k: v for k, v in asdict(periodic_dft).items() if k not in _NOT_THEORY}}
        return PeriodicPySCFCalculator(settings=periodic_dft), theory, name
    if labels.calculator == "tblite":
        from tblite.ase import TBLite

        calc = TBLite(method=labels.tblite_method, charge=dft.charge,
                      multiplicity=dft.spin + 1, verbosity=0)
        theory = {"calculator": "tblite", "method": labels.tblite_method,
                  "charge": dft.charge, "multiplicity": dft.spin + 1}
        return calc, theory, name
    if labels.calculator == "emt":
        from ase.calculators.emt import EMT

        return EMT(), {"calculator": "emt"}, name
    factory = import_factory(labels.python)
    calc = factory(**labels.options)
    if not isinstance(calc, BaseCalculator):
        raise ValueError(f"labels.python: {labels.python} returned {type(calc).__name__}, "
                         "not an ASE calculator")
    theory = {"calculator": "python", "python": labels.python, "options": labels.options}
    return calc, theory, name
