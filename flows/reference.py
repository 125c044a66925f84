"""The configuration reference, ``docs/config.md``, generated from the schema itself.

Every section of :class:`~advloop.flows.config.RunConfig` and every key in it, with what
it accepts (kind, bounds, allowed names), its unit and its default, read from the
annotations, ``Field`` descriptions, field metadata and the comments and ``Attributes:``
docstrings of the classes that define them. A section that is a choice of kinds gets one
table per kind. ``python -m advloop.flows.reference`` prints it; ``--check FILE`` exits 1
when the file differs (CI keeps the checked-in reference current), ``--write FILE``
rewrites it.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from advloop.constraints import rule_of_annotation
from advloop.flows.config import GEOMETRY_KEYS, RunConfig

__all__ = ["config_reference", "main"]

_HEADER = """\
# Configuration reference

Generated from the schema by `python -m advloop.flows.reference --write docs/config.md`;
CI checks that it is current. Do not edit by hand: change the schema (its annotations,
`Field` descriptions, units and comments) and regenerate.

A config is one YAML mapping. Only `system` is required; every other section, and every
key in it, may be left out for its default. Unknown keys are errors. Units: lengths in Å,
energies in eV, forces and force deviations in eV/Å, temperatures in K, times in s unless
a key says otherwise. A section that is a choice of kinds (`labels`, `exploration`,
`runners.*`) takes `kind:` and that kind's keys; `labels: emt` is short for
`labels: {kind: emt}`. The geometry limits (`min_distance_factor`, `max_bond_factor`) are
set once, in `geometry`, for every check that reads them.
"""


_COLUMNS = "| key | accepts | unit | default | description |"
_RULE = "| --- | --- | --- | --- | --- |"


def _markdown(text: str) -> str:
    """Docstring markup as Markdown: ``code`` in single backticks, Sphinx roles as the
    name they point at (``:class:`~a.b.C``` as `C`, ``:func:`a.b.f``` as `a.b.f`)."""
    text = re.sub(r":(?:class|func|mod|meth|data|attr|exc):`~[\w.]*?(\w+)`", r"`\1`", text)
    text = re.sub(r":(?:class|func|mod|meth|data|attr|exc):`([^`]+)`", r"`\1`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _kind_of(cls: type) -> str | None:
    """The ``kind`` a class of a choice of kinds stands for (None: not such a class)."""
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if f.name == "kind" and isinstance(f.default, str):
                return f.default
    if isinstance(cls, type) and issubclass(cls, BaseModel) and "kind" in cls.model_fields:
        default = cls.model_fields["kind"].default
        if isinstance(default, str):
            return default
        args = typing.get_args(cls.model_fields["kind"].annotation)
        return args[0] if len(args) == 1 and isinstance(args[0], str) else None
    return None


def _sections(hint: Any) -> list[type]:
    """The classes a field's annotation names as a nested section: one class, or the
    members of a union of kinds; [] for a plain value."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return _sections(typing.get_args(hint)[0])
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        found = [m for m in members if _is_section(m)]
        return found if found and len(found) == len(members) else []
    return [hint] if _is_section(hint) else []


def _list_item(hint: Any) -> type | None:
    """The section class of a list of sections (``list[LabelledFile]``); None otherwise."""
    if typing.get_origin(hint) is Annotated:
        return _list_item(typing.get_args(hint)[0])
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list and len(args) == 1 and _is_section(args[0]):
        return args[0]
    return None


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and (
        dataclasses.is_dataclass(hint) or issubclass(hint, BaseModel)
    )


