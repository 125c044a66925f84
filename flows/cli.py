"""The ``advloop`` command line."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, NoReturn

import typer

from advloop.flows.durations import ago

if TYPE_CHECKING:
    from advloop.flows.server_runs import NamedFolder, ServerRun
    from advloop.flows.ui_server import UIServer


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Adversarial active learning for neural interatomic potentials.",
)

# Prefect settings this command needs unless the user set them: a closed network makes
# telemetry print errors, and a 2-core machine can need more than the default 20 s to
# start Prefect's embedded server. Set here, in the process entry point, before prefect
# is imported (the embedded server reads them from the environment).
_PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # advloop's own loggers (SCF rung escalations, training summaries) in the run's log:
    # the "advloop" logger is the parent of every module's logging.getLogger(__name__)
    "PREFECT_LOGGING_EXTRA_LOGGERS": "advloop",
}


def use_prefect_defaults() -> None:
    """Set the Prefect settings above unless the user set them, keep PREFECT_HOME
    private (:func:`_private_prefect_home`), and give advloop's loggers Prefect's log
    level (``PREFECT_LOGGING_LEVEL``, default INFO) unless one is set; call in a process
    entry point before prefect is imported."""
    for key, value in _PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    _private_prefect_home()
    # Prefect gives its extra loggers its API handler but no level: at the root logger's
    # WARNING, advloop's INFO lines (training's epochs, the attack's steps, each
    # generation's selection) would reach neither the terminal nor the UI's logs
    advloop_logger = logging.getLogger("advloop")
    if advloop_logger.level == logging.NOTSET:
        advloop_logger.setLevel(os.environ.get("PREFECT_LOGGING_LEVEL", "INFO").upper())


#: The embedded server's SQLite database and the files SQLite keeps beside it.
_PREFECT_DB_FILES = ("prefect.db", "prefect.db-wal", "prefect.db-shm")


def _private_prefect_home() -> None:
    """Make the database of Prefect's embedded server readable by its owner only: it
    holds every flow run's parameters (run configs, submitted structures) and states.

    PREFECT_HOME (default ``~/.prefect``) is created with mode 0700 if missing (an
    existing folder keeps its mode). Where the embedded server will make its database
    there (neither PREFECT_API_URL nor PREFECT_API_DATABASE_CONNECTION_URL set), an empty
    ``prefect.db`` is created with mode 0600 first: SQLite takes an empty file for a new
    database, and makes its ``-wal`` and ``-shm`` files with the database's mode
    (Prefect alone makes it 0644). An existing database that others can read is made
    0600, with one line on stderr saying so. Best effort: a folder this user cannot
    change is left for Prefect to report."""
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        db = home / "prefect.db"
        if (
            not db.exists()
            and not os.environ.get("PREFECT_API_URL")
            and not os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL")
        ):
            os.close(os.open(db, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        opened = []
        for path in (home / name for name in _PREFECT_DB_FILES):
            if (
                path.is_file()
                and path.stat().st_mode & 0o077
                and path.stat().st_uid == os.geteuid()
            ):
                path.chmod(0o600)
                opened.append(path.name)
    except OSError:
        return
    if opened:
        typer.echo(
            f"advloop: {db} was readable by other users (it holds your run configs); "
            f"made {', '.join(opened)} readable by you only",
            err=True,
        )


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


class _ServerErrors:
    """``with _ServerErrors():`` turns a :class:`advloop.flows.deployments.ServerError` into its
    one-line message and exit status, with no traceback."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, err, tb) -> Literal[False]:
        from advloop.flows.deployments import ServerError

        if isinstance(err, ServerError):
            _fail(str(err), err.exit_code)
        return False


