"""The run folder: where a run keeps its files, and what keeps it whole. The one module
that knows the layout and owns the formats of the files in it (the dataset's HDF5 is
:mod:`advloop.potentials.dataset`'s, checkpoints :mod:`advloop.potentials.checkpoint`'s
and labels :mod:`advloop.calculators.label_store`'s; this module says where they go)::

    runs/<system name>/
        config.yaml                 the validated configuration of the latest invocation
        configs/<sha>.yaml          every configuration the run has run with (generation
                                    records name theirs by ``config_sha256``)
        fingerprint.json            the settings that define the run's data
        run.lock                    held by the process running the run
        dataset.h5                  labelled structures (see advloop.potentials.dataset)
        dataset.h5.lock             held while the dataset is read (shared) or written (alone)
        .dask-tls/                  TLS key and certificate of a Slurm runner's workers
        committee/gen_000/member_0.pt ...   checkpoints of each generation's committee
        candidates/initial.npz      the displaced starting structures of the initial dataset
        candidates/gen_001.npz      a generation's candidates, exactly, with their uncertainties
        candidates/gen_001_trace.npz   the attack's objective and σ per step and seed
        candidates/gen_001_selection.json   the candidates chosen for labelling, kept before
                                    any is labelled (a resumed run labels exactly these)
        labels/ab/<key>.npz         every label computed, keyed by structure and level of theory
        generations.jsonl           one JSON record per finished generation
        summary.json                the run's outcome: why it stopped, totals
        submissions/<time>-<id>/    configs and structures sent with `advloop submit`

What keeps it whole: one run at a time, one definition of its data, and records that are
written whole or not at all.

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
- Candidates are kept once and exactly (:func:`write_candidates`, float64 ``.npz``) with
  their explore report; the initial structures likewise (:func:`write_initial`); each
  generation's selection is kept before anything is labelled (:func:`write_selection`).
- :func:`write_atomic` writes a file whole (temporary file, fsync, rename), readable by
  its owner only; :func:`read_records` reads ``generations.jsonl``, skipping a torn line
  with a warning, and :func:`append_record` rewrites it whole with one record more.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ase import Atoms

from advloop.adversarial.structures import Candidates
from advloop.calculators.factory import theory_settings
from advloop.flows.records import GenerationRecord, RunSummary
from advloop.potentials.checkpoint import CommitteeFolder
from advloop.potentials.hashing import structure_hash

if TYPE_CHECKING:
    from advloop.flows.config import LabelledFile, RunConfig

__all__ = [
    "INITIAL",
    "RunFolderBusy",
    "RunLayout",
    "append_record",
    "batch_name",
    "config_sha256",
    "fingerprint",
    "HEARTBEAT_SECONDS",
    "STALE_BEATS",
    "Holder",
    "hold",
    "read_holder",
    "read_candidates",
    "read_initial",
    "read_generations",
    "read_records",
    "read_selection",
    "read_summary",
    "record_config",
    "resume_problems",
    "append_generation",
    "write_atomic",
    "write_candidates",
    "write_summary",
    "write_fingerprint",
    "write_initial",
    "write_selection",
    "IMPORTED",
    "INITIAL_STRATEGIES",
]

logger = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1


#: The batch of structures labelled for the initial dataset, in the places where a
#: generation's number names a batch (:meth:`RunLayout.batch`, label tasks).
INITIAL = -1

#: The provenance strategy of labelled frames a run imported (``initial_data.files``), and
#: the strategies of the initial dataset (before any exploration): generation 0's records
#: of these are not a generation's new labels.
IMPORTED = "imported"
INITIAL_STRATEGIES = frozenset({"initial", IMPORTED})


def batch_name(generation: int) -> str:
    """How a batch of structures to label is named to people: ``initial`` or ``gen 3``."""
    return "initial" if generation == INITIAL else f"gen {generation}"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset.h5"

    @property
    def generations(self) -> Path:
        return self.root / "generations.jsonl"

    @property
    def fingerprint(self) -> Path:
        return self.root / "fingerprint.json"

    @property
    def configs(self) -> Path:
        return self.root / "configs"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def labels(self) -> Path:
        """The content-addressed label store (see advloop.calculators.label_store)."""
        return self.root / "labels"

    @property
    def submissions(self) -> Path:
        """Inputs of runs submitted to a server (see advloop.flows.deployments)."""
        return self.root / "submissions"

    @property
    def committee(self) -> CommitteeFolder:
        return CommitteeFolder.of_run(self.root)

    def committee_dir(self, generation: int) -> Path:
        return self.committee.generation_dir(generation)

    def member_checkpoint(self, generation: int, member: int) -> Path:
        return self.committee.member(generation, member)

    def trained_generations(self) -> list[int]:
        return self.committee.trained_generations()

    def committee_checkpoints(self, generation: int | None = None) -> list[Path]:
        """Checkpoints of ``generation`` (default: the latest trained one)."""
        return self.committee.checkpoints(generation)

    def candidates(self, generation: int) -> Path:
        return self.root / "candidates" / f"gen_{generation:03d}.npz"

    def legacy_candidates(self, generation: int) -> Path:
        """Candidates as extended XYZ (8 decimals), written by advloop before 0.2."""
        return self.root / "candidates" / f"gen_{generation:03d}.extxyz"

    @property
    def initial_structures(self) -> Path:
        return self.root / "candidates" / "initial.npz"

    def selection(self, generation: int) -> Path:
        return self.root / "candidates" / f"gen_{generation:03d}_selection.json"

    def exploration_trace(self, generation: int) -> Path:
        return self.root / "candidates" / f"gen_{generation:03d}_trace.npz"


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
    for number, line in enumerate(
        path.read_text(encoding="utf-8", errors="replace").splitlines(), 1
    ):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "generation" not in record:
            logger.warning(
                "%s line %d is not a whole record (the file was cut or edited); "
                "skipped: that generation is recomputed from the run folder's "
                "files, nothing is labelled again",
                path,
                number,
            )
            continue
        records.append(record)
    return records


def append_record(path: Path, record: Mapping) -> None:
    """Add ``record`` to the ``.jsonl`` file at ``path``, rewriting it whole (torn lines
    dropped), so a kill at any moment leaves either the old file or the new one."""
    lines = [json.dumps(r) for r in read_records(path)] + [json.dumps(dict(record))]
    write_atomic(path, "\n".join(lines) + "\n")


def read_generations(root: Path) -> list[GenerationRecord]:
    """The generation records of a run folder in order, one per generation (a torn line is
    skipped with a warning; of a generation recorded twice, the last record)."""
    records = {r["generation"]: r for r in read_records(RunLayout(root).generations)}
    return [GenerationRecord.from_dict(records[g]) for g in sorted(records)]


def append_generation(root: Path, record: GenerationRecord) -> None:
    """Keep a finished generation's record in ``generations.jsonl`` (written whole)."""
    append_record(RunLayout(root).generations, record.to_dict())