def _type_text(hint: Any) -> str:
    """What a field accepts, where no rule of :mod:`advloop.constraints` states it."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return _type_text(typing.get_args(hint)[0])
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        parts = [_type_text(a) for a in args if a is not type(None)]
        text = " or ".join(dict.fromkeys(parts))
        return text + (", or None" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(hint))
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple):
        items = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return "a list" + (f" of {_type_text(items[0])}" if len(items) == 1 else "")
    if origin is dict or hint is dict:
        return "a mapping"
    names = {
        str: "text",
        Path: "a path",
        int: "an integer",
        float: "a number",
        bool: "true or false",
    }
    if hint in names:
        return names[hint]
    return "any" if hint is Any else getattr(hint, "__name__", str(hint))


def _default_text(value: Any) -> str:
    if value is PydanticUndefined or value is dataclasses.MISSING:
        return "required"
    if _is_section(type(value)):
        return "see below"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Path):
        return f"`{value}`"
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_default_text(v) for v in value) + "]"
    if isinstance(value, (list, tuple, dict)) and not value:
        return "empty"
    return f"`{value!r}`"


def _attribute_docs(cls: type) -> dict[str, str]:
    """``name: text`` entries of the ``Attributes:`` blocks of ``cls`` and its bases."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        doc = inspect.getdoc(klass) if klass.__doc__ else None
        if not doc or "Attributes:" not in doc:
            continue
        block = doc.split("Attributes:", 1)[1]
        current = None
        for line in block.splitlines()[1:]:
            if not line.strip():
                continue
            if not line.startswith(" "):
                break  # the next docstring section
            match = re.match(r"^ {4}(\w+)(?: \(.*?\))?: (.*)$", line)
            if match:
                current = match.group(1)
                out[current] = match.group(2).strip()
            elif current and line.startswith("        "):
                out[current] += " " + line.strip()
    return out


_FIELD = re.compile(r"^ {4}(\w+): [^#]*?(?:#\s*(.+))?$")
_COMMENT = re.compile(r"^ {4}#\s?(.*)$")


