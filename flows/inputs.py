"""Reading a run config file and checking what it names (the schema is
:mod:`advloop.flows.config`; :mod:`advloop.flows.validation` puts the two together).

Every message names the key or file, what is wrong, and what to do about it:
:func:`read_mapping` reads the YAML (refusing duplicate keys), :func:`format_validation_error`
turns pydantic's errors into such messages (naming the unit a number is read in),
:func:`check_inputs` checks the structures, level of theory and runners, and
:func:`check_run_folder` the folder the run will write. None of them computes anything
or leaves anything behind. tests/data/bad_inputs holds the inputs they must refuse.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import re
import shutil
import stat
import tempfile
import typing
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from ase import Atoms
from ase.data import chemical_symbols
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from advloop.adversarial.geometry import check_geometry
from advloop.calculators.factory import label_problems, level_of_theory
from advloop.flows.config import (
    ConfigError,
    InitialDataConfig,
    LabelledFile,
    RunConfig,
    RunnersConfig,
    SystemPart,
    short_repr,
)
from advloop.potentials.dataset import Dataset, DatasetError

__all__ = [
    "ConfigError",
    "check_inputs",
    "check_run_folder",
    "format_validation_error",
    "initial_structures",
    "read_mapping",
    "read_structures",
    "shown_loc",
]


# ---------------------------------------------------------------------------------------
# Reading a config file.

_EXAMPLE = "see examples/ammonia.yaml"
# Units a field's description may start with ("K", "Å; ..."), named when a number is wrong.
_UNITS = ("K", "Å", "eV", "eV/Å", "fs", "1/fs", "s", "h", "Hartree", "MB")
_NUMBER_WITH_UNIT = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*[^\d\s.]")

# Limits on what a config file may hold, far above any real config (the example has about
# 60 values, nested 3 deep), so that a file that is not a run config, or a YAML alias bomb
# (a few lines of nested `*aliases` expanding to billions of values), is refused at once
# instead of taking minutes and gigabytes to read, validate and echo.
MAX_CONFIG_BYTES = 1_000_000
MAX_YAML_VALUES = 10_000  # values (scalars, lists, mappings) once aliases are expanded
MAX_YAML_DEPTH = 50  # lists and mappings nested in each other
MAX_TEXT = 4096  # characters of one value (the longest path Linux allows)


class _TooLarge(yaml.YAMLError):
    """A YAML document past one of the limits above; ``message`` says which and where."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _check_expansion(root: yaml.Node) -> None:
    """Raise :class:`_TooLarge` if the document ``root`` holds more than MAX_YAML_VALUES
    values with its aliases expanded, a value longer than MAX_TEXT characters, or an alias
    inside the value it names. Each node is counted once (a memo by node), so a bomb is
    measured in microseconds, never expanded."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # the mappings and lists being counted (a cycle returns to one)

    def where(keys: tuple[str, ...]) -> str:
        return ".".join(keys) or "(top level)"

    def size(node: yaml.Node, keys: tuple[str, ...]) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        line = node.start_mark.line + 1
        if isinstance(node, yaml.ScalarNode):
            if len(node.value) > MAX_TEXT:
                raise _TooLarge(
                    f"{where(keys)}: a value of {len(node.value)} characters (line "
                    f"{line}); a config value is a name, a number or a path, at most "
                    f"{MAX_TEXT} characters: check that this is the value you meant"
                )
            n = 1
        else:
            if id(node) in open_nodes:
                raise _TooLarge(
                    f"{where(keys)}: a YAML alias (*name) inside the value it names "
                    f"(line {line}) makes the value contain itself; write the value out"
                )
            open_nodes.add(id(node))
            if isinstance(node, yaml.MappingNode):
                n = 1 + sum(
                    size(k, keys)
                    + size(v, (*keys, str(k.value)) if isinstance(k, yaml.ScalarNode) else keys)
                    for k, v in node.value
                )
            else:
                n = 1 + sum(size(item, keys) for item in node.value)
            open_nodes.discard(id(node))
        if n > MAX_YAML_VALUES:
            raise _TooLarge(
                f"{where(keys)}: YAML aliases (*name) expand to more than "
                f"{MAX_YAML_VALUES} values here (line {line}), where a whole run "
                "config holds about a hundred; write the values out instead of "
                "repeating aliases"
            )
        sizes[id(node)] = n
        return n

    size(root, ())


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the
    last one silently, so a second ``labels:`` section would replace the first)."""

    def construct_mapping(self, node, deep=False):
        first: dict[Any, Any] = {}  # key -> where it was first given
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges may repeat keys
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                seen = first.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: PyYAML reports it below
                continue
            if seen is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"found duplicate key {key!r} (first given at line {seen.line + 1})",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep)

    def compose_node(self, parent, index):  # refuse nesting deeper than MAX_YAML_DEPTH
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise _TooLarge(
                    f"lists or mappings nested more than {MAX_YAML_DEPTH} deep (line "
                    f"{line}), where a run config nests its sections 3 deep; check "
                    "that this is a run config"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):  # refuse alias bombs before anything is constructed
        node = super().compose_document()
        if node is not None:
            _check_expansion(node)
        return node