def write_summary(root: Path, summary: RunSummary) -> None:
    write_atomic(RunLayout(root).summary, json.dumps(summary.to_dict(), indent=2))


def read_summary(root: Path) -> RunSummary | None:
    """The summary of a run that stopped (None: none, or not readable whole)."""
    path = RunLayout(root).summary
    try:
        return RunSummary.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


# ---------------------------------------------------------------------------------------
# One run at a time.

_HELD: dict[Path, list[Any]] = {}  # lock file -> [fd, depth, since, stop, thread, previous]
_HELD_GUARD = threading.Lock()


#: Seconds between the heartbeats a run's holder writes into ``run.lock``.
HEARTBEAT_SECONDS = 30.0
#: A holder whose last heartbeat is older than this many beats is taken for dead.
STALE_BEATS = 4
_LOCK_BYTES = 512  # the holder's record is padded to this, so each beat overwrites it whole


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a run folder's lock: host, pid, since when, its last
    heartbeat and, once it let go, when (s since the epoch)."""

    host: str
    pid: int
    since: float
    beat: float | None = None
    released: float | None = None
    previous: Holder | None = None  # the holder before this one (a resumed run's last)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "previous"}
        return out

    @classmethod
    def from_dict(cls, info: Mapping[str, Any]) -> Holder:
        previous = info.get("previous")
        return cls(
            host=str(info["host"]),
            pid=int(info["pid"]),
            since=float(info["since"]),
            beat=None if info.get("beat") is None else float(info["beat"]),
            released=None if info.get("released") is None else float(info["released"]),
            previous=cls.from_dict(previous) if isinstance(previous, Mapping) else None,
        )

    def describe(self) -> str:
        """``pid 12 on node3, started 2026-12-07 18:01:02 UTC, let go 18:20:11`` (or
        ``..., ended without letting go`` for a process that was killed)."""
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.since))
        end = (
            f"let go at {time.strftime('%H:%M:%S', time.localtime(self.released))}"
            if self.released is not None
            else "ended without letting go (killed, or its machine stopped)"
        )
        return f"pid {self.pid} on {self.host}, started {started}, {end}"


def read_holder(root: Path) -> Holder | None:
    """The holder record of ``root``'s ``run.lock`` (None: none, or not readable)."""
    try:
        return Holder.from_dict(json.loads((root / "run.lock").read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _holder(path: Path) -> str:
    holder = read_holder(path.parent)
    if holder is None:
        return "another process (its details are not readable)"
    since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(holder.since))
    return f"host {holder.host}, pid {holder.pid}, since {since}"


def _write_holder(fd: int, since: float, previous: Holder | None, **more: float) -> None:
    info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "since": since}
    info.update(more)
    if previous is not None:
        info["previous"] = previous.to_dict()
    os.pwrite(fd, json.dumps(info).encode().ljust(_LOCK_BYTES), 0)


