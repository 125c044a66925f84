"""One vocabulary of value constraints, read by pydantic and by the settings dataclasses alike.

A settings field says what it accepts in its annotation, with ``annotated_types`` metadata
(``Gt``, ``Ge``, ``Lt``, ``Le``, ``Interval``), which pydantic reads natively when the run
config loads::

    @dataclass(frozen=True)
    class AttackSettings:
        __pydantic_config__ = {"extra": "forbid", "allow_inf_nan": False}

        temperature: PositiveFloat = field(default=1000.0, metadata={"unit": "K"})
        n_steps: PositiveInt = 60
        uncertainty: Literal["forces", "energy"] = "forces"

        def __post_init__(self) -> None:
            check_fields(self, "attack")

:func:`check_fields` enforces the same annotations where the dataclass is built directly in
Python, without pydantic (science code and tests), and raises ValueError naming the field,
the value, the rule and the unit: ``attack.n_steps = 0: must be ≥ 1``. It also refuses a
value of the wrong kind (an ``int`` field given 2.5 or True, a ``Literal`` field given a
name outside it, a ``bool`` field given 1) and, where the class's ``__pydantic_config__``
says ``allow_inf_nan: False`` as pydantic does, infinity and NaN. Rules that tie several
fields together stay explicit code in ``__post_init__``, after ``check_fields``.

A field's unit is ``dataclasses.field(metadata={"unit": "Å"})`` (what the config's error
messages read) or an ``annotated_types.Unit("Å")`` in the annotation; a short explanation for
messages is an ``annotated_types.doc("2S, the number of unpaired electrons")``.

This module imports nothing from advloop, so every layer can use it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Iterable
from functools import cache
from typing import Annotated, Any, Literal, Union

import numpy as np
from annotated_types import (
    BaseMetadata,
    DocInfo,
    Ge,
    GroupedMetadata,
    Gt,
    Interval,
    Le,
    Lt,
    Unit,
    doc,
)

__all__ = [
    "Fraction",
    "Ge",
    "Gt",
    "Interval",
    "Le",
    "Lt",
    "NonNegativeFloat",
    "NonNegativeInt",
    "OpenFraction",
    "Percentile",
    "PositiveFloat",
    "PositiveInt",
    "Probability",
    "Share",
    "Unit",
    "UnitInterval",
    "check_fields",
    "describe_bound",
    "doc",
    "field_units",
    "rule_of",
    "rule_of_annotation",
]

#: > 0, such as a temperature (K), a learning rate, a cutoff (Å).
PositiveFloat = Annotated[float, Gt(0)]
#: ≥ 0, such as a noise amplitude (Å) or a friction (1/fs), where 0 switches it off.
NonNegativeFloat = Annotated[float, Ge(0)]
#: ≥ 1, such as a number of steps, epochs or iterations.
PositiveInt = Annotated[int, Ge(1)]
#: ≥ 0, such as an angular momentum or a number of warm-up epochs.
NonNegativeInt = Annotated[int, Ge(0)]
#: in [0, 1].
Fraction = Annotated[float, Interval(ge=0, le=1)]
#: in [0, 1]: a probability.
Probability = Fraction
#: in [0, 1): a share that cannot be the whole (a validation split).
UnitInterval = Annotated[float, Interval(ge=0, lt=1)]
#: in (0, 1): a factor that must shrink without vanishing (a learning-rate decay).
OpenFraction = Annotated[float, Interval(gt=0, lt=1)]
#: in (0, 1]: a share that may be the whole but not nothing (a step-size factor).
Share = Annotated[float, Interval(gt=0, le=1)]
#: in [0, 100]: a percentile.
Percentile = Annotated[float, Interval(ge=0, le=100)]

_NONE = type(None)
_SYMBOL = {Gt: (">", "gt"), Ge: ("≥", "ge"), Lt: ("<", "lt"), Le: ("≤", "le")}


@dataclasses.dataclass(frozen=True)
class _Rule:
    """What one field accepts: its kind (``int``, ``float``, ``bool`` or a Literal's values),
    its bounds, whether None is allowed, its unit and explanation."""

    kind: type | tuple
    bounds: tuple[BaseMetadata, ...] = ()
    optional: bool = False
    unit: str | None = None
    explanation: str | None = None

    def describe(self, noun: Literal["", "kind", "finite"] = "kind") -> str:
        """The rule in words: ``an integer ≥ 1``, ``a finite number in [0, 1) Hartree``,
        ``one of 'forces', 'energy'``, each with ``, or None`` where None is allowed.
        ``noun=""`` leaves out the kind (for a value of the right kind out of bounds:
        ``≥ 1``), ``"finite"`` says a number must be finite."""
        if isinstance(self.kind, tuple):
            text = "one of " + ", ".join(repr(v) for v in self.kind)
        else:
            number = "a finite number" if noun == "finite" else "a number"
            word = (
                {int: "an integer", float: number, bool: "true or false"}[self.kind] if noun else ""
            )
            text = " ".join(part for part in (word, _bounds_text(self.bounds)) if part)
        if self.unit and self.kind in (int, float):
            text += f" {self.unit}"
        if self.optional:
            text += ", or None"
        return text


def _bounds_text(bounds: Iterable[BaseMetadata]) -> str:
    """``> 0``, ``≥ 1``, ``in [0, 1)`` for a field's bounds ('' for none)."""
    by_kind = {type(b): b for b in bounds}
    low = by_kind.get(Gt) or by_kind.get(Ge)
    high = by_kind.get(Lt) or by_kind.get(Le)
    if low is not None and high is not None:
        lo, hi = getattr(low, _SYMBOL[type(low)][1]), getattr(high, _SYMBOL[type(high)][1])
        return (
            f"in {'(' if isinstance(low, Gt) else '['}{_limit(lo)}, "
            f"{_limit(hi)}{')' if isinstance(high, Lt) else ']'}"
        )
    one = low if low is not None else high
    if one is None:
        return ""
    symbol, attr = _SYMBOL[type(one)]
    return f"{symbol} {_limit(getattr(one, attr))}"


def _limit(value: Any) -> str:
    """A bound as a rule shows it: ``0`` (pydantic reports a float field's bound 0 as 0.0),
    ``1e-09``, ``100``."""
    return f"{float(value):g}" if isinstance(value, numbers.Real) else repr(value)


def _show(value: Any) -> str:
    """A value as a message shows it: numbers plainly (numpy's too), other things by repr."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        return repr(None if value is None else bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    return repr(value)


def _flatten(metadata: Iterable[Any]) -> Iterable[Any]:
    for item in metadata:
        if isinstance(item, GroupedMetadata):  # Interval → Gt/Ge/Lt/Le
            yield from _flatten(item)
        else:
            yield item


def _rule_of_hint(hint: Any, unit: str | None) -> _Rule | None:
    """The rule an annotation states, or None where it states nothing this module checks
    (``str``, tuples, classes)."""
    optional = False
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not _NONE]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) != 1:
            return None
        hint, origin = args[0], typing.get_origin(args[0])
    metadata: list[Any] = []
    if origin is Annotated:
        hint, *metadata = typing.get_args(hint)
        origin = typing.get_origin(hint)
    flat = list(_flatten(metadata))
    bounds = tuple(m for m in flat if type(m) in _SYMBOL)
    unit = next((m.unit for m in flat if isinstance(m, Unit)), unit)
    explanation = next((m.documentation for m in flat if isinstance(m, DocInfo)), None)
    if origin is Literal:
        kind: type | tuple = typing.get_args(hint)
    elif hint in (int, float, bool):
        kind = hint
    else:
        return None
    return _Rule(kind, bounds, optional, unit, explanation)


@cache
def _rules(cls: type) -> tuple[dict[str, _Rule], bool]:
    """Each checked field's rule, and whether infinity and NaN are refused, for a dataclass."""
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except (NameError, TypeError) as err:  # an annotation naming what the module lacks
        raise TypeError(
            f"check_fields cannot read the annotations of {cls.__qualname__}: {err}"
        ) from err
    rules = {}
    for f in dataclasses.fields(cls):
        rule = _rule_of_hint(hints.get(f.name), f.metadata.get("unit"))
        if rule is not None:
            rules[f.name] = rule
    config = getattr(cls, "__pydantic_config__", None) or {}
    return rules, not config.get("allow_inf_nan", True)


def rule_of(cls: type, name: str) -> str | None:
    """The rule of field ``name`` of dataclass ``cls`` in words (``"an integer ≥ 1"``), or
    None where its annotation states none; for docs and messages."""
    rules, no_inf_nan = _rules(cls)
    rule = rules.get(name)
    return rule.describe("finite" if no_inf_nan else "kind") if rule else None


def rule_of_annotation(hint: Any) -> tuple[str | None, str | None]:
    """The rule an annotation states in words, without its unit, and the unit it names
    (``Annotated[float, Gt(0), Unit("K")]``: ``("a number > 0", "K")``); the rule is None
    where the annotation states none this module checks (text, paths, classes)."""
    rule = _rule_of_hint(hint, None)
    if rule is None:
        return None, None
    return dataclasses.replace(rule, unit=None).describe("kind"), rule.unit


def field_units(cls: type) -> dict[str, str | None]:
    """Each field of dataclass ``cls`` and its unit (None where it has none): an
    ``annotated_types.Unit`` in the annotation, else ``metadata["unit"]``."""
    rules, _ = _rules(cls)
    return {
        f.name: rules[f.name].unit if f.name in rules else f.metadata.get("unit")
        for f in dataclasses.fields(cls)
    }


def _problem(value: Any, rule: _Rule, no_inf_nan: bool) -> Literal["", "kind", "finite", "bound"]:
    """How ``value`` breaks ``rule``: ``""`` (it does not), ``"kind"`` (wrong type, or None
    where None is not allowed), ``"finite"`` (infinity or NaN) or ``"bound"``."""
    if value is None:
        return "" if rule.optional else "kind"
    if isinstance(rule.kind, tuple):
        return "" if any(value == v and type(value) is type(v) for v in rule.kind) else "kind"
    is_bool = isinstance(value, (bool, np.bool_))
    if rule.kind is bool:
        return "" if is_bool else "kind"
    if is_bool or not isinstance(value, numbers.Integral if rule.kind is int else numbers.Real):
        return "kind"
    if rule.kind is float and not math.isfinite(float(value)):
        # pydantic refuses inf and NaN under allow_inf_nan=False; NaN passes no bound
        if no_inf_nan or (math.isnan(float(value)) and rule.bounds):
            return "finite"
        return ""
    for bound in rule.bounds:
        symbol, attr = _SYMBOL[type(bound)]
        limit = getattr(bound, attr)
        if not {">": value > limit, "≥": value >= limit, "<": value < limit, "≤": value <= limit}[
            symbol
        ]:
            return "bound"
    return ""


def check_fields(instance: Any, prefix: str | None = None) -> None:
    """Raise ValueError for the first field of dataclass ``instance`` whose value breaks the
    constraints of its annotation (see the module docstring).

    The message reads ``{prefix}.{field} = {value}: must be {rule}``, e.g.
    ``attack.temperature = -300.0: must be > 0 K`` (``prefix`` is the config section the
    settings are read from; None: the field name alone).
    """
    cls: type = type(instance)
    rules, no_inf_nan = _rules(cls)
    for name, rule in rules.items():
        value = getattr(instance, name)
        problem = _problem(value, rule, no_inf_nan)
        if problem:
            where = f"{prefix}.{name}" if prefix else name
            why = f" ({rule.explanation})" if rule.explanation else ""
            noun = "" if problem == "bound" else problem
            raise ValueError(f"{where} = {_show(value)}: must be {rule.describe(noun)}{why}")


_PYDANTIC_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", "≥"),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "≤"),
}


def describe_bound(error: dict, unit: str | None = None) -> str | None:
    """One of pydantic's errors (an item of ``ValidationError.errors()``) that broke a bound,
    in this module's words (``"must be ≥ 1"``, ``"must be > 0 K"``); None for other errors.
    Lets the config's error messages read as :func:`check_fields`'s do."""
    kind = _PYDANTIC_BOUNDS.get(error.get("type", ""))
    if kind is None:
        return None
    limit = (error.get("ctx") or {}).get(kind[0])
    return f"must be {kind[1]} {_limit(limit)}" + (f" {unit}" if unit else "")
