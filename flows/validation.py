"""Loading and validating a run config file: :func:`load_config` (the file, its keys,
types, ranges and :data:`~advloop.flows.config.LIMITS`) and :func:`validate_config` (also
the structures, the labeller's own pre-flight checks, the runners and the run folder),
each reporting every problem at once, computing nothing and leaving nothing behind.

A config in the form before labels and exploration became kinds (``dft:``,
``periodic_dft:``, ``attack:``, ``md:``, ``random:``, ``labels.calculator``,
``exploration.strategy``, the geometry limits in four sections) is refused with the new
form of each moved key (:func:`moved_key_problems`).

Imports run one way: :mod:`advloop.flows.config` (the schema) ← :mod:`advloop.flows.inputs`
(reading and checking) ← this module.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from advloop.calculators.factory import PythonLabels
from advloop.flows.config import (
    DEFAULT_KINDS,
    GEOMETRY_KEYS,
    LIMITS,
    ConfigError,
    InitialDataConfig,
    RunConfig,
    short_repr,
)
from advloop.flows.inputs import (
    check_inputs,
    check_run_folder,
    format_validation_error,
    read_mapping,
    shown_loc,
)
from advloop.flows.run_folder import resume_problems

__all__ = ["load_config", "moved_key_problems", "validate_config"]

# Sections of the old form whose keys moved into a kind: old section -> (section, kind).
_MOVED_SECTIONS = {
    "dft": ("labels", "pyscf"),
    "periodic_dft": ("labels", "pyscf_periodic"),
    "attack": ("exploration", "adversarial"),
    "md": ("exploration", "md"),
    "random": ("exploration", "random"),
}
# Keys of the old form that moved inside their section: (section, old key) -> new key.
_RENAMED = {
    ("labels", "calculator"): "kind",
    ("labels", "tblite_method"): "method",
    ("labels", "python"): "factory",
    ("exploration", "strategy"): "kind",
}
_KIND_OF_RENAMED = {("labels", "tblite_method"): "tblite", ("labels", "python"): "python"}


def _flow(value: dict) -> str:
    """``{kind: pyscf, xc: PBE}``: a mapping as one line of YAML."""
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()


def moved_key_problems(raw: dict) -> list[str]:
    """Every key of the config mapping ``raw`` that is in the form before labels and
    exploration became kinds, each with where it went, and last the new form of the
    sections they move to (empty if there is none)."""
    out: list[str] = []
    new: dict[str, dict[str, Any]] = {}  # the sections the moved keys go to

    def move(old: str, section: str, key: str, value: Any, kind: str | None) -> None:
        target = new.setdefault(section, {})
        with_kind = ""
        if kind is not None:
            target.setdefault("kind", kind)
            with_kind = f" (with {section}.kind: {kind})"
        target[key] = value
        out.append(f"{old}: moved to {section}.{key}{with_kind}")

    labels = raw.get("labels")
    labels = labels if isinstance(labels, dict) else {}
    labelled_by = labels.get("calculator", "pyscf")
    exploration = raw.get("exploration")
    exploration = exploration if isinstance(exploration, dict) else {}
    explored_by = exploration.get("strategy", exploration.get("kind", "adversarial"))
    for (section, old_key), new_key in _RENAMED.items():
        given = raw.get(section)
        if isinstance(given, dict) and old_key in given:
            move(
                f"{section}.{old_key}",
                section,
                new_key,
                given[old_key],
                _KIND_OF_RENAMED.get((section, old_key)),
            )
    for old, (section, kind) in _MOVED_SECTIONS.items():
        if old not in raw:
            continue
        value = raw[old]
        if not isinstance(value, dict) or not value:
            out.append(
                f"{old}: moved into {section} (with {section}.kind: {kind}); give its "
                f"settings there"
            )
            continue
        tblite = old == "dft" and labelled_by == "tblite"
        for key, item in value.items():
            if key in GEOMETRY_KEYS:
                move(f"{old}.{key}", "geometry", key, item, None)
            elif tblite and key in ("charge", "spin"):
                move(f"dft.{key}", "labels", "charge" if key == "charge" else "uhf", item, "tblite")
            elif section == "exploration" and kind != explored_by:
                out.append(
                    f"{old}.{key}: moved to exploration.{key} (with exploration.kind: "
                    f"{kind}); this run explores with {explored_by}, which does not read "
                    "it: drop it, or choose that kind"
                )
            elif section == "labels" and kind != labelled_by:
                out.append(
                    f"{old}.{key}: moved to labels.{key} (with labels.kind: {kind}); "
                    f"this run labels with {labelled_by}, which does not read it: drop "
                    "it, or choose that kind"
                )
            else:
                move(f"{old}.{key}", section, key, item, kind)
    for section in ("exploration", "selection"):
        given = raw.get(section)
        if not isinstance(given, dict):
            continue
        for key in GEOMETRY_KEYS:
            if key in given:
                move(f"{section}.{key}", "geometry", key, given[key], None)
    if out:
        lines = "; ".join(
            f"{section}: {_flow(_merged(raw.get(section), keys))}" for section, keys in new.items()
        )
        out.append(
            "this config is in the form before labels and exploration became kinds; "
            f"write the moved keys as {lines} (see examples/ammonia.yaml)"
        )
    return out


def _merged(given: Any, moved: dict[str, Any]) -> dict[str, Any]:
    """The section ``given`` (if a mapping) with the ``moved`` keys, the old ones dropped."""
    old = (
        {
            k: v
            for k, v in given.items()
            if k not in ("calculator", "tblite_method", "python", "strategy", *GEOMETRY_KEYS)
        }
        if isinstance(given, dict)
        else {}
    )
    kind = moved.get("kind", old.get("kind"))
    merged = {**old, **moved}
    return {"kind": kind, **merged} if kind is not None else merged


def _limit_problems(raw: dict, reported: set[str]) -> list[str]:
    """The counts of the config mapping ``raw`` above :data:`LIMITS`, except the keys in
    ``reported`` (already refused for another reason). Read from the mapping itself, so that
    they are reported with every other problem of the file."""
    out = []
    for qualified, (limit, why) in LIMITS.items():
        section, _, rest = qualified.partition(".")
        section, _, kind = section.partition("[")
        key = f"{section}.{rest}"
        value: object = raw
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if kind:
            given = raw.get(section)
            if not isinstance(given, dict) or (
                given.get("kind", DEFAULT_KINDS.get(section)) != kind.rstrip("]")
            ):
                continue
        if key in reported or isinstance(value, bool) or value is None:
            continue
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:  # not a number: pydantic says so
                continue
        if isinstance(number, (int, float)) and number > limit:
            out.append(
                f"{key}: {short_repr(value)} is above the limit of {limit}: {why}; give at "
                f"most {limit}"
            )
    return out


def load_config(path: str | Path, output_dir: str | Path | None = None) -> RunConfig:
    """Parse and validate a config file (syntax, keys, types, ranges and
    :data:`~advloop.flows.config.LIMITS`); no file checks. A leading ``~`` in
    ``system.structures``, ``initial_data.files``, ``output_dir`` and the ``output_dir``
    argument is the home folder; relative paths of files are relative to the config's
    folder.

    Raises :class:`~advloop.flows.config.ConfigError`, with every moved key of an old-style
    config (:func:`moved_key_problems`) before anything else.
    """
    path = Path(path)
    raw = read_mapping(path)
    moved = moved_key_problems(raw)
    if moved:
        raise ConfigError(str(path), moved)
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as err:
        problems = format_validation_error(err, RunConfig)
        reported = {".".join(shown_loc(RunConfig, tuple(e["loc"]))) for e in err.errors()}
        raise ConfigError(str(path), problems + _limit_problems(raw, reported)) from err
    problems = _limit_problems(raw, set())
    if problems:
        raise ConfigError(str(path), problems)
    out = _home(
        Path(output_dir) if output_dir is not None else config.output_dir,
        "--output-dir" if output_dir is not None else "output_dir",
        path,
    )
    folder = path.resolve().parent

    def here(value: Path, key: str) -> Path:
        return folder / _home(value, key, path)

    def files_here(initial: InitialDataConfig, key: str) -> InitialDataConfig:
        files = [f.model_copy(update={"path": here(f.path, key)}) for f in initial.files]
        return initial.model_copy(update={"files": files})

    system = config.system
    parts = [
        p.model_copy(
            update={
                "structures": here(p.structures, "system.parts structures"),
                "initial_data": p.initial_data
                and files_here(p.initial_data, "system.parts initial_data.files"),
            }
        )
        for p in system.parts
    ]
    updates: dict[str, Any] = {
        "system": system.model_copy(
            update={
                "structures": system.structures and here(system.structures, "system.structures"),
                "parts": parts,
            }
        ),
        "output_dir": out,
        "initial_data": files_here(config.initial_data, "initial_data.files"),
    }
    if isinstance(config.labels, PythonLabels):
        # a calculator module beside the config file (or in labels.path, relative to it)
        where = folder / _home(Path(config.labels.path or "."), "labels.path", path)
        updates["labels"] = dataclasses.replace(config.labels, path=str(where))
    return config.model_copy(update=updates)


def _home(value: Path, key: str, config: Path) -> Path:
    """``value`` with a leading ``~`` or ``~user`` made the home folder; ConfigError if
    there is no such user."""
    try:
        return value.expanduser()
    except RuntimeError as err:  # ~user of an unknown user, or no home folder
        raise ConfigError(
            str(config),
            [
                f"{key}: cannot find the home folder of {str(value).split('/')[0]!r}; give the "
                "path without '~', or with the name of a user of this machine"
            ],
        ) from err


def validate_config(
    path: str | Path, output_dir: str | Path | None = None, *, run_folder: bool = True
) -> RunConfig:
    """Full validation: the config, its inputs and, with ``run_folder``, its run folder on
    this machine (see :func:`~advloop.flows.inputs.check_run_folder`; leave it out where the
    run happens elsewhere, as for a submission to a cluster's shared path). Raises
    :class:`~advloop.flows.config.ConfigError` with every problem found; computes nothing
    and leaves nothing behind."""
    config = load_config(path, output_dir)
    problems = check_inputs(config) + (check_run_folder(config) if run_folder else [])
    if run_folder and not problems:
        problems = resume_problems(config)  # an existing run folder's data settings
    if problems:
        raise ConfigError(str(path), problems)
    return config
