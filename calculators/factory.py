"""Which calculator labels a run, and the settings that identify its level of theory.

``labels.calculator`` picks one of:

- ``pyscf``: :class:`~advloop.calculators.pyscf_calculator.PySCFCalculator` with the run's ``dft``
  settings (DFT or Hartree-Fock, molecules);
- ``pyscf_periodic``: :class:`~advloop.calculators.pyscf_periodic.PeriodicPySCFCalculator` with the
  run's ``periodic_dft`` settings (Γ-point Kohn-Sham with GTH pseudopotentials, for
  zeolites and other cells; expensive, meant for cluster nodes);
- ``tblite``: GFN2-xTB (or GFN1-xTB, IPEA1-xTB) through tblite's ASE calculator, with the
  charge and multiplicity of the ``dft`` settings: a fast semi-empirical choice for
  screening and laptop-sized examples;
- ``emt``: ASE's effective-medium theory, a toy for tests and demonstrations;
- ``python``: a site's own calculator, ``package.module:factory`` called with
  ``labels.options`` as keyword arguments and returning an ASE calculator. The import
  path is trusted configuration: it runs code, so only name one you trust. Validation
  imports the module and calls the factory (:func:`python_calculator`), computing nothing.

Each labeller says which elements it can treat (:func:`element_problems`, checked when a
config is validated): EMT only those of ASE's parameter table, tblite's xTB methods H to
Rn (Z 1-86), PySCF the elements of its basis set, and periodic PySCF those of its basis
set and GTH pseudopotential family.

The *theory* mapping returned with each calculator holds every setting that changes the
numbers; it keys the content-addressed label store.
"""

from __future__ import annotations

import importlib
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ase.calculators.calculator import BaseCalculator

from advloop.calculators.pyscf_calculator import PySCFCalculator, PySCFSettings
from advloop.calculators.pyscf_periodic import PeriodicPySCFCalculator, PeriodicPySCFSettings

__all__ = ["LabelSettings", "element_problems", "import_factory", "level_of_theory",
           "make_calculator", "python_calculator", "theory_settings"]

# PySCF settings that change cost or robustness but not the converged numbers.
_NOT_THEORY = {"verbose", "max_memory_mb", "max_cycle", "scf_ladder", "reuse_density", "threads"}


@dataclass(frozen=True)
class LabelSettings:
    """How structures are labelled (see the module docstring)."""

    __pydantic_config__ = {"extra": "forbid", "allow_inf_nan": False}

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


def _brief(err: BaseException) -> str:
    """``TypeError: message`` in one line of at most about 200 characters."""
    text = " ".join(str(err.msg if isinstance(err, SyntaxError) else err).split())
    text = text if len(text) <= 200 else text[:199] + "…"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _raised_at(err: BaseException) -> str:
    """Where in the code called from here ``err`` was raised (`` (file.py, line 3)``), for a
    message about the user's code; empty where it was raised by the call itself (a
    TypeError for a keyword the callable does not take)."""
    if isinstance(err, SyntaxError) and err.filename:
        return f" ({err.filename}, line {err.lineno})"
    frames = [f for f in traceback.extract_tb(err.__traceback__)[1:]  # [0]: the call here
              if not f.filename.startswith("<frozen importlib")]
    return f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""


def import_factory(path: str):
    """The callable named by ``package.module:callable``.

    Raises ValueError, saying what to fix, when the module cannot be found, when importing
    it raises anything (a SyntaxError or any other exception in that module's own code,
    which is named with the file and line) or when it has no such callable.
    """
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"labels.python: cannot import module {module_name!r}: {_brief(err)}; "
                         "labels.python must name a package.module:callable that this Python "
                         "can import: check the spelling, or install the package") from err
    except (Exception, SystemExit) as err:  # the module's own code failed as it was imported
        raise ValueError(f"labels.python: importing module {module_name!r} raised {_brief(err)}"
                         f"{_raised_at(err)}; that is an error in the module's own code, not in "
                         "advloop or the config: fix the module, or name another one") from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"labels.python: module {module_name!r} has no callable {attr!r}; name a "
                         "function or class it defines, as package.module:callable")
    return factory


