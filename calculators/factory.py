"""The labellers a run can choose, each a frozen settings class with a ``kind``, and the
settings that identify its level of theory.

``labels.kind`` picks one of:

- ``pyscf`` (:class:`PySCFLabels`): :class:`~advloop.calculators.pyscf_calculator.PySCFCalculator`
  with the fields of :class:`~advloop.calculators.pyscf_calculator.PySCFSettings` (DFT or
  Hartree-Fock, molecules). The default.
- ``pyscf_periodic`` (:class:`PeriodicPySCFLabels`):
  :class:`~advloop.calculators.pyscf_periodic.PeriodicPySCFCalculator` with the fields of
  :class:`~advloop.calculators.pyscf_periodic.PeriodicPySCFSettings` (Γ-point Kohn-Sham with
  GTH pseudopotentials, for zeolites and other cells; expensive, meant for cluster nodes);
- ``tblite`` (:class:`TBLiteLabels`): GFN2-xTB (or GFN1-xTB, IPEA1-xTB) through tblite's
  ASE calculator, with its own ``charge`` and ``uhf`` (unpaired electrons): a fast
  semi-empirical choice for screening and laptop-sized examples;
- ``emt`` (:class:`EMTLabels`): ASE's effective-medium theory, a toy for tests and
  demonstrations;
- ``python`` (:class:`PythonLabels`): a site's own calculator, ``package.module:callable``
  (``factory``) called with ``options`` as keyword arguments and returning an ASE
  calculator. The import path is trusted configuration: it runs code, so only name one
  you trust. Its pre-flight check imports the module and calls the factory
  (:func:`python_calculator`), computing nothing.

Each labeller owns its pre-flight checks (``preflight(structures)``, run when a config is
validated, computing nothing): the elements it can treat (EMT only those of ASE's
parameter table, tblite's xTB methods H to Rn, Z 1-86, PySCF the elements of its basis
set, periodic PySCF those of its basis set and GTH pseudopotential family), whether it
treats molecules or cells, and the electron count its charge and spin allow.

Each labeller's ``theory()`` holds every setting that changes the numbers; it keys the
content-addressed label store and a run folder's fingerprint, so its mapping for a given
level of theory must never change (tests/calculators/test_labellers.py pins it).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from advloop.calculators.pyscf_calculator import PySCFCalculator, PySCFSettings
from advloop.calculators.pyscf_periodic import PeriodicPySCFCalculator, PeriodicPySCFSettings

__all__ = [
    "EMTLabels",
    "Labeller",
    "PeriodicPySCFLabels",
    "PySCFLabels",
    "PythonLabels",
    "TBLiteLabels",
    "import_factory",
    "label_problems",
    "level_of_theory",
    "make_calculator",
    "python_calculator",
    "theory_settings",
]

# PySCF settings that change cost or robustness but not the converged numbers.
_NOT_THEORY = {"verbose", "max_memory_mb", "max_cycle", "scf_ladder", "reuse_density", "threads"}


def _electron_problems(
    structures: Sequence[Atoms], charge: int, spin: int | None, spin_key: str, spin_name: str
) -> list[str]:
    """The electron count that ``labels.charge`` leaves, and whether ``spin`` unpaired
    electrons (2S; None: not checked) fit it."""
    if not structures or len(structures[0]) == 0:
        return []
    protons = int(structures[0].numbers.sum())
    n_electrons = protons - charge
    if n_electrons <= 0:
        return [
            f"labels.charge {charge} leaves {n_electrons} electrons ({protons} protons); "
            f"the charge must be below {protons} (it is the total charge in e: 0 for a "
            "neutral system, 1 for a cation)"
        ]
    if spin is not None and (n_electrons - spin) % 2:
        return [
            f"labels.{spin_key} ({spin_name} = {spin}) cannot fit {n_electrons} electrons "
            f"(charge {charge}): {spin_name} must be {'odd' if n_electrons % 2 else 'even'} "
            "(it counts the unpaired electrons), or change labels.charge"
        ]
    return []


def _symbols(structures: Sequence[Atoms]) -> list[str]:
    return sorted({s for atoms in structures for s in atoms.get_chemical_symbols()} - {"X"})


@dataclass(frozen=True)
class PySCFLabels(PySCFSettings):
    """Molecular DFT or Hartree-Fock labels by PySCF: the fields of
    :class:`~advloop.calculators.pyscf_calculator.PySCFSettings` (``spin`` is 2S, the number
    of unpaired electrons; ``charge`` in e)."""

    kind: Literal["pyscf"] = "pyscf"

    def settings(self) -> PySCFSettings:
        """The calculator's settings (these fields without ``kind``)."""
        return PySCFSettings(**{f.name: getattr(self, f.name) for f in fields(PySCFSettings)})

    def theory(self) -> dict:
        return {
            "calculator": "pyscf",
            **{k: v for k, v in asdict(self.settings()).items() if k not in _NOT_THEORY},
        }

    def make_calculator(self) -> BaseCalculator:
        return PySCFCalculator(settings=self.settings())

    def preflight(self, structures: Sequence[Atoms]) -> list[str]:
        """A molecule (no periodic cell), with an electron count that ``spin`` fits, of
        elements the basis set covers."""
        problems = [
            f"system.structures frame {k}: a periodic cell cannot be labelled by the "
            "molecular PySCF calculator; choose labels.kind: pyscf_periodic or tblite "
            "(or your own: python)"
            for k, atoms in enumerate(structures)
            if atoms.pbc.any()
        ]
        problems += _electron_problems(structures, self.charge, self.spin, "spin", "2S")
        return problems + _pyscf_problems(self.basis, _symbols(structures))


