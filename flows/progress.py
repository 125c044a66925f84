"""Where a run stands, from its run folder alone: whether its process is alive, the phase
it is in with its progress, and when anything last moved (what ``advloop status`` says).

- :func:`liveness`: ``running`` while the holder of ``run.lock`` beats
  (:data:`~advloop.flows.run_folder.HEARTBEAT_SECONDS`) and, on this host, its process
  exists; ``ended`` when it let go or its process is gone from this host; ``stale`` when
  its heartbeat is older than :data:`~advloop.flows.run_folder.STALE_BEATS` beats (a
  process on another host, or a hung one: probably dead); ``idle`` where no process has
  left a record (a folder copied or made by hand).
- :func:`phase`: the step the next generation is in, counted from the files it leaves
  (``labelling initial: 9 of 16``, ``training gen 3: 2 of 4 members``, ``exploring gen 3``,
  ``labelling gen 3: 5 of 8``).
- :func:`last_activity`: the newest file in the run folder.
- :func:`folder_status`: all of it together, with the outcome of a run that stopped
  (what ``advloop status`` prints of each run folder, and of each flow run's folder with
  ``--server``).

And the lines a run prints while a long step goes on (:class:`Throttled`: training's
epochs, the attack's and committee MD's steps), on the ``advloop.progress`` logger, which
reaches the terminal and the Prefect UI's logs like every ``advloop`` logger.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from advloop.calculators.factory import theory_settings
from advloop.calculators.label_store import LabelStore, label_key
from advloop.flows.config import RunConfig
from advloop.flows.durations import ago
from advloop.flows.records import GenerationRecord, RunSummary
from advloop.flows.run_folder import (
    HEARTBEAT_SECONDS,
    STALE_BEATS,
    RunLayout,
    candidate_structures,
    read_candidates,
    read_generations,
    read_holder,
    read_initial,
    read_selection,
    read_summary,
)

__all__ = [
    "PROGRESS_SECONDS",
    "UI_ONLY",
    "FolderStatus",
    "Liveness",
    "Throttled",
    "folder_status",
    "last_activity",
    "liveness",
    "phase",
]

#: ``extra`` of a log record that ``advloop run``'s terminal leaves out: a line it shows
#: already, as a progress bar or a line of its own, sent to the Prefect UI's logs.
UI_ONLY = {"terminal": False}

#: Seconds between two progress lines of one long step.
PROGRESS_SECONDS = 10.0
progress_logger = logging.getLogger("advloop.progress")

Alive = Literal["running", "ended", "stale", "idle"]


@dataclass(frozen=True)
class Liveness:
    state: Alive
    detail: str  # for people: which process, since when, its last heartbeat


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def liveness(root: Path, now: float | None = None) -> Liveness:
    """Whether the process that holds (or last held) ``root`` is alive (module doc)."""
    now = time.time() if now is None else now
    holder = read_holder(root)
    if holder is None:
        return Liveness("idle", "no process holds this run folder")
    who = f"pid {holder.pid} on {holder.host}"
    if holder.released is not None:
        return Liveness("ended", f"{who} let go {ago(now - holder.released)}")
    local = holder.host == socket.gethostname()
    if local and not _pid_exists(holder.pid):
        return Liveness("ended", f"{who} is gone (killed, or its machine restarted)")
    beat = holder.beat if holder.beat is not None else holder.since
    if now - beat > STALE_BEATS * HEARTBEAT_SECONDS:
        return Liveness(
            "stale",
            f"probably dead: {who} last beat {ago(now - beat)} (every "
            f"{HEARTBEAT_SECONDS:g} s while alive)",
        )
    return Liveness("running", f"{who}, heartbeat {ago(now - beat)}")


def _labelled(store: LabelStore, structures: list, theory: dict) -> int:
    return sum(label_key(atoms, theory) in store for atoms in structures)


def phase(root: Path) -> str:
    """The step the run's next generation is in, with its progress (module doc); ``""``
    where the folder holds no config to read it by."""
    layout = RunLayout(root)
    try:
        config = RunConfig.model_validate(yaml.safe_load(layout.config.read_text()))
    except (OSError, ValueError, yaml.YAMLError):
        return ""
    theory = theory_settings(config.labels)
    store = LabelStore(layout.labels)
    records = read_generations(root)
    if not records:
        if not layout.initial_structures.exists():
            return "preparing the initial structures"
        initial = read_initial(layout)
        done = _labelled(store, initial, theory)
        if done < len(initial):
            return f"labelling initial: {done} of {len(initial)}"
    generation = records[-1].generation + 1 if records else 0
    members = config.committee.n_members
    trained = sum(layout.member_checkpoint(generation, m).exists() for m in range(members))
    if trained < members:
        return f"training gen {generation}: {trained} of {members} members"
    kept = read_candidates(layout, generation)
    if kept is None:
        return f"exploring gen {generation}"
    selection = read_selection(layout, generation)
    if selection is None:
        return f"selecting gen {generation}"
    selected = [int(k) for k in selection["report"].get("selected", [])]
    chosen = candidate_structures(kept[0], selected)
    done = _labelled(store, chosen, theory)
    if done < len(chosen):
        return f"labelling gen {generation}: {done} of {len(chosen)}"
    return f"appending and evaluating gen {generation}"


def last_activity(root: Path) -> float:
    """When a file in the run folder last changed (s since the epoch; 0 for none), the
    lock's heartbeat left out."""
    newest = 0.0
    for path in root.rglob("*"):
        try:
            if path.is_file() and path.name != "run.lock":
                newest = max(newest, path.stat().st_mtime)
        except OSError:  # removed while we looked
            continue
    return newest