def _validated(config: Path, output_dir: Path | None, run_folder: bool = True):
    from advloop.flows.config import ConfigError
    from advloop.flows.validation import validate_config

    try:
        return validate_config(config, output_dir, run_folder=run_folder)
    except ConfigError as err:
        _fail(f"error: {err}")


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="run config (YAML)", readable=False)],
    output_dir: Annotated[
        Path | None,
        typer.Option(
            help="parent of the run folder, as `advloop run --output-dir` would use it "
            "(default: the config's output_dir, 'runs')"
        ),
    ] = None,
) -> None:
    """Check a config, its structure files and the run folder `advloop run` would use
    (with the same --output-dir); compute nothing."""
    from advloop.calculators.factory import level_of_theory

    cfg = _validated(config, output_dir)
    typer.echo(
        f"{config}: valid. System {cfg.system.name!r}, "
        f"{cfg.committee.n_members} × {cfg.model.architecture} committee, "
        f"labels at {level_of_theory(cfg.labels)}; run folder {cfg.run_dir()}"
    )


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="run config (YAML)", readable=False)],
    output_dir: Annotated[
        Path | None,
        typer.Option(help="parent of the run folder (default: the config's output_dir, 'runs')"),
    ] = None,
) -> None:
    """Validate, then run (or resume) the active-learning loop on Prefect's embedded server."""
    cfg = _validated(config, output_dir)
    from advloop.flows.run_folder import RunFolderBusy, hold

    try:
        with hold(cfg.run_dir()):  # refused at once, before Prefect starts
            _run_held(cfg)
    except RunFolderBusy as err:
        _fail(f"error: {err}")


def _run_held(cfg) -> None:
    """``advloop run`` of a validated config whose run folder this process holds."""
    use_prefect_defaults()
    from advloop.flows import embedded_server
    from advloop.flows.active_learning import run_active_learning
    from advloop.flows.config import ConfigError
    from advloop.flows.interruptions import DiskFullError, exit_code
    from advloop.flows.steps import LabellingError
    from advloop.potentials.dataset import DatasetError

    expected = (LabellingError, DiskFullError, DatasetError, ConfigError)
    _quiet_in_terminal(expected)
    embedded_server.start()  # where Ctrl-C and scancel do not reach it
    state = run_active_learning(cfg, return_state=True)
    if state.is_cancelled() or state.is_crashed():  # stopped by a signal: say so, then go
        typer.echo(f"advloop: {state.message}", err=True)
        _exit_now(exit_code(state))
    try:
        state.result()
    except ConfigError as err:
        _fail(f"error: {err}")
    except expected as err:
        _fail(f"error: {err}", code=1)


def _quiet_in_terminal(expected: tuple[type[BaseException], ...]) -> None:
    """Keep Prefect's tracebacks of the run's ``expected`` failures (too many failed
    labels, a full disk, a dataset that cannot be rebuilt: each ends the command with one
    line saying what to do), and the progress lines the table shows already
    (:data:`~advloop.flows.progress.UI_ONLY`), off the terminal; the run's log on the
    server keeps them."""
    from prefect.logging.handlers import PrefectConsoleHandler

    from advloop.flows.interruptions import exception_chain, is_disk_full

    def keep(record: logging.LogRecord) -> bool:
        if getattr(record, "terminal", True) is False:  # the terminal shows it already
            return False
        err = record.exc_info[1] if record.exc_info else None
        return err is None or not (
            is_disk_full(err) or any(isinstance(e, expected) for e in exception_chain(err))
        )

    loggers = [
        logging.getLogger(),
        *(logging.getLogger(name) for name in logging.root.manager.loggerDict),
    ]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):
            if isinstance(handler, PrefectConsoleHandler):
                handler.addFilter(keep)