@dataclass(frozen=True)
class PeriodicPySCFLabels(PeriodicPySCFSettings):
    """Γ-point Kohn-Sham labels of periodic cells by PySCF: the fields of
    :class:`~advloop.calculators.pyscf_periodic.PeriodicPySCFSettings`."""

    kind: Literal["pyscf_periodic"] = "pyscf_periodic"

    def settings(self) -> PeriodicPySCFSettings:
        """The calculator's settings (these fields without ``kind``)."""
        return PeriodicPySCFSettings(
            **{f.name: getattr(self, f.name) for f in fields(PeriodicPySCFSettings)}
        )

    def theory(self) -> dict:
        return {
            "calculator": "pyscf_periodic",
            **{k: v for k, v in asdict(self.settings()).items() if k not in _NOT_THEORY},
        }

    def make_calculator(self) -> BaseCalculator:
        return PeriodicPySCFCalculator(settings=self.settings())

    def preflight(self, structures: Sequence[Atoms]) -> list[str]:
        """A periodic cell, with an electron count that ``spin`` fits, of elements the basis
        set and pseudopotential family cover."""
        problems = [
            f"system.structures frame {k}: labels.kind pyscf_periodic needs a periodic "
            "cell (pbc and a cell in the structure file); use labels.kind: pyscf for a "
            "molecule"
            for k, atoms in enumerate(structures)
            if not atoms.pbc.any()
        ]
        problems += _electron_problems(structures, self.charge, self.spin, "spin", "2S")
        return problems + _periodic_pyscf_problems(self, _symbols(structures))


@dataclass(frozen=True)
class TBLiteLabels:
    """Semi-empirical tight-binding labels by tblite (Bannwarth, Ehlert & Grimme, JCTC 15,
    1652 (2019) for GFN2-xTB). ``charge``: total charge in e; ``uhf``: the number of
    unpaired electrons (tblite's multiplicity is ``uhf + 1``; with 0, tblite takes one
    unpaired electron for an odd electron count)."""

    __pydantic_config__ = {"extra": "forbid", "allow_inf_nan": False}

    kind: Literal["tblite"] = "tblite"
    method: Literal["GFN2-xTB", "GFN1-xTB", "IPEA1-xTB"] = "GFN2-xTB"
    charge: int = 0
    uhf: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.uhf, bool) or not isinstance(self.uhf, int) or self.uhf < 0:
            raise ValueError(
                f"uhf is the number of unpaired electrons, an integer >= 0; got {self.uhf!r}"
            )
        if isinstance(self.charge, bool) or not isinstance(self.charge, int):
            raise ValueError(f"charge must be an integer, got {self.charge!r}")

    @property
    def level_of_theory(self) -> str:
        return self.method

    def theory(self) -> dict:
        return {
            "calculator": "tblite",
            "method": self.method,
            "charge": self.charge,
            "multiplicity": self.uhf + 1,
        }

    def make_calculator(self) -> BaseCalculator:
        from tblite.ase import TBLite

        return TBLite(
            method=self.method, charge=self.charge, multiplicity=self.uhf + 1, verbosity=0
        )

    def preflight(self, structures: Sequence[Atoms]) -> list[str]:
        """Elements H to Rn, electrons left by the charge, and a ``uhf`` of the electron
        count's parity (tblite refuses an odd ``uhf`` on an even count and an even one
        above 0 on an odd count; ``uhf: 0`` on an odd count is one unpaired electron)."""
        problems = _electron_problems(
            structures, self.charge, self.uhf or None, "uhf", "the number of unpaired electrons"
        )
        return problems + _tblite_problems(self.method, _symbols(structures))


