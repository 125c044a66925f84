"""What keeps one run folder whole: one run at a time, one definition of its data, and
records that are written whole or not at all.

- :func:`hold` takes the run folder's lock (``run.lock``, ``fcntl.flock``) for a run's
  whole length: a second ``advloop run``, worker or served flow of the same folder is
  refused at once with :class:`RunFolderBusy`, which names the holder (host, pid, since
  when). The kernel releases the lock when its process dies, however it dies.
- :func:`fingerprint` is what defines a run's data: the level of theory with every
  setting that changes its numbers, the starting structures' content, how the initial
  dataset is made, the model and the committee's members. It is kept in
  ``fingerprint.json`` when a run starts; :func:`resume_problems` refuses a resume whose
  config differs there, one line per changed key. Everything else (exploration, attack,
  selection, convergence, budgets, training, compute and runners) may change between
  invocations; each generation record names the config it ran with (``config_sha256``,
  kept in ``configs/<sha>.yaml``).
- :func:`write_atomic` writes a file whole (temporary file, fsync, rename), readable by
  its owner only; :func:`read_records` reads ``generations.jsonl``, skipping a torn line
  with a warning, and :func:`append_record` rewrites it whole with one record more.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from advloop.calculators.factory import theory_settings
from advloop.potentials.hashing import structure_hash
from advloop.potentials.run_layout import RunLayout

if TYPE_CHECKING:
    from advloop.flows.config import RunConfig

__all__ = ["RunFolderBusy", "append_record", "config_sha256", "fingerprint", "hold",
           "read_records", "record_config", "resume_problems", "write_atomic",
           "write_fingerprint"]

logger = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""


# ---------------------------------------------------------------------------------------
# Files written whole.

def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temporary file beside it, fsync,
    rename), with permissions ``mode``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # O_CREAT's mode is filtered by the umask
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_records(path: Path) -> list[dict]:
    """The JSON records of a ``.jsonl`` file, one per line; a line that is not a whole
    JSON object (a file cut mid-line) is skipped with a warning."""
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "generation" not in record:
            logger.warning("%s line %d is not a whole record (the file was cut or edited); "
                           "skipped: that generation is recomputed from the run folder's "
                           "files, nothing is labelled again", path, number)
            continue
        records.append(record)
    return records


def append_record(path: Path, record: Mapping) -> None:
    """Add ``record`` to the ``.jsonl`` file at ``path``, rewriting it whole (torn lines
    dropped), so a kill at any moment leaves either the old file or the new one."""
    lines = [json.dumps(r) for r in read_records(path)] + [json.dumps(dict(record))]
    write_atomic(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------
# One run at a time.

_HELD: dict[Path, list[int]] = {}  # lock file -> [fd, depth] held by this process
_HELD_GUARD = threading.Lock()


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(float(info["since"])))
        return f"host {info['host']}, pid {info['pid']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its details are not readable)"


@contextlib.contextmanager
def hold(root: Path) -> Iterator[None]:
    """Hold the lock of the run folder ``root`` (made if missing) until the block ends.

    Re-entrant within a process (the command line takes it, then the flow it runs).
    Raises :class:`RunFolderBusy` at once if another process holds it.
    """
    root.mkdir(parents=True, exist_ok=True)
    path = (root / "run.lock").resolve()
    with _HELD_GUARD:
        held = _HELD.get(path)
        if held is not None:
            held[1] += 1
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunFolderBusy(
                    f"the run folder {root} is in use by another advloop run ({_holder(path)}); "
                    "wait for it to finish or stop it, or give this run another system.name or "
                    "output_dir (two runs of one folder would label and record the same "
                    "generations twice)") from None
            info = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                               "since": time.time()})
            os.ftruncate(fd, 0)
            os.pwrite(fd, info.encode(), 0)
            _HELD[path] = [fd, 1]
    try:
        yield
    finally:
        with _HELD_GUARD:
            held = _HELD[path]
            held[1] -= 1
            if held[1] == 0:
                del _HELD[path]
                os.close(held[0])  # releases the lock


# ---------------------------------------------------------------------------------------
# What defines a run's data.

def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for key in sorted(value):
            _flatten(f"{prefix}.{key}", value[key], out)
    else:
        out[prefix] = value


def _structures_hash(config: RunConfig) -> str:
    from advloop.flows.inputs import read_structures

    digest = hashlib.sha256(b"advloop-structures-v1")
    for atoms in read_structures(config.system.structures):
        digest.update(structure_hash(atoms).encode())
    return digest.hexdigest()


def fingerprint(config: RunConfig) -> dict[str, Any]:
    """The settings that define a run's data, flattened to ``section.key`` → JSON value:
    the labeller's level of theory (``labels.*``, with every setting that changes its
    numbers), the starting structures' content hash (``system.structures``), the initial
    dataset (``initial_data.*``), the model (``model.*``) and the committee's size and
    seed (``committee.n_members``, ``committee.seed``)."""
    flat: dict[str, Any] = {}
    theory = theory_settings(config.labels)
    _flatten("labels", json.loads(json.dumps(theory, default=str)), flat)
    flat["system.structures"] = _structures_hash(config)
    dumped = config.model_dump(mode="json")
    for section in ("initial_data", "model"):
        _flatten(section, dumped[section], flat)
    for key in ("n_members", "seed"):
        flat[f"committee.{key}"] = dumped["committee"][key]
    return flat


def _stored_fingerprint(layout: RunLayout) -> dict[str, Any] | None:
    path = layout.fingerprint
    if not path.exists():
        return None
    try:
        return dict(json.loads(path.read_text())["settings"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _has_data(layout: RunLayout) -> bool:
    return any(p.exists() for p in (layout.dataset, layout.initial_structures, layout.labels,
                                    layout.generations))


def resume_problems(config: RunConfig) -> list[str]:
    """Why the config cannot resume its run folder (empty: it can, or there is none yet):
    one line per setting that defines the data and differs from the run's, old → new."""
    layout = RunLayout(config.run_dir())
    old = _stored_fingerprint(layout)
    if old is None:
        return []
    new = fingerprint(config)
    changed = [key for key in sorted(old.keys() & new.keys()) if old[key] != new[key]]
    if not changed:
        return []

    def show(key: str, value: Any) -> str:
        text = json.dumps(value)
        return text if key != "system.structures" else f"structures {text[1:13]}…"

    lines = [f"{key}: {show(key, old[key])} → {show(key, new[key])}" for key in changed]
    lines.append(f"the run folder {layout.root} holds data made with the settings on the left: "
                 "resuming it with these would mix them in one dataset; put them back, or "
                 "start a new run with another system.name or output_dir (advloop run "
                 "--output-dir)")
    return lines