def _beat(
    fd: int, since: float, previous: Holder | None, stop: threading.Event, every: float
) -> None:
    while not stop.wait(every):
        try:
            _write_holder(fd, since, previous, beat=time.time())
        except OSError:  # the folder went away or the disk is full: the run says so itself
            return


@contextlib.contextmanager
def hold(root: Path, heartbeat: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Hold the lock of the run folder ``root`` (made if missing) until the block ends.

    Re-entrant within a process (the command line takes it, then the flow it runs).
    Raises :class:`RunFolderBusy` at once if another process holds it. While held, the
    holder's record in ``run.lock`` (host, pid, since) gets a heartbeat every
    ``heartbeat`` seconds, and the time it let go at the end, so that ``advloop status``
    tells a run that is alive from one whose process died (:func:`read_holder`).
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
                    "generations twice)"
                ) from None
            since = time.time()
            previous = read_holder(root)
            if previous is not None:
                previous = dataclasses.replace(previous, previous=None)
            os.ftruncate(fd, 0)
            _write_holder(fd, since, previous, beat=since)
            stop = threading.Event()
            beats = threading.Thread(
                target=_beat,
                args=(fd, since, previous, stop, heartbeat),
                name="advloop-heartbeat",
                daemon=True,
            )
            beats.start()
            _HELD[path] = [fd, 1, since, stop, beats, previous]
    try:
        yield
    finally:
        with _HELD_GUARD:
            held = _HELD[path]
            held[1] -= 1
            if held[1] == 0:
                del _HELD[path]
                fd, _, since, stop, beats, previous = held
                stop.set()
                beats.join()
                with contextlib.suppress(OSError):
                    now = time.time()
                    _write_holder(fd, since, previous, beat=now, released=now)
                os.close(fd)  # releases the lock


# ---------------------------------------------------------------------------------------
# What defines a run's data.


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for key in sorted(value):
            _flatten(f"{prefix}.{key}", value[key], out)
    else:
        out[prefix] = value