def _exit_now(code: int) -> None:
    """Exit without waiting for work still running in threads (a member's training, a
    label): every file it writes is written whole or not at all, so nothing is torn, and
    a resumed run redoes it. Prefect's embedded server, if this process started one, is
    stopped first."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        from prefect.server.api.server import SubprocessASGIServer

        for server in list(SubprocessASGIServer._instances.values()):
            server.stop()
    except Exception:  # the server may be gone already (it got the signal too)
        pass
    os._exit(code)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (runs/<system name>)")],
    output: Annotated[Path, typer.Option("-o", "--output", help="file to write")],
    format: Annotated[
        Literal["extxyz", "schnetpack"],
        typer.Option(
            help="extxyz (ase.io.read gives Atoms with energy and forces) or schnetpack "
            "(an ASEAtomsData database)"
        ),
    ] = "extxyz",
) -> None:
    """Write a run's labelled dataset (DFT energies and forces) to a file."""
    from advloop.flows.run_folder import RunLayout
    from advloop.potentials.dataset import Dataset, DatasetError

    try:
        dataset = Dataset(RunLayout(run_dir).dataset)
    except DatasetError as err:
        _fail(f"error: {err}")
    if format == "schnetpack":
        from advloop.potentials.interchange import export_asedata

        try:
            n = len(export_asedata(dataset, output))
        except FileExistsError as err:
            _fail(f"error: {err}")
    else:
        n = dataset.export_extxyz(output)
    typer.echo(f"wrote {n} structures to {output}")


@app.command()
def submit(
    config: Annotated[Path, typer.Argument(help="run config (YAML)", readable=False)],
    # the default is advloop.flows.deployments.DEFAULT_DEPLOYMENT, spelt out so that `--help` does
    # not import prefect
    deployment: Annotated[
        str, typer.Option(help="FLOW/DEPLOYMENT to run it")
    ] = "advloop-submission/submissions",
    output_dir: Annotated[
        Path | None,
        typer.Option(
            help="parent of the run folder, a path the "
            "worker sees (default: the config's output_dir, "
            "made absolute here)"
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option(help="submit even if the system already has an unfinished flow run")
    ] = False,
) -> None:
    """Validate, then queue a run on the Prefect server (PREFECT_API_URL) for a worker.

    The config and its structure file travel with the flow run; the run folder is written
    to --output-dir (or the config's output_dir) made absolute here, so the worker must
    see that path on a shared filesystem. See infra/README.md."""
    cfg = _validated(config, output_dir, run_folder=False)  # the worker checks the run folder
    use_prefect_defaults()
    from advloop.flows.config import ConfigError
    from advloop.flows.deployments import Submission
    from advloop.flows.deployments import submit as submit_run

    try:
        submission = Submission.pack(config, cfg)
    except ConfigError as err:
        _fail(f"error: {err}")
    with _ServerErrors():
        done = submit_run(submission, deployment, force=force)
    run = done.flow_run
    typer.echo(
        f"submitted {cfg.system.name!r} to {done.deployment}: flow run {run.name!r} "
        f"({run.id}), {run.state_name}"
    )
    typer.echo(f"run folder (on the worker): {Path(submission.output_dir) / cfg.system.name}")
    if done.url:
        typer.echo(f"UI: {done.url}")
    if done.workers_online == 0:
        typer.echo(
            f"note: no worker is polling work pool {done.work_pool!r} now; it runs when one "
            f"starts: prefect worker start --pool {done.work_pool}",
            err=True,
        )
    runs_dir = Path(submission.output_dir)
    where = "" if runs_dir == Path("runs").resolve() else f" --runs-dir {runs_dir}"
    typer.echo(f"follow it: advloop status {cfg.system.name}{where} --server")


@app.command()
def serve(
    config: Annotated[
        list[Path] | None,
        typer.Option("--config", help="a run config to run on the schedule (repeat for several)"),
    ] = None,
    cron: Annotated[
        str,
        typer.Option(help="schedule of the configs' runs (cron; each run resumes its run folder)"),
    ] = "0 2 * * *",
    timezone: Annotated[
        str | None, typer.Option(help="IANA timezone of --cron (default UTC)")
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            help="parent of the scheduled runs' folders (default: each config's output_dir)"
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="most flow runs at once")] = None,
) -> None:
    """Serve the submissions deployment and scheduled runs from this machine until stopped.

    Serves `advloop-submission/submissions` (what `advloop submit` queues) and, per
    --config, `advloop-run-config/<system>` on the --cron schedule. Flow runs execute
    here as subprocesses; needs a server (PREFECT_API_URL). Ctrl-C pauses the schedules.
    Once the server's scheduler has made a schedule's next run, prints its time; warns if
    it has made none 90 s after the deployment was registered. Names the schedules'
    upcoming runs <system>-scheduled-<UTC time> (Prefect gives them random names until
    they start)."""
    use_prefect_defaults()
    from advloop.flows.config import ConfigError
    from advloop.flows.deployments import (
        api_url,
        build_deployments,
        display_url,
        schedule_ids,
        server_client,
    )

    try:
        deployments = build_deployments(config or [], cron, timezone, output_dir)
    except ConfigError as err:
        _fail(f"error: {err}")
    except ValueError as err:
        _fail(f"error: {_one_line(err)}")
    scheduled = [f"{d.flow_name}/{d.name}" for d in deployments if d.schedules]
    with _ServerErrors():
        with server_client():  # fail in one line now rather than inside prefect.serve
            url = api_url()
        before = schedule_ids(scheduled)  # what an earlier serve left on the server
    for d in deployments:
        when = f", cron {cron!r}" if d.schedules else ", runs on submit"
        typer.echo(f"serving {d.flow_name}/{d.name}{when}")
    typer.echo(f"server {display_url(url)}; Ctrl-C stops (and pauses the schedules)")
    _report_schedules(scheduled, before)
    import threading

    from advloop.flows import schedule_names

    served = threading.Event()
    if scheduled:  # each deployment of a config is named after its system
        systems = {f"{d.flow_name}/{d.name}": d.name for d in deployments if d.schedules}
        _in_background(schedule_names.keep_naming, systems, served, name="advloop-schedule-names")
    import prefect

    try:
        prefect.serve(*deployments, limit=limit, print_starting_message=False)
    finally:
        served.set()


