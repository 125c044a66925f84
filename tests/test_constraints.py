"""The constraint vocabulary: each type refuses the same values built directly (check_fields)
and through pydantic (as the run config loads), and the messages name field, value, rule and
unit.

No ``from __future__ import annotations`` here: the test classes are built in functions, and
their annotations must be objects, not names of local variables."""

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
import pydantic
import pytest
from annotated_types import Ge, Gt, Le, Lt

from advloop.adversarial.attack import AttackSettings
from advloop.adversarial.baselines import CommitteeMDSettings
from advloop.adversarial.random_displacement import RandomDisplacementSettings
from advloop.adversarial.selection import SelectionSettings
from advloop.calculators.pyscf_calculator import PySCFSettings
from advloop.calculators.pyscf_periodic import PeriodicPySCFSettings
from advloop.constraints import (
    Fraction,
    Interval,
    NonNegativeFloat,
    NonNegativeInt,
    OpenFraction,
    Percentile,
    PositiveFloat,
    PositiveInt,
    Probability,
    Unit,
    UnitInterval,
    check_fields,
    describe_bound,
    doc,
    field_units,
    rule_of,
)
from advloop.potentials.model import ModelSpec
from advloop.potentials.training import TrainingSettings

_CONFIG = {"extra": "forbid", "allow_inf_nan": False}


def _settings(annotation: object, default: object) -> type:
    """A frozen settings dataclass with one field ``x`` of ``annotation``, checked as the
    science settings are."""

    @dataclass(frozen=True)
    class S:
        __pydantic_config__ = _CONFIG
        x: annotation = default  # type: ignore[valid-type]

        def __post_init__(self) -> None:
            check_fields(self, "sec")

    return S


# type, default, accepted, refused
CASES = [
    (
        PositiveFloat,
        1.0,
        [1e-300, 2, 3.5, np.float32(0.1), np.int64(4)],
        [0, 0.0, -1.0, math.inf, math.nan],
    ),
    (NonNegativeFloat, 0.0, [0, 0.0, 7.5], [-1e-12, -1, math.inf, math.nan]),
    (PositiveInt, 1, [1, 10**9, np.int64(2)], [0, -3]),
    (NonNegativeInt, 0, [0, 5], [-1]),
    (Fraction, 0.5, [0, 0.0, 1, 1.0, 0.25], [-0.1, 1.01, math.nan]),
    (Probability, 0.5, [0.0, 1.0], [-0.5, 2.0]),
    (UnitInterval, 0.5, [0.0, 0.999], [1.0, -0.01]),
    (OpenFraction, 0.5, [1e-9, 0.999], [0.0, 1.0]),
    (Percentile, 90.0, [0, 100, 55.5], [-1, 100.5]),
    (Annotated[int, Interval(ge=0, le=9)], 3, [0, 9], [-1, 10]),
    (PositiveInt | None, None, [None, 3], [0]),
]