def _structures_hash(path: Path) -> str:
    from advloop.flows.inputs import read_structures

    digest = hashlib.sha256(b"advloop-structures-v1")
    for atoms in read_structures(path):
        digest.update(structure_hash(atoms).encode())
    return digest.hexdigest()


def _parts_hash(config: RunConfig) -> str:
    """A content hash of ``system.parts``: each part's name, structures, initial data
    (its files by content). A part's share of the labels is left out: it changes what
    later generations label, not the data made so far."""
    digest = hashlib.sha256(b"advloop-parts-v1")
    for part in config.parts():
        initial = part.initial_data or config.initial_data
        settings = initial.model_dump(mode="json", exclude={"files"})
        digest.update(json.dumps([part.name, settings], sort_keys=True).encode())
        digest.update(_structures_hash(part.structures).encode())
        digest.update(_files_hash(initial.files).encode())
    return digest.hexdigest()


def _files_hash(files: list[LabelledFile]) -> str:
    """A content hash of the frames of ``initial_data.files``: each frame's structure,
    its label where it has one and the level of theory it is imported at."""
    from advloop.flows.inputs import read_labelled_file

    digest = hashlib.sha256(b"advloop-initial-files-v1")
    for spec in files:
        frames = read_labelled_file(spec)
        digest.update(f"{spec.same_level_as_labels}".encode())
        for atoms in frames.labelled:
            digest.update(structure_hash(atoms).encode())
            digest.update(str(atoms.info["level_of_theory"]).encode())
            digest.update(np.float64(atoms.get_potential_energy()).tobytes())
            digest.update(np.asarray(atoms.get_forces(), dtype=np.float64).tobytes())
        for atoms in frames.unlabelled:
            digest.update(b"unlabelled" + structure_hash(atoms).encode())
    return digest.hexdigest()


def fingerprint(config: RunConfig) -> dict[str, Any]:
    """The settings that define a run's data, flattened to ``section.key`` → JSON value:
    the labeller's level of theory (``labels.*``, with every setting that changes its
    numbers), the starting structures' content hash (``system.structures``, or that of
    ``system.parts``: each part's structures and initial data), the initial
    dataset (``initial_data.*``), the model (``model.*``) and the committee's size and
    seed (``committee.n_members``, ``committee.seed``)."""
    flat: dict[str, Any] = {}
    theory = theory_settings(config.labels)
    _flatten("labels", json.loads(json.dumps(theory, default=str)), flat)
    if config.system.parts:
        flat["system.parts"] = _parts_hash(config)
    else:
        flat["system.structures"] = _structures_hash(config.system.structures or Path())
    dumped = config.model_dump(mode="json")
    files = dumped["initial_data"].pop("files")
    for section in ("initial_data", "model"):
        _flatten(section, dumped[section], flat)
    if files:  # what the files hold, wherever they are now (absent: none, as before)
        flat["initial_data.files"] = _files_hash(config.initial_data.files)
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
    return any(
        p.exists()
        for p in (layout.dataset, layout.initial_structures, layout.labels, layout.generations)
    )


def resume_problems(config: RunConfig) -> list[str]:
    """Why the config cannot resume its run folder (empty: it can, or there is none yet):
    one line per setting that defines the data and differs from the run's, old → new."""
    layout = RunLayout(config.run_dir())
    old = _stored_fingerprint(layout)
    if old is None:
        return []
    new = fingerprint(config)
    # a key only one side has is a setting of another advloop version, but for the files:
    # their absence is the setting "none"
    optional = {"initial_data.files", "system.parts", "system.structures"}
    keys = old.keys() & new.keys() | (optional & (old.keys() | new.keys()))
    changed = [key for key in sorted(keys) if old.get(key) != new.get(key)]
    if not changed:
        return []

    def show(key: str, value: Any) -> str:
        if value is None:
            return "none"
        text = json.dumps(value)
        names = {
            "system.structures": "structures",
            "initial_data.files": "files",
            "system.parts": "parts",
        }
        return f"{names[key]} {text[1:13]}…" if key in names else text

    lines = [f"{key}: {show(key, old.get(key))} → {show(key, new.get(key))}" for key in changed]
    lines.append(
        f"the run folder {layout.root} holds data made with the settings on the left: "
        "resuming it with these would mix them in one dataset; put them back, or "
        "start a new run with another system.name or output_dir (advloop run "
        "--output-dir)"
    )
    return lines