def _report_schedules(scheduled: list[str], before: frozenset) -> None:
    """While ``advloop serve`` serves, print the next run of each scheduled deployment
    once the server's scheduler has made it, or warn on stderr that it has made none
    (:func:`advloop.flows.deployments.watch_schedules`: within 90 s of registering, then never
    again), from a daemon thread, so that serving starts at once."""
    from advloop.flows.deployments import no_upcoming_run_warning, watch_schedules

    def report() -> None:
        for name, start in watch_schedules(scheduled, before):
            if start is None:
                typer.echo(no_upcoming_run_warning(name), err=True)
            else:
                typer.echo(f"next run of {name}: {start:%Y-%m-%d %H:%M} UTC")

    if scheduled:
        _in_background(report, name="advloop-schedules")


def _in_background(fn, *args, name: str) -> None:
    """``fn(*args)`` in a daemon thread with this thread's context (Prefect's settings)."""
    import contextvars
    import threading

    threading.Thread(
        target=contextvars.copy_context().run, args=(fn, *args), name=name, daemon=True
    ).start()


def _one_line(err: Exception) -> str:
    """A pydantic ValidationError (a bad cron or timezone) as one line."""
    errors = getattr(err, "errors", None)
    if callable(errors):
        return "; ".join(str(e.get("msg", e)) for e in errors())
    return str(err).splitlines()[0]


# ---------------------------------------------------------------------------------------
# advloop status


def _find_run(run: str, runs_dir: Path) -> Path | None:
    """The run folder ``run`` names (a path, or a system under ``runs_dir``), or None."""
    from advloop.flows.progress import folder_status

    for candidate in (Path(run), runs_dir / run):
        if candidate.is_dir() and folder_status(candidate) is not None:
            return candidate
    return None