@dataclass(frozen=True)
class EMTLabels:
    """ASE's effective-medium theory (Jacobsen, Stoltze & Nørskov, Surf. Sci. 366, 394
    (1996)): a toy labeller for tests and demonstrations, no settings."""

    __pydantic_config__ = {"extra": "forbid", "allow_inf_nan": False}

    kind: Literal["emt"] = "emt"

    @property
    def level_of_theory(self) -> str:
        return "EMT"

    def theory(self) -> dict:
        return {"calculator": "emt"}

    def make_calculator(self) -> BaseCalculator:
        from ase.calculators.emt import EMT

        return EMT()

    def preflight(self, structures: Sequence[Atoms]) -> list[str]:
        """Elements of ASE's EMT parameter table only."""
        return _emt_problems(_symbols(structures))


@dataclass(frozen=True)
class PythonLabels:
    """A site's own calculator: ``factory`` names a ``package.module:callable`` that,
    called with ``options`` as keyword arguments, returns an ASE calculator. The module is
    imported from ``sys.path`` or else from the folder ``path`` (a config file's
    labeller: by default the config file's folder, where a ``my_calculator.py`` beside
    it is found without setting ``PYTHONPATH``)."""

    __pydantic_config__ = {"extra": "forbid", "allow_inf_nan": False}

    factory: str
    kind: Literal["python"] = "python"
    options: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or ":" not in self.factory:
            raise ValueError(
                "labels.factory must name a factory as 'package.module:callable' "
                "when labels.kind is 'python'"
            )

    @property
    def level_of_theory(self) -> str:
        return self.factory

    def theory(self) -> dict:
        return {"calculator": "python", "python": self.factory, "options": self.options}

    def make_calculator(self) -> BaseCalculator:
        return python_calculator(self)

    def preflight(self, structures: Sequence[Atoms]) -> list[str]:
        """The factory imports and builds a calculator from ``options`` (no compute)."""
        try:
            python_calculator(self)
        except ValueError as err:
            return [str(err)]
        return []


Labeller = PySCFLabels | PeriodicPySCFLabels | TBLiteLabels | EMTLabels | PythonLabels
"""A run's labeller, one of the kinds above (the config reads it as a union on ``kind``)."""


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
    frames = [
        f
        for f in traceback.extract_tb(err.__traceback__)[1:]  # [0]: the call here
        if not f.filename.startswith("<frozen importlib")
    ]
    return f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""


def _import(module_name: str, folder: str | None):
    """``module_name`` imported from ``sys.path``, or, where its top-level package is not
    there, from ``folder``. Only that package is found in ``folder``: ``sys.path`` is
    left as it is."""
    top = module_name.partition(".")[0]
    if folder is None or top in sys.modules or importlib.util.find_spec(top) is not None:
        return importlib.import_module(module_name)
    spec = importlib.machinery.PathFinder.find_spec(top, [folder])
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {top!r} on sys.path or in {folder}", name=top)
    package = importlib.util.module_from_spec(spec)
    sys.modules[top] = package
    try:
        spec.loader.exec_module(package)
    except BaseException:
        del sys.modules[top]
        raise
    return importlib.import_module(module_name)


def import_factory(path: str, folder: str | None = None):
    """The callable named by ``package.module:callable``, its module imported from
    ``sys.path`` or else from ``folder``.

    Raises ValueError, saying what to fix, when the module cannot be found, when importing
    it raises anything (a SyntaxError or any other exception in that module's own code,
    which is named with the file and line) or when it has no such callable.
    """
    module_name, _, attr = path.partition(":")
    try:
        module = _import(module_name, folder)
    except ImportError as err:
        where = f" or in {folder}" if folder is not None else ""
        raise ValueError(
            f"labels.factory: cannot import module {module_name!r}: {_brief(err)}; "
            "labels.factory must name a package.module:callable that this Python "
            f"can import from sys.path{where}: check the spelling, put the module "
            "beside the config file, or install the package"
        ) from err
    except (Exception, SystemExit) as err:  # the module's own code failed as it was imported
        raise ValueError(
            f"labels.factory: importing module {module_name!r} raised {_brief(err)}"
            f"{_raised_at(err)}; that is an error in the module's own code, not in "
            "advloop or the config: fix the module, or name another one"
        ) from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(
            f"labels.factory: module {module_name!r} has no callable {attr!r}; name a "
            "function or class it defines, as package.module:callable"
        )
    return factory