@dataclass(frozen=True)
class FolderStatus:
    """What a run folder says about its run (see :func:`folder_status`)."""

    root: Path
    records: list[GenerationRecord]
    summary: RunSummary | None  # None unless the latest start has finished
    state: str  # "stopped: <stop_reason>", "running", "stale: probably dead", ...
    dataset_size: int | None
    updated: float  # s since the epoch, the last change of a file in the run folder
    alive: Liveness

    @property
    def system(self) -> str:
        return self.root.name

    def line(self, now: float | None = None) -> str:
        """The state in one line: ``stopped: converged, 16 structures, last activity 3
        min ago``, or for a run without a summary its process and phase (``running (pid
        12 on node1, heartbeat 4 s ago), training gen 1: 1 of 2 members, last activity
        ...``)."""
        now = time.time() if now is None else now
        parts = [self.state]
        if self.summary is None:
            if self.alive.state in ("running", "stale"):
                parts[0] += f" ({self.alive.detail})"
            if current := phase(self.root):
                parts.append(current)
        if self.dataset_size is not None:
            parts.append(f"{self.dataset_size} structures")
        parts.append(f"last activity {ago(now - self.updated)}")
        return ", ".join(parts)


def folder_status(root: Path) -> FolderStatus | None:
    """Read a run folder, or None if ``root`` is not one.

    The state is ``stopped: <reason>`` when summary.json is newer than config.yaml (which
    every start or resume rewrites); else whether the process that holds the folder is
    alive (:func:`liveness`): ``running``, ``stale: probably dead``, or ended without a
    summary (killed).
    """
    layout = RunLayout(root)
    files = [p for p in (layout.config, layout.generations, layout.summary) if p.is_file()]
    if not files:
        return None
    records = read_generations(root)
    summary = read_summary(root)
    started = layout.config.stat().st_mtime if layout.config.is_file() else 0.0
    size: int | None
    alive = liveness(root)
    if summary is not None and layout.summary.stat().st_mtime >= started:
        state, size = f"stopped: {summary.stop_reason}", summary.dataset_size
    else:
        sizes = [r.dataset_size for r in records if r.dataset_size is not None]
        size, summary = (sizes[-1] if sizes else None), None
        state = {
            "running": "running",
            "stale": "stale: probably dead",
            "ended": "ended without a summary: resume with advloop run",
            "idle": "idle: no process holds it",
        }[alive.state]
    return FolderStatus(
        root=root,
        records=records,
        summary=summary,
        state=state,
        dataset_size=size,
        updated=last_activity(root) or max(p.stat().st_mtime for p in files),
        alive=alive,
    )


class Throttled:
    """Report an iterative step at most once per ``every`` seconds: called with each
    state, it logs ``describe(state)`` on the first call and then whenever ``every``
    seconds have passed since the last line (``describe`` may return None: nothing to
    say for that state)."""

    def __init__(
        self,
        describe: Callable[[object], str | None],
        every: float = PROGRESS_SECONDS,
        logger: logging.Logger | logging.LoggerAdapter = progress_logger,
        clock: Callable[[], float] = time.monotonic,
        extra: dict | None = None,
    ):
        self.describe, self.every, self.logger, self.clock = describe, every, logger, clock
        self.extra = extra
        self.last: float | None = None

    def __call__(self, state: object) -> None:
        now = self.clock()
        if self.last is not None and now - self.last < self.every:
            return
        line = self.describe(state)
        if line is not None:
            self.logger.info("%s", line, extra=self.extra)
            self.last = now