def _unknown_run(run: str, runs_dir: Path) -> str:
    from advloop.flows.progress import folder_status

    known = (
        sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and folder_status(p))
        if runs_dir.is_dir()
        else []
    )
    hint = f"runs in {runs_dir}: {', '.join(known)}" if known else f"no runs in {runs_dir}"
    return f"{run!r} is neither a run folder nor a system in {runs_dir} ({hint}; another parent: --runs-dir)"


def _print_table(rows: list[list[str]], header: list[str], below: list[str] | None = None) -> None:
    """``rows`` under ``header`` in aligned columns; ``below[i]``, if given, on an
    indented line of its own after row ``i``."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    typer.echo("  ".join(c.ljust(w) for c, w in zip(header, widths)).rstrip())
    for i, r in enumerate(rows):
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if below is not None:
            typer.echo(f"    {below[i]}")


@dataclass(frozen=True)
class _ServerView:
    """What the server says of a system's (or every system's) runs: its flow runs, newest
    first, each with its flow's name and the run folder its parameters name, and the
    deployments whose active schedule has no upcoming run."""

    system: str | None
    runs: list[tuple[ServerRun, NamedFolder]]
    unscheduled: list[str]

    def readable_folders(self) -> list[Path]:
        """The run folders named that this machine can read, newest flow run first."""
        from advloop.flows.progress import folder_status

        out: list[Path] = []
        for _, named in self.runs:
            path = named.path
            if named.visible and path is not None and path not in out and folder_status(path):
                out.append(path)
        return out


def _server_view(system: str | None) -> _ServerView:
    use_prefect_defaults()
    from advloop.flows.deployments import schedules_without_runs
    from advloop.flows.server_runs import top_flow_runs

    with _ServerErrors():
        runs = top_flow_runs(system)
        unscheduled = schedules_without_runs(system)
    return _ServerView(system, [(r, r.folder()) for r in runs], unscheduled)


def _print_flow_runs(view: _ServerView) -> None:
    """The flow runs of ``view``, each with the run folder its parameters name and what
    that folder says where this machine sees it, then a warning on stderr for each
    deployment whose active schedule has no upcoming run."""
    from advloop.flows.deployments import flow_run_url, no_upcoming_run_warning
    from advloop.flows.server_runs import describe_folder, system_tag

    what = f"system {view.system!r}" if view.system else "advloop"
    if not view.runs:
        typer.echo(f"\nno flow runs for {what} on the server")
    else:
        typer.echo(f"\nlatest flow runs for {what} on the server:")
        now = time.time()
        rows, folders = [], []
        for run, named in view.runs:
            r = run.flow_run
            t = r.start_time or r.expected_start_time
            rows.append(
                [
                    r.name,
                    named.system or system_tag(r) or "-",
                    run.flow_name,
                    r.state_name or "-",
                    t.strftime("%Y-%m-%d %H:%M") if t else "-",
                    flow_run_url(r.id) or str(r.id),
                ]
            )
            state_type = r.state_type.value if r.state_type else None
            folders.append(describe_folder(named, state_type, now))
        _print_table(rows, ["flow run", "system", "flow", "state", "start (UTC)", "UI"], folders)
    for name in view.unscheduled:
        typer.echo(no_upcoming_run_warning(name), err=True)


@app.command()
def status(
    run: Annotated[
        str | None,
        typer.Argument(
            help="a run folder, or a system name under --runs-dir (default: list every run)"
        ),
    ] = None,
    runs_dir: Annotated[Path, typer.Option(help="the folder holding run folders")] = Path("runs"),
    server: Annotated[
        bool,
        typer.Option(
            "--server",
            help="also list the latest Prefect flow runs and their run folders (needs "
            "PREFECT_API_URL)",
        ),
    ] = False,
) -> None:
    """Where runs stand: every run folder, or one run's generations and outcome.

    With --server, also the latest flow runs of advloop on the Prefect server (of the
    run's system, by tag or name), which knows a submitted run before its folder exists,
    each with the run folder its parameters name and what that folder says where this
    machine sees it (a run not under --runs-dir is found so), and a warning for each
    advloop deployment whose active schedule has no upcoming run (the server's
    scheduler is off or failing)."""
    from advloop.flows.progress import folder_status, phase

    now = time.time()
    if run is None:
        found = (
            [f for p in sorted(runs_dir.iterdir()) if p.is_dir() and (f := folder_status(p))]
            if runs_dir.is_dir()
            else []
        )
        if not found:
            typer.echo(f"no run folders in {runs_dir} (another parent: --runs-dir)")
        else:
            _print_table(
                [
                    [
                        f.system,
                        str(len(f.records)),
                        "-" if f.dataset_size is None else str(f.dataset_size),
                        f.state,
                        "-" if f.summary is not None else (phase(f.root) or "-"),
                        ago(now - f.updated),
                    ]
                    for f in found
                ],
                ["system", "generations", "dataset", "state", "phase", "last activity"],
            )
        if server:
            _print_flow_runs(_server_view(None))
        return

    from advloop.flows.report import GenerationTable

    root = _find_run(run, runs_dir)
    folder = folder_status(root) if root is not None else None
    view = None  # asked for after the local part is printed, unless that needs it
    if folder is None and server:
        view = _server_view(Path(run).name)
        # the newest flow run whose parameters name a folder this machine can read
        known = view.readable_folders()
        folder = folder_status(known[0]) if known else None
        if folder is None:  # submitted, perhaps not started
            typer.echo(f"no run folder yet: {_unknown_run(run, runs_dir)}")
            _print_flow_runs(view)
            return
    if folder is None:
        _fail(f"error: {_unknown_run(run, runs_dir)}")
    typer.echo(
        f"{folder.system}: {folder.state} (last activity {ago(now - folder.updated)}), "
        f"run folder {folder.root}"
    )
    if folder.summary is None:
        current = phase(folder.root)
        typer.echo(f"process: {folder.alive.detail}" + (f"; {current}" if current else ""))
    if folder.records:
        table = GenerationTable(sys.stdout)
        for record in folder.records:
            table.row(record)
    else:
        typer.echo("no generation finished yet (labelling the initial dataset or training)")
    summary = folder.summary
    if summary is not None:
        typer.echo(summary.stop_explanation or f"stopped: {summary.stop_reason}")
        typer.echo(
            f"dataset: {summary.dataset_size} structures ({summary.composition()}) at "
            f"{summary.level_of_theory}"
        )
    if server:
        _print_flow_runs(view or _server_view(folder.system))


# ---------------------------------------------------------------------------------------
# advloop ui


@app.command()
def ui(
    run: Annotated[
        str | None,
        typer.Argument(
            help="a run folder, or a system name (default: the newest run recorded here)"
        ),
    ] = None,
    runs_dir: Annotated[
        Path, typer.Option(help="the folder holding run folders, for a RUN given by name")
    ] = Path("runs"),
    browser: Annotated[
        bool, typer.Option("--browser/--no-browser", help="open the run's page in a browser")
    ] = True,
) -> None:
    """Serve the Prefect UI on the runs `advloop run` recorded on this machine (Prefect's
    embedded server's database, PREFECT_HOME), finished or running, and print the run's
    page; Ctrl-C stops it.

    RUN is a run folder (its name is the system's) or a system name. Refused when
    PREFECT_API_URL is set (open that server's UI) and when the run was never recorded
    in this machine's embedded database."""
    use_prefect_defaults()
    from advloop.flows.ui_server import LocalUIError, embedded_database, flow_run_page, serve_ui

    system = None
    if run is not None:
        root = _find_run(run, runs_dir)
        system = root.name if root is not None else Path(run).name
    try:
        db = embedded_database()
        with serve_ui(db) as server:
            with _ServerErrors():
                page, flow_run = flow_run_page(server, system)
            typer.echo(
                f"{flow_run.name} ({flow_run.state_name}): {page}\n"
                f"Prefect UI on {db} at {server.url}"
                + ("" if server.ours else " (an earlier advloop ui's server)")
                + "; Ctrl-C stops"
                + (" it" if server.ours else "")
            )
            if browser:
                _open_browser(page)
            _wait_for_interrupt(server)
    except LocalUIError as err:
        _fail(str(err))
    typer.echo("advloop ui: stopped")


def _open_browser(url: str) -> None:
    """Open ``url`` in the user's browser where there is one; say so where there is not."""
    import webbrowser

    try:
        opened = webbrowser.get().open(url)
    except webbrowser.Error:
        opened = False
    if not opened:
        typer.echo("no browser found here: open the page above yourself", err=True)


def _wait_for_interrupt(server: UIServer) -> None:
    """Block until Ctrl-C (SIGINT), or until the server this process started ends
    (exit 1)."""
    try:
        while not server.stopped():
            time.sleep(1)
    except KeyboardInterrupt:
        return
    _fail(f"error: the Prefect server for the UI stopped; its output is in {server.log}", 1)


# ---------------------------------------------------------------------------------------
# advloop automations


@app.command("slurm-script")
def slurm_script(
    config: Annotated[
        Path, typer.Argument(help="run config (YAML) with a slurm runner", readable=False)
    ],
    phase: Annotated[
        Literal["training", "labelling"] | None,
        typer.Option(help="only this phase's runner (default: both)"),
    ] = None,
) -> None:
    """Print the Slurm job script each slurm runner of a config submits; submits nothing."""
    from advloop.flows.runners import main as print_job_scripts

    code = print_job_scripts([str(config), *(["--phase", phase] if phase else [])])
    if code:
        raise typer.Exit(code)


automations_app = typer.Typer(
    no_args_is_help=True, help="Automations on the Prefect server (PREFECT_API_URL)."
)
app.add_typer(automations_app, name="automations")


@automations_app.command("create")
def automations_create(
    # the default is advloop.flows.automations.DEFAULT_HEARTBEAT_SECONDS, spelt out like submit's
    heartbeat_seconds: Annotated[
        int,
        typer.Option(
            help="mark a flow run Crashed when this many seconds pass after a heartbeat with no "
            "further heartbeat or state change; about 3 x the workers' "
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY (default 180), at least 60"
        ),
    ] = 540,
) -> None:
    """Create or update the crash-detection automation on the server.

    Flow runs send a heartbeat event every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds; when
    they stop (the process was killed, the node died), the automation marks the run
    Crashed. Idempotent: the automation is found by its name and updated to match.
    See infra/server/README.md."""
    use_prefect_defaults()
    from advloop.flows.automations import crash_automation, ensure_automation, heartbeat_frequency
    from advloop.flows.deployments import api_url, display_url

    try:
        wanted = crash_automation(heartbeat_seconds)
    except ValueError as err:
        _fail(f"error: {err}")
    with _ServerErrors():
        done = ensure_automation(wanted)
        url = api_url()
    stored = done.automation
    typer.echo(
        f"{done.outcome} automation {stored.name!r} ({stored.id}) on {display_url(url)}: "
        f"a flow run with no heartbeat or state change for {heartbeat_seconds} s is "
        "marked Crashed"
    )
    if done.removed:
        typer.echo(f"removed {done.removed} other automation(s) of the same name")
    frequency = heartbeat_frequency()
    if frequency is None:
        typer.echo(
            "note: PREFECT_FLOWS_HEARTBEAT_FREQUENCY is unset here, so flow runs started "
            "from this environment send no heartbeats; set it on the workers",
            err=True,
        )
    elif heartbeat_seconds < 2 * frequency:
        typer.echo(
            f"note: {heartbeat_seconds} s is less than twice the heartbeat interval set "
            f"here ({frequency} s, PREFECT_FLOWS_HEARTBEAT_FREQUENCY): live runs may be "
            f"marked Crashed; use about {3 * frequency} s",
            err=True,
        )