def python_calculator(labels: PythonLabels) -> BaseCalculator:
    """The calculator of a ``python`` labeller: its factory called with ``labels.options``
    as keyword arguments (this builds the calculator, it computes nothing).

    Raises ValueError, saying what to fix, when the factory cannot be imported
    (:func:`import_factory`), raises (a TypeError for an option it does not take), or
    returns something that is not an ASE calculator.
    """
    factory = import_factory(labels.factory, labels.path)
    options = ", ".join(sorted(labels.options)) or "none"
    try:
        calc = factory(**labels.options)
    except (Exception, SystemExit) as err:
        fix = (
            "give labels.options that its parameters take"
            if isinstance(err, TypeError)
            else "fix labels.options or the factory"
        )
        raise ValueError(
            f"labels.options: calling {labels.factory} with labels.options ({options}) "
            f"raised {_brief(err)}{_raised_at(err)}; {fix}"
        ) from err
    if not isinstance(calc, BaseCalculator):
        raise ValueError(
            f"labels.factory: {labels.factory} returned {type(calc).__name__}, not an "
            "ASE calculator (ase.calculators.calculator.BaseCalculator); make the "
            "factory return one, such as an instance of a Calculator subclass"
        )
    return calc


def _emt_problems(symbols: list[str]) -> list[str]:
    from ase.calculators.emt import parameters

    missing = [s for s in symbols if s not in parameters]
    if not missing:
        return []
    return [
        f"labels.kind: emt has no parameters for {', '.join(missing)} (ASE's EMT "
        f"covers {', '.join(sorted(parameters))} only); choose labels.kind: tblite or "
        "pyscf for this system"
    ]


def _tblite_problems(method: str, symbols: list[str]) -> list[str]:
    from ase.data import atomic_numbers

    missing = [s for s in symbols if atomic_numbers[s] > 86]
    if not missing:
        return []
    return [
        f"labels.method: {method} has no parameters for {', '.join(missing)} (tblite's "
        "xTB methods cover H to Rn, Z 1-86); choose labels.kind: pyscf for this system"
    ]


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
                out.append(
                    f"labels.basis {basis!r} has no functions for element {symbol}; check "
                    f"the basis name, or choose one that covers {symbol} (def2-SVP "
                    "covers H to Rn)"
                )
    return out


def _periodic_pyscf_problems(settings: PeriodicPySCFSettings, symbols: list[str]) -> list[str]:
    from pyscf.pbc.gto import basis as pbc_basis
    from pyscf.pbc.gto import pseudo as pbc_pseudo

    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for symbol in symbols:
            for key, name, load, fix in (
                (
                    "basis",
                    settings.basis,
                    pbc_basis.load,
                    "a GTH basis that covers it, such as gth-dzvp-molopt-sr",
                ),
                (
                    "pseudo",
                    settings.pseudo,
                    pbc_pseudo.load,
                    "a GTH family that covers it, such as gth-pbe",
                ),
            ):
                try:
                    found = bool(load(name, symbol))
                except Exception:
                    found = False
                if not found:
                    out.append(
                        f"labels.{key} {name!r} has nothing for element {symbol}; "
                        f"check the name, or choose {fix}"
                    )
    return out


def label_problems(labels: Labeller, structures: Sequence[Atoms]) -> list[str]:
    """What keeps ``labels`` from labelling ``structures`` (one message each, saying what
    to do; empty if nothing): the labeller's own pre-flight checks, computing nothing."""
    return labels.preflight(structures)


def level_of_theory(labels: Labeller) -> str:
    """A short label of the level of theory, e.g. ``RKS/PBE/6-31G*`` or ``GFN2-xTB``."""
    return labels.level_of_theory


def theory_settings(labels: Labeller) -> dict:
    """Every setting of the run's labeller that changes the numbers it computes (JSON-able;
    it keys the label store and identifies a run's level of theory). Builds no calculator."""
    return labels.theory()


def make_calculator(labels: Labeller) -> tuple[BaseCalculator, dict, str]:
    """(calculator, theory settings, level-of-theory label) for a run.

    Raises ValueError when a ``python`` factory cannot be imported, raises, or does not
    return an ASE calculator (see :func:`python_calculator`).
    """
    return labels.make_calculator(), labels.theory(), labels.level_of_theory