def write_fingerprint(config: RunConfig) -> bool:
    """Keep the config's :func:`fingerprint` in the run folder unless it is there already;
    True if it was written (a new run, or a folder from before fingerprints)."""
    layout = RunLayout(config.run_dir())
    if _stored_fingerprint(layout) is not None:
        return False
    if _has_data(layout):
        logger.warning("%s has no fingerprint.json (made by an older advloop): taking this "
                       "config's data settings as the run's from now on", layout.root)
    write_atomic(layout.fingerprint, json.dumps(
        {"version": FINGERPRINT_VERSION, "created": time.time(),
         "settings": fingerprint(config)}, indent=1) + "\n")
    return True


def config_sha256(config: RunConfig) -> str:
    """The first 16 hex digits of the SHA-256 of the config's canonical JSON (the run
    folder's location left out)."""
    dumped = config.model_dump(mode="json")
    dumped.pop("output_dir", None)
    text = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def record_config(config: RunConfig) -> str:
    """Write the config as ``config.yaml`` (the latest) and ``configs/<sha>.yaml`` (every
    config the run has run with), owner-only; return its :func:`config_sha256`."""
    layout = RunLayout(config.run_dir())
    sha = config_sha256(config)
    text = config.to_yaml()
    write_atomic(layout.config, text)
    kept = layout.configs / f"{sha}.yaml"
    if not kept.exists():
        write_atomic(kept, text)
    return sha
