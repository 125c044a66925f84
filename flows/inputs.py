"""Reading a run config file and checking what it names, for :mod:`flows.config`.

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
import tempfile
import typing
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from ase import Atoms
from ase.data import chemical_symbols
from pydantic import BaseModel, ValidationError

from adversarial.geometry import check_geometry
from calculators.factory import import_factory

if TYPE_CHECKING:
    from flows.config import RunConfig, RunnersConfig


class ConfigError(Exception):
    """A config or its inputs are invalid. ``problems`` lists every problem found."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


# ---------------------------------------------------------------------------------------
# Reading a config file.

_EXAMPLE = "see examples/ammonia.yaml"
# Units a field's description may start with ("K", "Å; ..."), named when a number is wrong.
_UNITS = ("K", "Å", "eV", "eV/Å", "fs", "1/fs", "s", "h", "Hartree", "MB")
_NUMBER_WITH_UNIT = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*[^\d\s.]")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the
    last one silently, so a second ``dft:`` section would replace the first)."""

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
                    None, None, f"found duplicate key {key!r} (first given at line {seen.line + 1})",
                    key_node.start_mark)
        return super().construct_mapping(node, deep)


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
    if not path.is_file():
        raise refuse("config file not found; check the path")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise refuse(f"cannot read the config file ({err.strerror}); make it readable "
                     "(chmod u+r)") from err
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise refuse(f"not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); save the "
                     "file as UTF-8") from err
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as err:
        raise refuse(_yaml_problem(err)) from err
    if raw is None:
        raise refuse("the config file is empty; it needs at least a system section with name "
                     f"and structures ({_EXAMPLE})")
    if not isinstance(raw, dict):
        what = "a list: remove the leading '- '" if isinstance(raw, list) else f"a {type(raw).__name__}"
        raise refuse("the config must be a YAML mapping of sections (system, dft, model, ...), "
                     f"not {what} ({_EXAMPLE})")
    return raw


def _unit_of(description: str | None) -> str | None:
    """The unit a pydantic field's description starts with (``"K"``, ``"s; None: ..."``)."""
    words = (description or "").replace(";", " ").split()
    return words[0] if words and words[0] in _UNITS else None


def _section(root: type[BaseModel], loc: tuple) -> Any:
    """The class of the section of the config model ``root`` at ``loc`` (``()``: root)."""
    section: Any = root
    for part in loc:
        is_model = isinstance(section, type) and issubclass(section, BaseModel)
        field = section.model_fields.get(part) if is_model else None
        section = field.annotation if field else None
    return section


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


def _problem(error: dict, root: type[BaseModel]) -> str:
    """One of pydantic's errors as ``key: what is wrong and what to do (got ...)``."""
    loc = tuple(error["loc"])
    key = ".".join(str(x) for x in loc) or "(top level)"
    kind, value = error["type"], error.get("input")
    got = f" (got {value!r})"
    siblings = _units(_section(root, loc[:-1])) if loc else {}  # the keys beside this one
    unit = siblings.get(loc[-1]) if loc else None
    in_unit = f" in {unit}" if unit else ""
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        close = difflib.get_close_matches(str(loc[-1]), list(siblings), n=1)
        guess = f"; did you mean {close[0]!r}?" if close else ""
        return f"{key}: unknown key{guess} (check its spelling; {_EXAMPLE})"
    if kind == "missing":
        return f"{key}: required key is missing; add it ({_EXAMPLE})"
    if kind == "union_tag_invalid":
        return f"{key}: unknown kind {value.get('kind')!r}; use one of {', '.join(_union_kinds(root, loc))}"
    if kind == "union_tag_not_found":
        return f"{key}: say which runner with kind: one of {', '.join(_union_kinds(root, loc))}"
    if kind in ("int_parsing", "int_type", "int_from_float", "float_parsing", "float_type"):
        if _number_with_unit(value):
            return f"{key}: give a plain number{in_unit}, without a unit{got}"
        number = "a number" if kind.startswith("float") else "a whole number"
        return f"{key}: must be {number}{in_unit}{got}"
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
    if kind == "value_error":  # a settings class's own check, on the key or its section
        if msg.startswith((f"{key}.", f"{key}:", f"{key} ")):
            text = msg  # `attack.temperature must be positive, got -3.0`
        elif msg.split(" ", 1)[0] in _units(_section(root, loc)):
            text = f"{key}.{msg}"  # `percentile must be ...` in section selection
        else:
            text = f"{key}: {msg}"
        return text + ("" if isinstance(value, dict) else got)
    return f"{key}: {msg}{got}"


def _union_kinds(root: type[BaseModel], loc: tuple) -> list[str]:
    """The ``kind`` values the tagged union at ``loc`` accepts (runners: threads, ...)."""
    members = typing.get_args(_section(root, loc))
    fields = [getattr(m, "model_fields", {}).get("kind") for m in members]
    return [str(k) for f in fields if f is not None for k in typing.get_args(f.annotation)]


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