def write_fingerprint(config: RunConfig) -> bool:
    """Keep the config's :func:`fingerprint` in the run folder unless it is there already;
    True if it was written (a new run, or a folder from before fingerprints)."""
    layout = RunLayout(config.run_dir())
    if _stored_fingerprint(layout) is not None:
        return False
    if _has_data(layout):
        logger.warning(
            "%s has no fingerprint.json (made by an older advloop): taking this "
            "config's data settings as the run's from now on",
            layout.root,
        )
    write_atomic(
        layout.fingerprint,
        json.dumps(
            {
                "version": FINGERPRINT_VERSION,
                "created": time.time(),
                "settings": fingerprint(config),
            },
            indent=1,
        )
        + "\n",
    )
    return True


@contextlib.contextmanager
def open_run(config: RunConfig) -> Iterator[RunLayout]:
    """The run folder of ``config``, held for a run's length (:func:`hold`): a resume
    whose data settings differ from the folder's is refused with
    :class:`~advloop.flows.config.ConfigError` (:func:`resume_problems`) before anything
    is written, and a new run's :func:`fingerprint` is kept."""
    from advloop.flows.config import ConfigError

    layout = RunLayout(config.run_dir())
    with hold(layout.root):
        problems = resume_problems(config)
        if problems:
            raise ConfigError(str(layout.root), problems)
        write_fingerprint(config)
        yield layout


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


