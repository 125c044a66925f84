"""How a run that is stopped from outside ends: signals and a full disk.

Every file of a run folder is written whole or not at all (temporary file and rename;
the dataset's commit marker), so a run may stop at any moment without tearing anything.
What this module adds is the ending people see: one line that says what happened, what
is kept and how to resume, as the Prefect flow run's state message and on the terminal.

- SIGINT (Ctrl-C) ends the flow run ``Cancelled``; SIGTERM (``scancel``, a batch
  system's preemption, a worker stopping) ends it ``Crashed``. Prefect turns SIGTERM
  into :class:`prefect.exceptions.TerminationSignal` in the flow's thread and SIGINT is
  Python's ``KeyboardInterrupt``; :func:`interrupted_state` makes the state.
- A Python system exit call (``SystemExit``: a calculator or library calling
  ``sys.exit()``, a worker shutting down) ends it ``Crashed`` too, with the same account
  of what is kept, instead of Prefect's "Execution was aborted by Python system exit call".
- A write that fails for want of space (``ENOSPC`` from Python, h5py, torch or SQLite)
  stops the run with :class:`DiskFullError`, naming the disk and the path.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
from pathlib import Path

from prefect.exceptions import TerminationSignal
from prefect.states import Cancelled, Crashed, State

from advloop.flows.run_folder import RunLayout

__all__ = [
    "DiskFullError",
    "disk_full_message",
    "interrupted_message",
    "interrupted_state",
    "exception_chain",
    "exit_code",
    "is_disk_full",
    "kept",
    "requested_by_runner",
]

# What libraries say when a write fails for want of space, where they do not raise an
# OSError with errno ENOSPC: h5py ("errno = 28"), torch's zip writer ("file write
# failed"), SQLite ("database or disk is full").
_FULL = (
    "no space left on device",
    "errno = 28",
    "file write failed",
    "disk is full",
    "quota exceeded",
)


class DiskFullError(OSError):
    """A write of the run failed for want of space (or quota) on its disk."""


def exception_chain(err: BaseException | None):
    """``err`` and the exceptions it was raised from or during, innermost last."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it was raised from) is a write that failed for
    want of space or quota."""
    for e in exception_chain(err):
        if isinstance(e, DiskFullError):
            return True
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(e).lower() for text in _FULL):
            return True
    return False


def _mount_point(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def kept(layout: RunLayout) -> str:
    """What the run folder holds, in words: ``24 labels, 3 committees``."""
    labels = (
        sum(1 for p in layout.labels.glob("*/*.npz") if not p.name.endswith(".tmp.npz"))
        if layout.labels.is_dir()
        else 0
    )
    committees = len(layout.trained_generations())
    return (
        f"{labels} label{'s' * (labels != 1)} and {committees} committee{'s' * (committees != 1)}"
    )


def disk_full_message(err: BaseException, layout: RunLayout) -> str:
    """``disk full: ...`` naming the disk, the file being written and what to do."""
    written = next(
        (e.filename for e in exception_chain(err) if isinstance(e, OSError) and e.filename), None
    )
    where = Path(written) if written else layout.root
    disk = _mount_point(where)
    free_mb = shutil.disk_usage(disk).free / 1e6
    path = f" writing {written}" if written else ""
    return (
        f"disk full: the disk mounted at {disk}, which holds the run folder {layout.root}, "
        f"has {free_mb:.0f} MB free{path} ({next(exception_chain(err)).__class__.__name__}: "
        f"{str(err).splitlines()[0][:200] if str(err) else 'no space'}). Nothing computed is "
        f"lost ({kept(layout)} are kept): free some space there, or move the run folder "
        "to another disk and point output_dir at it, then re-run the same command to resume"
    )


def _signal_of(err: BaseException) -> signal.Signals:
    if isinstance(err, TerminationSignal):
        return signal.Signals(err.signal)
    return signal.SIGINT


#: How a Python system exit call that ended a run starts its message.
_EXIT_CALL = "stopped by a Python system exit call"


def interrupted_message(err: BaseException, layout: RunLayout) -> str:
    """``stopped by SIGTERM ...``: what stopped the run, what is kept, how to resume."""
    resume = f"nothing is torn and {kept(layout)} are kept in {layout.root}"
    if isinstance(err, SystemExit):
        return (
            f"{_EXIT_CALL} (exit code {err.code}) in the run's process: a calculator or "
            "library it runs called sys.exit(), or the worker running it shut down; "
            f"{resume}: resubmit the run, or re-run the same command, to resume"
        )
    sig = _signal_of(err)
    why = (
        "Ctrl-C"
        if sig == signal.SIGINT
        else "a batch system's preemption or time limit, scancel, or a worker stopping"
    )
    return f"stopped by {sig.name} ({why}); {resume}: re-run the same command to resume"


def exit_code(state: State) -> int:
    """The exit status of a command whose run ended ``state`` (Cancelled or Crashed by
    :func:`interrupted_state`): 128 + the signal's number, or 1 for an exit call."""
    if state.is_cancelled():
        return 128 + signal.SIGINT
    if (state.message or "").startswith(_EXIT_CALL):
        return 1
    return 128 + signal.SIGTERM


def interruption_in(err: BaseException) -> BaseException | None:
    """The signal (``KeyboardInterrupt`` or Prefect's ``TerminationSignal``) or exit call
    (``SystemExit``) that ``err`` was raised while handling, if any: a signal that lands
    while Prefect's engine sets up a task run can surface as the engine's own error about
    the half-made run."""
    for e in exception_chain(err):
        if isinstance(e, (KeyboardInterrupt, TerminationSignal, SystemExit)):
            return e
    return None


def requested_by_runner(err: BaseException) -> bool:
    """Whether ``err`` is the SIGTERM a Prefect runner sends to carry out a request (a
    cancellation from the UI): Prefect's engine handles those itself."""
    if not isinstance(err, TerminationSignal):
        return False
    try:
        from prefect._internal import control_listener

        return control_listener.get_intent() is not None
    except (ImportError, AttributeError):  # another Prefect: no such requests
        return False


def interrupted_state(err: BaseException, layout: RunLayout) -> State:
    """The final state of a flow run stopped by a signal or an exit call: ``Cancelled``
    for SIGINT, ``Crashed`` for SIGTERM and ``SystemExit``, with :func:`interrupted_message`."""
    message = interrupted_message(err, layout)
    if not isinstance(err, SystemExit) and _signal_of(err) == signal.SIGINT:
        return Cancelled(message=message)
    return Crashed(message=message)