def read_structures(path: Path) -> list[Atoms]:
    """Every frame of a structure file, or raise ValueError saying why it is unreadable and
    what to do."""
    from ase.io import read

    if path.is_dir():
        raise ValueError(f"{path} is a folder; give the structure file itself (xyz, extxyz, "
                         "CIF, ... as ase.io.read reads)")
    if not path.is_file():
        raise ValueError(f"structure file {path} not found; check the path (a relative path "
                         "is read from the config file's folder)")
    try:
        with path.open("rb") as f:
            empty = not f.read(1)
    except OSError as err:
        raise ValueError(f"structure file {path} cannot be opened ({err.strerror}); make it "
                         "readable (chmod u+r)") from err
    fmt = _FORMAT_HINTS.get(path.suffix.lower(), "a file ase.io.read reads (the format comes "
                                                  "from the extension)")
    if empty:
        raise ValueError(f"structure file {path} is empty; it must be {fmt}")
    try:
        with warnings.catch_warnings():  # ASE warns, then fails or skips: reported below
            warnings.simplefilter("ignore")
            frames = read(str(path), index=":")
    except KeyError as err:  # ASE's lookup of an element symbol
        symbol = err.args[0] if err.args else None
        if isinstance(symbol, str) and symbol not in chemical_symbols:
            raise ValueError(f"structure file {path} names an unknown element {symbol!r}; use "
                             "element symbols such as H, C, N, O, Cl (capital letter first)") from err
        raise ValueError(f"structure file {path} could not be read ({err!r}); it must be {fmt}") from err
    except Exception as err:  # ASE raises many types for malformed files
        raise ValueError(f"structure file {path} could not be read ({err}); it must be {fmt}") from err
    if not frames:
        raise ValueError(f"structure file {path} holds no structures; it must be {fmt}")
    return frames


def _geometry_problem(reason: str) -> str:
    """A reason from :func:`check_geometry`, with what to do about it."""
    if reason.startswith("not finite"):
        return f"{reason}; give every coordinate as a finite number, in Å"
    return (f"{reason}; move them apart (positions are read in Å: check the file's units "
            "and that no atom is listed twice)")


def check_inputs(config: RunConfig) -> list[str]:
    """Problems with the config's structures and level of theory (empty if none)."""
    problems: list[str] = []
    try:
        frames = read_structures(config.system.structures)
    except ValueError as err:
        return [f"system.structures: {err}"]
    if len({tuple(a.numbers) for a in frames}) > 1:
        problems.append("system.structures: all structures must have the same atoms in the "
                        "same order (one composition per run); split them into one run per "
                        "composition")
    pyscf = config.labels.calculator == "pyscf"
    for k, atoms in enumerate(frames):
        where = f"system.structures frame {k}"
        if len(atoms) == 0:
            problems.append(f"{where}: has no atoms; give at least one atom per structure")
            continue
        if atoms.pbc.any() and pyscf:
            problems.append(f"{where}: a periodic cell cannot be labelled "
                            "by the molecular PySCF calculator; choose labels.calculator: "
                            "pyscf_periodic or tblite (or your own: python)")
        elif not atoms.pbc.any() and config.labels.calculator == "pyscf_periodic":
            problems.append(f"{where}: labels.calculator pyscf_periodic "
                            "needs a periodic cell (pbc and a cell in the structure file); "
                            "use labels.calculator: pyscf for a molecule")
        elif atoms.pbc.any() and not atoms.pbc.all():
            problems.append(f"{where}: pbc must be all true or all false, "
                            f"got {atoms.pbc.tolist()}")
        try:
            reason = check_geometry(atoms.numbers, atoms.positions,
                                    config.selection.min_distance_factor, 1e9,
                                    atoms.cell.array, atoms.pbc)
        except ValueError as err:  # e.g. a dummy atom (X, atomic number 0)
            problems.append(f"{where}: {err}; use real element symbols")
            continue
        if reason is not None:
            problems.append(f"{where}: {_geometry_problem(reason)}")
    protons = int(frames[0].numbers.sum())
    n_electrons = protons - config.dft.charge
    if n_electrons <= 0:
        problems.append(f"dft.charge {config.dft.charge} leaves {n_electrons} electrons "
                        f"({protons} protons); the charge must be below {protons} (it is the "
                        "total charge in e: 0 for a neutral system, 1 for a cation)")
    elif (n_electrons - config.dft.spin) % 2:
        problems.append(
            f"dft.spin (2S = {config.dft.spin}) cannot fit {n_electrons} electrons "
            f"(charge {config.dft.charge}): 2S must be {'odd' if n_electrons % 2 else 'even'} "
            "(it counts the unpaired electrons), or change dft.charge")
    if pyscf:
        problems.extend(_basis_problems(config.dft.basis, sorted(set(frames[0].get_chemical_symbols()))))
    if config.labels.calculator == "python":
        try:
            import_factory(config.labels.python)
        except ValueError as err:
            problems.append(f"{err}; labels.python must name a package.module:callable that "
                            "this Python can import: check the spelling, or install the package")
    problems.extend(_runner_problems(config.runners))
    return problems


def _runner_problems(runners: RunnersConfig) -> list[str]:
    """Runners whose packages are not installed (the ``cluster`` extra)."""
    out = []
    for phase in ("training", "labelling"):
        kind = getattr(runners, phase).kind
        needed = {"dask": ("prefect_dask", "distributed"),
                  "slurm": ("prefect_dask", "distributed", "dask_jobqueue")}.get(kind, ())
        missing = [m for m in needed if importlib.util.find_spec(m) is None]
        if missing:
            out.append(f"runners.{phase}: kind {kind} needs {', '.join(missing)}, not installed: "
                       "pip install 'advloop[cluster]'")
    return out


def _basis_problems(basis: str, symbols: list[str]) -> list[str]:
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
        return [f"output_dir: cannot write in {existing} ({err.strerror}), where {where} goes; "
                f"make it writable {instead}"]
    need = config.compute.min_free_disk_mb
    free = shutil.disk_usage(existing).free // 1_000_000
    if need and free < need:
        return [f"output_dir: {existing} has {free} MB free on its disk, less than "
                f"compute.min_free_disk_mb ({need} MB) for the checkpoints and labels of {where}; "
                "free some space, choose an output_dir on another disk (or advloop run "
                "--output-dir), or lower compute.min_free_disk_mb (0 turns the check off)"]
    return []