@pytest.mark.parametrize(("annotation", "default", "accepted", "refused"), CASES)
def test_each_type_refuses_the_same_values_directly_and_through_pydantic(
    annotation, default, accepted, refused
) -> None:
    S = _settings(annotation, default)

    class Config(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        sec: S = S()  # type: ignore[valid-type]

    for value in accepted:
        S(x=value)
        Config.model_validate({"sec": {"x": value}})
    for value in refused:
        with pytest.raises(ValueError, match=r"^sec\.x = "):
            S(x=value)
        with pytest.raises(pydantic.ValidationError) as err:
            Config.model_validate({"sec": {"x": value}})
        assert [e["loc"] for e in err.value.errors()] == [("sec", "x")]


def test_wrong_kinds_are_refused_directly() -> None:
    """Where pydantic converts (2.0 -> 2, 1 -> True), direct construction asks for the type."""
    for annotation, default, value, message in [
        (PositiveInt, 1, 2.5, "sec.x = 2.5: must be an integer ≥ 1"),
        (PositiveInt, 1, 2.0, "sec.x = 2.0: must be an integer ≥ 1"),
        (PositiveInt, 1, True, "sec.x = True: must be an integer ≥ 1"),
        (PositiveFloat, 1.0, "3", "sec.x = '3': must be a number > 0"),
        (PositiveFloat, 1.0, None, "sec.x = None: must be a number > 0"),
        (bool, False, 1, "sec.x = 1: must be true or false"),
        (Literal["a", "b"], "a", "c", "sec.x = 'c': must be one of 'a', 'b'"),
        (Literal["a", "b"] | None, None, "c", "sec.x = 'c': must be one of 'a', 'b', or None"),
        (int, 0, 0.5, "sec.x = 0.5: must be an integer"),
    ]:
        with pytest.raises(ValueError) as err:
            _settings(annotation, default)(x=value)
        assert str(err.value) == message
    _settings(bool, False)(x=np.bool_(True))


def test_messages_name_field_value_rule_unit_and_explanation() -> None:
    @dataclass(frozen=True)
    class S:
        __pydantic_config__ = _CONFIG
        temperature: PositiveFloat = field(default=300.0, metadata={"unit": "K"})
        smearing: Annotated[UnitInterval, Unit("Hartree"), doc("the Fermi-Dirac width")] = 0.0
        n_steps: PositiveInt = 60

        def __post_init__(self) -> None:
            check_fields(self, "attack")

    cases = {
        "temperature": (-300.0, "attack.temperature = -300.0: must be > 0 K"),
        "n_steps": (0, "attack.n_steps = 0: must be ≥ 1"),
        "smearing": (
            1.0,
            "attack.smearing = 1.0: must be in [0, 1) Hartree (the Fermi-Dirac width)",
        ),
    }
    for name, (value, message) in cases.items():
        with pytest.raises(ValueError) as err:
            S(**{name: value})
        assert str(err.value) == message
    with pytest.raises(
        ValueError, match=r"^attack\.temperature = inf: must be a finite number > 0 K$"
    ):
        S(temperature=math.inf)
    assert field_units(S) == {"temperature": "K", "smearing": "Hartree", "n_steps": None}
    assert rule_of(S, "smearing") == "a finite number in [0, 1) Hartree"
    assert rule_of(S, "n_steps") == "an integer ≥ 1"


def test_inf_and_nan_follow_the_pydantic_config() -> None:
    """Without ``allow_inf_nan: False`` infinity passes a lower bound, as in pydantic; NaN
    passes no bound."""

    @dataclass(frozen=True)
    class Loose:
        x: PositiveFloat = 1.0
        y: float = 0.0

        def __post_init__(self) -> None:
            check_fields(self)

    Loose(x=math.inf, y=math.nan)
    pydantic.TypeAdapter(Loose).validate_python({"x": math.inf})
    with pytest.raises(ValueError, match=r"^x = nan: must be a finite number > 0$"):
        Loose(x=math.nan)
    with pytest.raises(pydantic.ValidationError):
        pydantic.TypeAdapter(Loose).validate_python({"x": math.nan})


def test_describe_bound_words_pydantic_errors_as_check_fields_does() -> None:
    S = _settings(Annotated[float, Interval(gt=0, le=9)], 1.0)
    errors = {}
    for value in (0, 10):
        with pytest.raises(pydantic.ValidationError) as err:
            pydantic.TypeAdapter(S).validate_python({"x": value})
        errors[value] = err.value.errors()[0]
    assert describe_bound(errors[0], "K") == "must be > 0 K"
    assert describe_bound(errors[10]) == "must be ≤ 9"
    assert describe_bound({"type": "missing", "loc": ("x",)}) is None


# --- the science settings: every annotated bound is refused both ways ---------------------

SETTINGS = [
    AttackSettings,
    RandomDisplacementSettings,
    CommitteeMDSettings,
    SelectionSettings,
    ModelSpec,
    TrainingSettings,
    PySCFSettings,
    PeriodicPySCFSettings,
]


def _outside(hint: object) -> list[object]:
    """Values just outside the bounds an annotation states (and inf for its floats)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        return ["no-such-choice"]
    if typing.get_origin(hint) is not Annotated:
        return []
    base, *metadata = args
    step = 1 if base is int else 1e-6
    out: list[object] = [math.inf] if base is float else []
    for m in metadata:
        bounds = list(m) if isinstance(m, Interval) else [m]
        for b in bounds:
            if isinstance(b, Gt):
                out.append(base(b.gt))
            elif isinstance(b, Ge):
                out.append(base(b.ge) - step)
            elif isinstance(b, Lt):
                out.append(base(b.lt))
            elif isinstance(b, Le):
                out.append(base(b.le) + step)
    return out


@pytest.mark.parametrize("cls", SETTINGS, ids=lambda c: c.__name__)
def test_settings_refuse_out_of_range_values_directly_and_through_pydantic(cls: type) -> None:
    hints = typing.get_type_hints(cls, include_extras=True)
    adapter = pydantic.TypeAdapter(cls)
    checked = 0
    for f in dataclasses.fields(cls):
        for value in _outside(hints[f.name]):
            with pytest.raises(ValueError, match=rf"\b{f.name} = "):
                cls(**{f.name: value})
            with pytest.raises(pydantic.ValidationError) as err:
                adapter.validate_python({f.name: value})
            assert err.value.errors()[0]["loc"] == (f.name,), (f.name, value)
            checked += 1
    assert checked >= 4