def _comment_docs(cls: type) -> dict[str, str]:
    """Each field's comment in the classes that define it: the ``# comment`` lines just
    above its line, or else the one at the end of it."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__ == "builtins" or klass is BaseModel:
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in source.splitlines():
            comment = _COMMENT.match(line)
            if comment:
                above.append(comment.group(1).strip())
                continue
            field = _FIELD.match(line)
            if field and (above or field.group(2)):
                out[field.group(1)] = " ".join(above) if above else field.group(2).strip()
            above = []
    return out


def _annotated(hint: Any, metadata: list[Any]) -> Any:
    """``Annotated[hint, *metadata]``."""
    params = (hint, *metadata)
    return Annotated[params]


def _fields(cls: Any) -> list[tuple[str, Any, Any, str | None, str | None]]:
    """(name, annotation, default, unit, description) of each key of section ``cls``."""
    comments = _comment_docs(cls)
    docs = {**comments, **_attribute_docs(cls)}
    if issubclass(cls, BaseModel):
        out = []
        for name, info in cls.model_fields.items():
            hint = info.annotation
            if info.metadata:  # the bounds of Field(gt=...), on the value inside an Optional
                args = typing.get_args(hint)
                if typing.get_origin(hint) in (Union, types.UnionType) and type(None) in args:
                    inner = [a for a in args if a is not type(None)]
                    hint = _annotated(inner[0], info.metadata) | None
                else:
                    hint = _annotated(hint, info.metadata)
            default = info.default_factory() if info.default_factory is not None else info.default
            unit, text = _leading_unit(info.description or docs.get(name) or "")
            out.append((name, hint, default, unit, text or None))
        return out
    hints = typing.get_type_hints(cls, include_extras=True)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out.append((f.name, hints.get(f.name), default, f.metadata.get("unit"), docs.get(f.name)))
    return out


_UNITS = ("K", "Å", "eV", "eV/Å", "eV/atom", "s", "h", "fs", "1/fs", "MB", "e", "Hartree")


def _leading_unit(text: str) -> tuple[str | None, str]:
    """A description that starts with its unit (``"K, the application temperature"``,
    ``"h per invocation"``): the unit and the rest."""
    match = re.match(r"^(\S+?)(?:[,;]\s*|\s+|$)(.*)$", text)
    if match and match.group(1) in _UNITS:
        return match.group(1), match.group(2)
    return None, text


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    first = doc.split("\n\n", 1)[0]
    return _markdown(" ".join(first.split()))


def _table(cls: type, prefix: str) -> tuple[list[str], list[tuple[str, Any]]]:
    """The rows of section ``cls`` (keys under ``prefix``) and its nested sections."""
    rows = [_COLUMNS, _RULE]
    nested: list[tuple[str, Any]] = []
    top = prefix.split(".")[0]
    for name, hint, default, unit, doc in _fields(cls):
        if name == "kind" and _kind_of(cls) is not None:
            continue
        if name in GEOMETRY_KEYS and top in ("exploration", "selection"):
            continue  # set in `geometry`
        if _sections(hint):
            nested.append((f"{prefix}.{name}", hint))
            rows.append(f"| `{name}` | a section | | see `{prefix}.{name}` | {doc or ''} |")
            continue
        item = _list_item(hint)
        if item is not None:
            nested.append((f"{prefix}.{name}[]", item))
            rows.append(
                f"| `{name}` | a list of sections | | {_default_text(default)} "
                f"| each as `{prefix}.{name}[]` {doc or ''}|"
            )
            continue
        rule, own_unit = rule_of_annotation(hint)
        accepts = rule or _type_text(hint)
        description = _markdown(doc or "").replace("|", "\\|")
        rows.append(
            f"| `{name}` | {accepts} | {unit or own_unit or ''} | {_default_text(default)} "
            f"| {description} |"
        )
    if len(rows) == 2:
        return ["No settings."], nested
    return rows, nested


def _section(key: str, hint: Any, level: int) -> list[str]:
    lines: list[str] = []
    classes = _sections(hint)
    kinds = [c for c in classes if _kind_of(c) is not None]
    hashes = "#" * level
    if len(classes) > 1 or kinds:
        names = ", ".join(f"`{_kind_of(c)}`" for c in classes)
        lines += [f"{hashes} `{key}`", "", f"One of the kinds {names}.", ""]
        for cls in classes:
            lines += _one(f"{key}", cls, level + 1, f"`{key}: {{kind: {_kind_of(cls)}}}`")
        return lines
    return _one(key, classes[0], level, f"`{key}`")


def _one(key: str, cls: type, level: int, title: str) -> list[str]:
    rows, nested = _table(cls, key)
    lines = [f"{'#' * level} {title}", "", _summary(cls), "", *rows, ""]
    seen: dict[str, str] = {}
    for sub, hint in nested:
        if repr(hint) in seen:
            lines += [f"{'#' * min(level + 1, 6)} `{sub}`", "", f"As `{seen[repr(hint)]}`.", ""]
            continue
        seen[repr(hint)] = sub
        lines += _section(sub, hint, min(level + 1, 6))
    return lines


def config_reference() -> str:
    """``docs/config.md``: every section and key of a run config."""
    lines = [_HEADER]
    plain = [_COLUMNS, _RULE]
    for name, hint, default, _unit, doc in _fields(RunConfig):
        if not _sections(hint):
            plain.append(
                f"| `{name}` | {_type_text(hint)} | | {_default_text(default)} | {doc or ''} |"
            )
    lines += ["## Top-level keys", "", *plain, ""]
    for name, hint, _default, _unit, _doc in _fields(RunConfig):
        if _sections(hint):
            lines += _section(name, hint, 2)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", type=Path, help="exit 1 if FILE is not the current reference")
    group.add_argument("--write", type=Path, help="write the reference to FILE")
    args = parser.parse_args(argv)
    text = config_reference()
    if args.write:
        args.write.write_text(text)
    elif args.check:
        if not args.check.exists() or args.check.read_text() != text:
            print(
                f"{args.check} is not the current configuration reference; regenerate it "
                f"with python -m advloop.flows.reference --write {args.check}",
                file=sys.stderr,
            )
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