# ---------------------------------------------------------------------------------------
# Structures: the initial batch, each generation's candidates and its selection.


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` whole: a temporary file beside it, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp.npz")
    try:
        # numpy's stub types **kwds against allow_pickle (bool) too
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _frames(
    numbers: np.ndarray,
    positions: np.ndarray,
    starts: np.ndarray,
    cells: np.ndarray,
    pbc: np.ndarray,
) -> list[Atoms]:
    return [
        Atoms(numbers=numbers[a:b], positions=positions[a:b], cell=cells[k], pbc=pbc[k])
        for k, (a, b) in enumerate(zip(starts[:-1], starts[1:]))
    ]


def write_initial(layout: RunLayout, structures: list[Atoms]) -> None:
    """Keep the initial structures (the displaced starting structures and the unlabelled
    frames of ``initial_data.files``; none where the files gave only labelled ones),
    exactly."""
    starts = np.concatenate([[0], np.cumsum([len(a) for a in structures])]).astype(np.int64)
    _save_npz(
        layout.initial_structures,
        {
            "numbers": np.concatenate([np.zeros(0, np.int64), *(a.numbers for a in structures)]),
            "positions": np.concatenate([np.zeros((0, 3)), *(a.positions for a in structures)]),
            "starts": starts,
            "cells": np.stack([a.cell.array for a in structures])
            if structures
            else np.zeros((0, 3, 3)),
            "pbc": np.stack([a.pbc for a in structures]) if structures else np.zeros((0, 3), bool),
        },
    )


def read_initial(layout: RunLayout) -> list[Atoms]:
    """The initial structures :func:`write_initial` kept."""
    with np.load(layout.initial_structures) as f:
        if "starts" in f:
            return _frames(f["numbers"], f["positions"], f["starts"], f["cells"], f["pbc"])
        # one [n_structures, n_atoms] block, as advloop 0.1 wrote them
        return [
            Atoms(numbers=z, positions=x, cell=c, pbc=p)
            for z, x, c, p in zip(f["numbers"], f["positions"], f["cells"], f["pbc"])
        ]


def write_candidates(
    layout: RunLayout, generation: int, candidates: Candidates, report: Mapping[str, Any]
) -> None:
    """Keep a generation's candidates exactly, with the report of the exploration that
    made them. ``candidates.parent`` holds each candidate's seed as a dataset index."""
    _save_npz(
        layout.candidates(generation),
        {
            "numbers": candidates.numbers,
            "positions": candidates.positions,
            "starts": candidates.starts,
            "cells": candidates.cells,
            "pbc": candidates.pbc,
            "parent": candidates.parent,
            "sigma_f_mean": candidates.sigma_f_mean,
            "sigma_f_max": candidates.sigma_f_max,
            "score": candidates.score,
            "stopped": np.array(json.dumps({str(k): v for k, v in candidates.stopped.items()})),
            "report": np.array(json.dumps(dict(report))),
        },
    )


def read_candidates(layout: RunLayout, generation: int) -> tuple[Candidates, dict[str, Any]] | None:
    """A generation's candidates and explore report (None: not explored yet, or candidates
    written by an older advloop without their report, which are explored again)."""
    path = layout.candidates(generation)
    if not path.exists():
        return _read_legacy_candidates(layout.legacy_candidates(generation))
    with np.load(path) as f:
        starts = f["starts"]
        candidates = Candidates(
            f["numbers"],
            f["positions"],
            np.diff(starts),
            f["cells"],
            f["pbc"],
            f["parent"],
            f["sigma_f_mean"],
            f["sigma_f_max"],
            f["score"],
            {int(k): v for k, v in json.loads(str(f["stopped"])).items()},
        )
        return candidates, json.loads(str(f["report"]))


def _read_legacy_candidates(path: Path) -> tuple[Candidates, dict[str, Any]] | None:
    """Candidates of advloop 0.1 (extended XYZ, the report in the first frame's info)."""
    if not path.exists():
        return None
    from ase.io import read

    # index=":" reads every frame as a list (ase's annotation allows one Atoms)
    frames: list[Atoms] = read(str(path), index=":")  # type: ignore[assignment]
    if "explore_report" not in frames[0].info:
        return None
    report = json.loads(frames[0].info["explore_report"])
    if len(frames) == 1 and len(frames[0]) == 0:
        return Candidates.empty(), report
    info = [a.info for a in frames]
    return Candidates(
        np.concatenate([a.numbers for a in frames]),
        np.concatenate([a.positions for a in frames]),
        np.array([len(a) for a in frames]),
        np.stack([a.cell.array for a in frames]),
        np.stack([a.pbc for a in frames]),
        np.array([int(i["parent"]) for i in info]),
        np.array([float(i["forces_std_mean"]) for i in info]),
        np.array([float(i["forces_std_max"]) for i in info]),
        np.array([float(i["score"]) for i in info]),
    ), report


def candidate_structures(candidates: Candidates, indices: list[int] | None = None) -> list[Atoms]:
    """Candidates ``indices`` (default: all) as ``ase.Atoms``, exactly as kept."""
    starts = candidates.starts
    chosen = range(len(candidates)) if indices is None else indices
    return [
        Atoms(
            numbers=candidates.numbers[starts[k] : starts[k + 1]],
            positions=candidates.positions[starts[k] : starts[k + 1]],
            cell=candidates.cells[k],
            pbc=candidates.pbc[k],
        )
        for k in chosen
    ]


def write_selection(layout: RunLayout, generation: int, selection: Mapping[str, Any]) -> None:
    """Keep a generation's selection (before anything of it is labelled)."""
    write_atomic(layout.selection(generation), json.dumps(dict(selection), indent=1) + "\n")


def read_selection(layout: RunLayout, generation: int) -> dict[str, Any] | None:
    """The selection kept for ``generation`` (None: none kept, or a file that does not read
    whole, which is made again)."""
    path = layout.selection(generation)
    if not path.exists():
        return None
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return kept if isinstance(kept, dict) and "report" in kept else None