def _file_kind(path: Path) -> str:
    """What a path that exists but is neither a file nor a folder is, in words."""
    mode = path.stat().st_mode
    for test, kind in (
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "named pipe"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return kind
    return "special file"


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML syntax error in one line: where, what, and how to fix it."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if "'\\t'" in problem:  # PyYAML: found character '\t' that cannot start any token
        fix = "indent with spaces, never tabs"
    elif "duplicate key" in problem:
        fix = "give each key once (merge the two into one section)"
    elif re.search(r"expected ',' or '[\]}]'", problem):
        opened = getattr(err, "context_mark", None)
        at = f" at line {opened.line + 1}" if opened else ""
        fix = f"close the bracket opened{at}, or quote a value that holds ',', ':', '[' or '{{'"
    else:
        fix = "fix the syntax there; quote a value that holds ': ', ' #', '[' or '{'"
    return f"not valid YAML{where}: {problem}; {fix}"


def read_mapping(path: Path) -> dict:
    """The YAML mapping in the config file ``path``; ConfigError if there is none."""

    def refuse(problem: str) -> ConfigError:
        return ConfigError(str(path), [problem])

    if path.is_dir():
        raise refuse("this is a folder; give the config file (YAML) itself")
    if not path.exists():
        raise refuse("config file not found; check the path")
    if not path.is_file():
        raise refuse(
            f"not a regular file (a {_file_kind(path)}); give the config file (YAML) itself"
        )
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise refuse(
            f"the config file is {size / 1e6:.1f} MB, where a run config is a few kB "
            f"(at most {MAX_CONFIG_BYTES // 1_000_000} MB); check that this is the "
            f"config file ({_EXAMPLE})"
        )
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)  # a file that grew since: read no further
    except OSError as err:
        raise refuse(
            f"cannot read the config file ({err.strerror}); make it readable (chmod u+r)"
        ) from err
    if len(data) > MAX_CONFIG_BYTES:
        raise refuse(
            f"the config file is over {MAX_CONFIG_BYTES // 1_000_000} MB, where a run "
            f"config is a few kB; check that this is the config file ({_EXAMPLE})"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise refuse(
            f"not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); save the file as UTF-8"
        ) from err
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except _TooLarge as err:
        raise refuse(err.message) from None
    except yaml.YAMLError as err:
        raise refuse(_yaml_problem(err)) from err
    if raw is None:
        raise refuse(
            "the config file is empty; it needs at least a system section with name "
            f"and structures ({_EXAMPLE})"
        )
    if not isinstance(raw, dict):
        what = (
            "a list: remove the leading '- '"
            if isinstance(raw, list)
            else f"a {type(raw).__name__}"
        )
        raise refuse(
            "the config must be a YAML mapping of sections (system, dft, model, ...), "
            f"not {what} ({_EXAMPLE})"
        )
    return raw


def _unit_of(description: str | None) -> str | None:
    """The unit a pydantic field's description starts with (``"K"``, ``"s; None: ..."``)."""
    words = (description or "").replace(";", " ").split()
    return words[0] if words and words[0] in _UNITS else None


def _union_members(annotation: Any) -> dict[str, Any]:
    """The members of a union on ``kind`` (``Annotated[A | B, Field(discriminator=...)]``) by
    their kind; empty for any other annotation."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    out = {}
    for member in typing.get_args(annotation):
        hints = _field_types(member)
        for kind in typing.get_args(hints.get("kind")):
            out[str(kind)] = member
    return out


def _field_types(section: Any) -> dict[str, Any]:
    """A section class's keys and their annotations (pydantic model or dataclass)."""
    if isinstance(section, type) and issubclass(section, BaseModel):
        return {name: f.annotation for name, f in section.model_fields.items()}
    if isinstance(section, type) and dataclasses.is_dataclass(section):
        try:
            return typing.get_type_hints(section, include_extras=True)
        except Exception:  # an annotation that cannot be resolved: no keys known
            return {}
    return {}


def _walk(root: type[BaseModel], loc: tuple) -> tuple[tuple, Any]:
    """(the keys of pydantic's error location ``loc`` as the config spells them, the class of
    the section there): a union on ``kind`` puts the kind into the location
    (``labels.pyscf.xc``), which the config does not spell (``labels.xc``)."""
    section: Any = root
    shown: list = []
    for part in loc:
        members = _union_members(section)
        if members and str(part) in members:
            section = members[str(part)]
            continue
        if members:
            section = None
        section = _field_types(section).get(part) if section is not None else None
        shown.append(part)
    return tuple(shown), section


def shown_loc(root: type[BaseModel], loc: tuple) -> tuple:
    """Pydantic's error location ``loc`` as the config spells it (see :func:`_walk`)."""
    return _walk(root, loc)[0]


def _section(root: type[BaseModel], loc: tuple) -> Any:
    """The class of the section of the config model ``root`` at ``loc`` (``()``: root), the
    member of a union on ``kind`` where ``loc`` names its kind."""
    return _walk(root, loc)[1]


def _units(section: Any) -> dict[str, str | None]:
    """A section's keys and the unit of each (None where it has none): the first word of a
    pydantic field's description, or a settings dataclass field's ``metadata["unit"]``."""
    if isinstance(section, type) and issubclass(section, BaseModel):
        return {name: _unit_of(f.description) for name, f in section.model_fields.items()}
    if isinstance(section, type) and dataclasses.is_dataclass(section):
        return {f.name: f.metadata.get("unit") for f in dataclasses.fields(section)}
    return {}


def _number_with_unit(value: Any) -> bool:
    """True for text such as ``"2000 K"`` or ``"0.05eV/Å"``: a number followed by a unit."""
    if not (isinstance(value, str) and _NUMBER_WITH_UNIT.match(value)):
        return False
    try:
        float(value)
    except ValueError:
        return True
    return False  # "1e5": a number that an integer field refuses


# Sections whose settings classes name their keys by the section they had before labels
# and exploration became kinds ("attack.temperature must be positive"), and those names.
_OLD_PREFIXES = {"exploration": ("attack.", "md.", "random."), "labels": ("periodic_dft.", "dft.")}


def _problem(error: ErrorDetails, root: type[BaseModel]) -> str:
    """One of pydantic's errors as ``key: what is wrong and what to do (got ...)``."""
    raw_loc = tuple(error["loc"])
    loc = shown_loc(root, raw_loc)
    key = ".".join(str(x) for x in loc) or "(top level)"
    kind, value = error["type"], error["input"]
    got = f" (got {short_repr(value)})"
    siblings = _units(_section(root, raw_loc[:-1])) if loc else {}  # the keys beside this one
    unit = siblings.get(loc[-1]) if loc else None
    in_unit = f" in {unit}" if unit else ""
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        others = _kinds_with_key(root, raw_loc)
        if others:
            return (
                f"{key}: unknown key for {key.rsplit('.', 1)[0]}.kind {raw_loc[-2]} (a "
                f"setting of kind {' and '.join(others)}: choose that kind, or drop it)"
            )
        close = difflib.get_close_matches(str(loc[-1]), list(siblings), n=1)
        guess = f"; did you mean {close[0]!r}?" if close else ""
        return f"{key}: unknown key{guess} (check its spelling; {_EXAMPLE})"
    if kind == "missing":
        return f"{key}: required key is missing; add it ({_EXAMPLE})"
    if kind == "union_tag_invalid":
        return (
            f"{key}: unknown kind {short_repr(value.get('kind'))}; use one of "
            f"{', '.join(_union_kinds(root, raw_loc))}"
        )
    if kind == "union_tag_not_found":
        return f"{key}: say which runner with kind: one of {', '.join(_union_kinds(root, raw_loc))}"
    if kind in ("int_parsing", "int_type", "int_from_float", "float_parsing", "float_type"):
        if _number_with_unit(value):
            return f"{key}: give a plain number{in_unit}, without a unit{got}"
        number = "a number" if kind.startswith("float") else "a whole number"
        return f"{key}: must be {number}{in_unit}{got}"
    if kind == "finite_number":  # .inf, .nan: pass every comparison (inf > 0) or none
        return f"{key}: must be a finite number{in_unit}, not infinity or NaN{got}"
    if kind in ("bool_parsing", "bool_type"):
        return f"{key}: must be true or false{got}"
    if kind in ("string_type", "path_type"):
        return f"{key}: must be text (quote it){got}"
    if kind == "literal_error":
        return f"{key}: use one of {error['ctx']['expected']}{got}"
    if kind in ("model_type", "model_attributes_type", "dataclass_type", "dict_type"):
        return f"{key}: must be a section of 'key: value' lines indented below it ({_EXAMPLE}){got}"
    if kind in ("list_type", "tuple_type"):
        return f"{key}: must be a list, such as [a, b]{got}"
    msg = error["msg"].removeprefix("Value error, ")
    for old in _OLD_PREFIXES.get(str(loc[0]) if loc else "", ()):
        if msg.startswith(old):
            msg = f"{loc[0]}.{msg.removeprefix(old)}"
            break
    if kind == "value_error":  # a settings class's own check, on the key or its section
        if msg.startswith((f"{key}.", f"{key}:", f"{key} ")):
            text = msg  # `attack.temperature must be positive, got -3.0`
        elif msg.split(" ", 1)[0] in _units(_section(root, raw_loc)):
            text = f"{key}.{msg}"  # `percentile must be ...` in section selection
        else:
            text = f"{key}: {msg}"
        return text + ("" if isinstance(value, dict) else got)
    return f"{key}: {msg}{got}"


def _kinds_with_key(root: type[BaseModel], loc: tuple) -> list[str]:
    """The other kinds of the union on ``kind`` that ``loc`` (``labels.pyscf.uhf``) is in
    that have its last key (``tblite``); empty where it is in none or none has it."""
    if len(loc) < 2:
        return []
    section: Any = root
    for part in loc[:-3]:
        section = _field_types(section).get(part)
    members = _union_members(_field_types(section).get(loc[-3]) if len(loc) >= 3 else None)
    if str(loc[-2]) not in members:
        return []
    return [
        k for k, member in members.items() if k != str(loc[-2]) and loc[-1] in _field_types(member)
    ]


def _union_kinds(root: type[BaseModel], loc: tuple) -> list[str]:
    """The ``kind`` values the union at ``loc`` accepts (runners: threads, ...)."""
    section: Any = root
    for part in loc[:-1]:
        section = _field_types(section).get(part)
    return list(_union_members(_field_types(section).get(loc[-1]) if loc else None))


def format_validation_error(err: ValidationError, root: type[BaseModel]) -> list[str]:
    """Pydantic's errors from validating the config model ``root``, one message each."""
    return [_problem(e, root) for e in err.errors()]


# ---------------------------------------------------------------------------------------
# Checking what a config names: structures, level of theory, runners, the run folder.

_FORMAT_HINTS = {
    ".xyz": "an xyz file: the atom count, a comment line, then one 'symbol x y z' line per "
    "atom, in Å",
    ".extxyz": "an extended xyz file: the atom count, a Lattice=... Properties=... line, then "
    "one line per atom",
    ".cif": "a CIF file: cell lengths and angles, and an atom_site loop with fractional "
    "coordinates",
}


def read_structures(path: Path, index: str = ":") -> list[Atoms]:
    """Every frame of a structure file (those of ``index``, as ``ase.io.read`` takes it),
    or raise ValueError saying why it is unreadable and what to do."""
    from ase.io import read

    if path.is_dir():
        raise ValueError(
            f"{path} is a folder; give the structure file itself (xyz, extxyz, "
            "CIF, ... as ase.io.read reads)"
        )
    if not path.exists():
        raise ValueError(
            f"structure file {path} not found; check the path (a relative path "
            "is read from the config file's folder)"
        )
    if not path.is_file():  # /dev/zero would be read for ever, a named pipe wait for ever
        raise ValueError(
            f"{path} is not a regular file (a {_file_kind(path)}); give the "
            "structure file itself (xyz, extxyz, CIF, ... as ase.io.read reads)"
        )
    try:
        with path.open("rb") as f:
            empty = not f.read(1)
    except OSError as err:
        raise ValueError(
            f"structure file {path} cannot be opened ({err.strerror}); make it readable (chmod u+r)"
        ) from err
    fmt = _FORMAT_HINTS.get(
        path.suffix.lower(), "a file ase.io.read reads (the format comes from the extension)"
    )
    if empty:
        raise ValueError(f"structure file {path} is empty; it must be {fmt}")
    try:
        with warnings.catch_warnings():  # ASE warns, then fails or skips: reported below
            warnings.simplefilter("ignore")
            # a slice reads its frames as a list (ase's annotation allows one Atoms)
            frames = read(str(path), index=index)
            if isinstance(frames, Atoms):  # index named one frame
                frames = [frames]
    except KeyError as err:  # ASE's lookup of an element symbol
        symbol = err.args[0] if err.args else None
        if isinstance(symbol, str) and symbol not in chemical_symbols:
            raise ValueError(
                f"structure file {path} names an unknown element {symbol!r}; use "
                "element symbols such as H, C, N, O, Cl (capital letter first)"
            ) from err
        raise ValueError(
            f"structure file {path} could not be read ({err!r}); it must be {fmt}"
        ) from err
    except Exception as err:  # ASE raises many types for malformed files
        raise ValueError(
            f"structure file {path} could not be read ({err}); it must be {fmt}"
        ) from err
    if not frames:
        raise ValueError(f"structure file {path} holds no structures; it must be {fmt}")
    for k, atoms in enumerate(frames):
        partial = _partial_site(atoms)
        if partial is not None:
            site, species = partial
            where = f" (data block {k + 1})" if len(frames) > 1 else ""
            raise ValueError(
                f"structure file {path}{where}: site {_site_label(path, k, site)} is partly "
                f"occupied ({species}), a disordered crystal that would be read as one species "
                "on a full site; give an ordered structure with one atom per site (a supercell "
                "with each site's species chosen, e.g. by pymatgen's "
                "OrderDisorderedStructureTransformation)"
            )
    return frames


@dataclasses.dataclass(frozen=True)
class FileFrames:
    """The frames of one ``initial_data.files`` entry: ``labelled``, each with its energy
    (eV) and forces (eV/Å) attached and its level of theory in ``info["level_of_theory"]``,
    and ``unlabelled``, for the run's labeller."""

    labelled: list[Atoms]
    unlabelled: list[Atoms]


def read_labelled_file(spec: LabelledFile) -> FileFrames:
    """The frames of ``spec`` (:class:`~advloop.flows.config.LabelledFile`), split into
    labelled and unlabelled; ValueError, saying what to do, where the file cannot be read
    or a frame has half a label (an energy without forces, or forces without an energy)
    or one that is not finite. A frame's level of theory is ``spec.level_of_theory``, or
    its record's in a ``dataset.h5``."""
    from ase.calculators.singlepoint import SinglePointCalculator

    path = Path(spec.path)
    if _is_dataset(path):
        try:
            records = Dataset(path).to_atoms()
        except (DatasetError, OSError, KeyError) as err:
            raise ValueError(
                f"{path} is not an advloop dataset that reads ({err}); give another run's "
                "dataset.h5, or labelled frames as extended XYZ or an ASE trajectory"
            ) from err
        try:
            frames = [records[k] for k in _indices(spec.index, len(records))]
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
        return FileFrames(labelled=frames, unlabelled=[])
    frames = read_structures(path, spec.index)
    labelled, unlabelled = [], []
    for k, atoms in enumerate(frames):
        energy, forces = _frame_label(atoms, spec.energy_key, spec.forces_key)
        if energy is None and forces is None:
            bare = atoms.copy()
            bare.calc = None
            unlabelled.append(bare)
            continue
        where = f"{path} frame {k}"
        if energy is None or forces is None:
            have, lack = ("an energy", "forces") if forces is None else ("forces", "an energy")
            raise ValueError(
                f"{where} has {have} but no {lack} ({spec.energy_key!r}, {spec.forces_key!r}); "
                "training needs both: give them, drop the frame, or remove both so the run "
                "labels it (energy_key and forces_key name other keys)"
            )
        forces = np.asarray(forces, dtype=float)
        if forces.shape != (len(atoms), 3):
            raise ValueError(f"{where}: forces of shape {forces.shape}, not ({len(atoms)}, 3)")
        if not (np.isfinite(energy) and np.isfinite(forces).all()):
            raise ValueError(f"{where}: its energy or forces are not finite; drop the frame")
        out = atoms.copy()
        out.calc = SinglePointCalculator(out, energy=float(energy), forces=forces)
        out.info = {"level_of_theory": spec.level_of_theory}
        labelled.append(out)
    return FileFrames(labelled=labelled, unlabelled=unlabelled)


def _is_dataset(path: Path) -> bool:
    return path.suffix.lower() in (".h5", ".hdf5")


def _frame_label(atoms: Atoms, energy_key: str, forces_key: str) -> tuple[Any, Any]:
    """A frame's energy and forces (None where it has none), from ASE's calculator under
    the default keys, else from ``atoms.info`` and ``atoms.arrays``."""
    calc = atoms.calc
    results = getattr(calc, "results", {}) if calc is not None else {}
    energy = results.get("energy") if energy_key == "energy" else atoms.info.get(energy_key)
    if energy_key == "energy" and energy is None:
        energy = atoms.info.get("energy")
    forces = results.get("forces") if forces_key == "forces" else atoms.arrays.get(forces_key)
    if forces_key == "forces" and forces is None:
        forces = atoms.arrays.get("forces")
    return energy, forces


def _indices(index: str, n: int) -> range:
    """The records ``index`` (ase.io.read's ``":"``, ``"-10:"``, ``"::5"`` or ``"3"``)
    picks of ``n``."""
    try:
        if ":" not in index:
            k = int(index)
            return range(n)[k : k + 1 or None]
        parts = [int(p) if p.strip() else None for p in index.split(":")]
    except ValueError:
        raise ValueError(f"index {index!r} is not a frame number or a slice like '::5'") from None
    if len(parts) > 3:
        raise ValueError(f"index {index!r} is not a frame number or a slice like '::5'")
    return range(n)[slice(*parts)]


def _same_level(a: str, b: str) -> bool:
    """Whether two level-of-theory names are the same but for case and spaces."""
    return "".join(a.split()).upper() == "".join(b.split()).upper()


def initial_file_problems(
    config: RunConfig,
    system: list[Atoms],
    initial: InitialDataConfig | None = None,
    where: str = "initial_data",
) -> list[str]:
    """Problems with the ``files`` of ``initial`` (the run's ``initial_data`` by default;
    a part's, at ``where``) against the run (``system``: the frames of its structures): a
    file that does not read, frames not of the system's atoms (one composition per
    system) or that clash, labelled frames of another level of theory than the labeller's
    (unless the entry says ``same_level_as_labels``), and fewer than 2 initial structures
    in all. Reads every file."""
    problems: list[str] = []
    labels = level_of_theory(config.labels)
    initial = initial or config.initial_data
    total = initial.n_structures
    numbers = system[0].numbers if system else None
    for n, spec in enumerate(initial.files):
        key = f"{where}.files[{n}]"
        try:
            frames = read_labelled_file(spec)
        except ValueError as err:
            problems.append(f"{key}: {err}")
            continue
        every = frames.labelled + frames.unlabelled
        total += len(every)
        if not every:
            problems.append(f"{key}: {spec.path} (index {spec.index!r}) gives no frames")
        for k, atoms in enumerate(every):
            if numbers is not None and not np.array_equal(atoms.numbers, numbers):
                problems.append(
                    f"{key}: {spec.path} has a frame of {atoms.get_chemical_formula()} "
                    f"({len(atoms)} atoms), not the atoms of its system's structures "
                    f"({system[0].get_chemical_formula()}, {len(numbers)} atoms) in the "
                    "same order: a run trains one composition; give frames of this system "
                    "only, with its atoms in its order"
                )
                break
            reason = _clash(config, atoms)
            if reason is not None:
                problems.append(f"{key}: {spec.path} frame {k}: {_geometry_problem(reason)}")
                break
        levels = sorted({str(a.info.get("level_of_theory")) for a in frames.labelled})
        if _is_dataset(spec.path):
            declared = spec.level_of_theory
            if declared is not None and any(not _same_level(v, declared) for v in levels):
                problems.append(
                    f"{key}: the records of {spec.path} are labelled at "
                    f"{', '.join(map(repr, levels))}, not at level_of_theory {declared!r}; "
                    "leave level_of_theory out for a dataset.h5 (its records carry theirs)"
                )
                continue
        elif frames.labelled and spec.level_of_theory is None:
            problems.append(
                f"{key}: {spec.path} has {len(frames.labelled)} labelled frame(s); give their "
                f"level_of_theory (this run labels at {labels!r}) so that their provenance "
                "says what they are"
            )
            continue
        other = [v for v in levels if not _same_level(v, labels)]
        if other and not spec.same_level_as_labels:
            problems.append(
                f"{key}: {spec.path} is labelled at {', '.join(map(repr, other))}, not at this "
                f"run's level of theory {labels!r}: one dataset must hold one potential energy "
                "surface; label them again (drop their energies and forces and the run "
                "labels them), use a labeller of their level, or, if they are the same "
                "calculation under another name, set same_level_as_labels: true"
            )
        if frames.unlabelled:
            problems.extend(f"{key}: {p}" for p in label_problems(config.labels, frames.unlabelled))
    if total < 2:
        problems.append(
            f"{where}: gives {total} initial structure(s) (n_structures "
            f"{initial.n_structures} and the frames of its files); a run needs at least 2"
        )
    return problems


def _partial_site(atoms: Atoms, tolerance: float = 1e-3) -> tuple[int, str] | None:
    """The first site, by its row in the CIF's atom_site loop, whose occupancies sum to less
    than 1 or that several species share, and its species (``"Au 0.5, Cu 0.5"``), from the
    ``occupancy`` ASE's CIF reader leaves in ``atoms.info``; None if every site is full."""
    for site, species in (atoms.info.get("occupancy") or {}).items():
        try:
            values = {str(sym): float(occ) for sym, occ in species.items()}
        except (AttributeError, TypeError, ValueError):
            continue
        if (len(values) > 1 or sum(values.values()) < 1.0 - tolerance) and str(site).isdigit():
            return int(site), ", ".join(f"{sym} {occ:g}" for sym, occ in sorted(values.items()))
    return None


def _site_label(path: Path, block: int, site: int) -> str:
    """The ``_atom_site_label`` of row ``site`` of data block ``block`` of a CIF (``'Fe1'``),
    or ``number <n>`` where the file gives none."""
    from ase.io.cif import parse_cif

    try:
        blocks = [b for b in parse_cif(str(path)) if b.has_structure()]
        labels = blocks[block].get("_atom_site_label") or []
        return short_repr(str(labels[site]))
    except Exception:  # the label only names the site: the row number does as well
        return f"number {site + 1} of the atom_site loop"


def _geometry_problem(reason: str) -> str:
    """A reason from :func:`check_geometry`, with what to do about it."""
    if reason.startswith("not finite"):
        return f"{reason}; give every coordinate as a finite number, in Å"
    return (
        f"{reason}; move them apart (positions are read in Å: check the file's units "
        "and that no atom is listed twice)"
    )


def check_inputs(config: RunConfig) -> list[str]:
    """Problems with the config's structures (of each of ``system.parts``), its initial
    data files, its labeller (the labeller's own pre-flight checks,
    :func:`advloop.calculators.factory.label_problems`) and its runners (empty if none)."""
    problems: list[str] = []
    compositions: dict[tuple[int, ...], str] = {}
    for k, part in enumerate(config.parts()):
        where = f"system.parts[{k}] ({part.name})" if config.system.parts else "system"
        try:
            frames = read_structures(part.structures)
        except ValueError as err:
            problems.append(f"{where}.structures: {err}")
            continue
        problems.extend(_structure_problems(config, frames, f"{where}.structures"))
        key = tuple(int(z) for z in frames[0].numbers)
        if key in compositions:
            problems.append(
                f"{where}.structures: the atoms of part {compositions[key]!r}, in the same "
                "order: a part is one composition, and two parts of one composition are one "
                "part (put their structures in one file)"
            )
        compositions.setdefault(key, part.name)
        prefix = f"{where}: " if config.system.parts else ""
        # the labeller's own checks: what it treats, the electrons its charge and spin allow
        problems.extend(prefix + p for p in label_problems(config.labels, frames))
        initial = part.initial_data or config.initial_data
        if initial.files:
            initial_key = f"{where}.initial_data" if config.system.parts else "initial_data"
            problems.extend(initial_file_problems(config, frames, initial, initial_key))
    problems.extend(_runner_problems(config.runners))
    return problems


def _clash(config: RunConfig, atoms: Atoms) -> str | None:
    """Why ``atoms`` clash (None: they do not), by the clash limit only: a starting
    structure may be several molecules, so no bond limit applies."""
    return check_geometry(
        atoms.numbers,
        atoms.positions,
        config.geometry.min_distance_factor,
        1e9,
        atoms.cell.array,
        atoms.pbc,
    )


def _structure_problems(config: RunConfig, frames: list[Atoms], key: str) -> list[str]:
    """Problems with the starting structures ``frames`` (of ``key``): one composition,
    atoms, periodicity, clashes."""
    problems: list[str] = []
    if len({tuple(a.numbers) for a in frames}) > 1:
        problems.append(
            f"{key}: all structures must have the same atoms in the same order (one "
            "composition per system); split them into one run per composition, or into "
            "system.parts (several systems in one potential)"
        )
    for k, atoms in enumerate(frames):
        where = f"{key} frame {k}"
        if len(atoms) == 0:
            problems.append(f"{where}: has no atoms; give at least one atom per structure")
            continue
        if atoms.pbc.any() and not atoms.pbc.all():
            problems.append(f"{where}: pbc must be all true or all false, got {atoms.pbc.tolist()}")
        try:
            reason = _clash(config, atoms)
        except ValueError as err:  # e.g. a dummy atom (X, atomic number 0)
            problems.append(f"{where}: {err}; use real element symbols")
            continue
        if reason is not None:
            problems.append(f"{where}: {_geometry_problem(reason)}")
    return problems


def _runner_problems(runners: RunnersConfig) -> list[str]:
    """Runners whose packages are not installed (the ``cluster`` extra)."""
    out = []
    for phase in ("training", "labelling"):
        kind = getattr(runners, phase).kind
        needed = {
            "dask": ("prefect_dask", "distributed"),
            "slurm": ("prefect_dask", "distributed", "dask_jobqueue"),
        }.get(kind, ())
        missing = [m for m in needed if importlib.util.find_spec(m) is None]
        if missing:
            out.append(
                f"runners.{phase}: kind {kind} needs {', '.join(missing)}, not installed: "
                "pip install 'advloop[cluster]'"
            )
    return out


def check_run_folder(config: RunConfig) -> list[str]:
    """Problems with writing the run folder ``output_dir/<system.name>`` (empty if none).

    The nearest folder on its path that exists must be a folder this process can write (an
    anonymous temporary file is made there and dropped: nothing is left behind), on a disk
    with at least ``compute.min_free_disk_mb`` free (0: not checked).
    """
    run_dir = config.run_dir().absolute()
    where = f"the run folder {run_dir}"
    instead = "or choose another output_dir (or advloop run --output-dir)"
    existing = run_dir
    for existing in (run_dir, *run_dir.parents):
        try:
            if existing.exists():
                break
        except OSError:  # inside a folder that cannot be searched: its parent says why
            continue
    if not existing.is_dir():
        what = where if existing == run_dir else f"{existing}, on the path of {where},"
        return [f"output_dir: {what} is a file, not a folder; move the file away {instead}"]
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        return [
            f"output_dir: cannot write in {existing} ({err.strerror}), where {where} goes; "
            f"make it writable {instead}"
        ]
    need = config.compute.min_free_disk_mb
    free = shutil.disk_usage(existing).free // 1_000_000
    if need and free < need:
        return [
            f"output_dir: {existing} has {free} MB free on its disk, less than "
            f"compute.min_free_disk_mb ({need} MB) for the checkpoints and labels of {where}; "
            "free some space, choose an output_dir on another disk (or advloop run "
            "--output-dir), or lower compute.min_free_disk_mb (0 turns the check off)"
        ]
    return []


def initial_structures(part: SystemPart, rng: np.random.Generator) -> list[Atoms]:
    """A system's starting structures displaced at random (Gaussian, std in Å),
    round-robin, as its initial data asks (``part``: one of :meth:`RunConfig.parts`)."""
    frames = read_structures(part.structures)
    initial = part.initial_data or InitialDataConfig()
    out = []
    for k in range(initial.n_structures):
        atoms = frames[k % len(frames)].copy()
        atoms.calc = None
        atoms.positions += rng.normal(0.0, initial.displacement, atoms.positions.shape)
        out.append(atoms)
    return out