def python_calculator(labels: LabelSettings) -> BaseCalculator:
    """The calculator of a ``python`` labeller: its factory called with ``labels.options``
    as keyword arguments (this builds the calculator, it computes nothing).

    Raises ValueError, saying what to fix, when the factory cannot be imported
    (:func:`import_factory`), raises (a TypeError for an option it does not take), or
    returns something that is not an ASE calculator.
    """
    factory = import_factory(labels.python)
    options = ", ".join(sorted(labels.options)) or "none"
    try:
        calc = factory(**labels.options)
    except (Exception, SystemExit) as err:
        fix = ("give labels.options that its parameters take" if isinstance(err, TypeError)
               else "fix labels.options or the factory")
        raise ValueError(f"labels.python: calling {labels.python} with labels.options ({options}) "
                         f"raised {_brief(err)}{_raised_at(err)}; {fix}") from err
    if not isinstance(calc, BaseCalculator):
        raise ValueError(f"labels.python: {labels.python} returned {type(calc).__name__}, not an "
                         "ASE calculator (ase.calculators.calculator.BaseCalculator); make the "
                         "factory return one, such as an instance of a Calculator subclass")
    return calc


def _emt_problems(symbols: list[str]) -> list[str]:
    from ase.calculators.emt import parameters

    missing = [s for s in symbols if s not in parameters]
    if not missing:
        return []
    return [f"labels.calculator: emt has no parameters for {', '.join(missing)} (ASE's EMT "
            f"covers {', '.join(sorted(parameters))} only); choose labels.calculator: tblite or "
            "pyscf for this system"]


def _tblite_problems(method: str, symbols: list[str]) -> list[str]:
    from ase.data import atomic_numbers

    missing = [s for s in symbols if atomic_numbers[s] > 86]
    if not missing:
        return []
    return [f"labels.tblite_method: {method} has no parameters for {', '.join(missing)} (tblite's "
            "xTB methods cover H to Rn, Z 1-86); choose labels.calculator: pyscf for this system"]


def _pyscf_problems(basis: str, symbols: list[str]) -> list[str]:
    from pyscf.gto import basis as pyscf_basis

    out = []
    with warnings.catch_warnings():  # PySCF suggests basis-set-exchange for a missing basis
        warnings.simplefilter("ignore")
        for symbol in symbols:
            try:
                if not pyscf_basis.load(basis, symbol):
                    raise KeyError(symbol)
            except Exception:
                out.append(f"dft.basis {basis!r} has no functions for element {symbol}; check "
                           f"the basis name, or choose one that covers {symbol} (def2-SVP "
                           "covers H to Rn)")
    return out


def _periodic_pyscf_problems(settings: PeriodicPySCFSettings, symbols: list[str]) -> list[str]:
    from pyscf.pbc.gto import basis as pbc_basis
    from pyscf.pbc.gto import pseudo as pbc_pseudo

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for symbol in symbols:
            for key, name, load, fix in (
                    ("basis", settings.basis, pbc_basis.load, "a GTH basis that covers it, such "
                     "as gth-dzvp-molopt-sr"),
                    ("pseudo", settings.pseudo, pbc_pseudo.load, "a GTH family that covers it, "
                     "such as gth-pbe")):
                try:
                    found = bool(load(name, symbol))
                except Exception:
                    found = False
                if not found:
                    out.append(f"periodic_dft.{key} {name!r} has nothing for element {symbol}; "
                               f"check the name, or choose {fix}")
    return out


def element_problems(labels: LabelSettings, dft: PySCFSettings,
                     periodic_dft: PeriodicPySCFSettings, symbols: list[str]) -> list[str]:
    """What the run's labeller cannot treat among the elements ``symbols`` (one message
    each, saying what to choose instead); empty when it treats them all. A ``python``
    labeller is checked by building it (:func:`python_calculator`)."""
    if labels.calculator == "emt":
        return _emt_problems(symbols)
    if labels.calculator == "tblite":
        return _tblite_problems(labels.tblite_method, symbols)
    if labels.calculator == "pyscf":
        return _pyscf_problems(dft.basis, symbols)
    if labels.calculator == "pyscf_periodic":
        return _periodic_pyscf_problems(periodic_dft, symbols)
    return []


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

    Raises ValueError when a ``python`` factory cannot be imported, raises, or does not
    return an ASE calculator (see :func:`python_calculator`).
    """
    periodic_dft = periodic_dft or PeriodicPySCFSettings()
    theory = theory_settings(labels, dft, periodic_dft)
    name = level_of_theory(labels, dft, periodic_dft)
    if labels.calculator == "pyscf":
        return PySCFCalculator(settings=dft), theory, name
    if labels.calculator == "pyscf_periodic":
        return PeriodicPySCFCalculator(settings=periodic_dft), theory, name
    if labels.calculator == "tblite":
        from tblite.ase import TBLite

        calc = TBLite(method=labels.tblite_method, charge=dft.charge,
                      multiplicity=dft.spin + 1, verbosity=0)
        return calc, theory, name
    if labels.calculator == "emt":
        from ase.calculators.emt import EMT

        return EMT(), theory, name
    return python_calculator(labels), theory, name
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
    calc = python_calculator(labels)
    theory = {"calculator": "python", "python": labels.python, "options": labels.options}
    return calc, theory, name
