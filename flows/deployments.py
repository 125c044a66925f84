"""Runs on a Prefect server: the submission flow, submitting to it, reading runs back,
and the long-lived deployments that ``advloop serve`` (or ``infra/prefect.yaml``) creates.

How a config reaches the worker: **by value**. ``advloop submit`` validates the config
locally, then sends the config's YAML text and its structure file's bytes (base64) as
flow-run parameters of :func:`run_submission`. The worker writes them into
``<output_dir>/<system>/submissions/<time>-<flow run id>/``, validates again, and runs
:func:`advloop.flows.active_learning.run_active_learning`. So the config and structure files
need not be on a filesystem the worker sees, a later edit of them does not change a
submitted run, and the server keeps what was submitted with the flow run.

The *outputs* go to one place both sides agree on: the run folder's parent is resolved
to an absolute path on the submitting machine (``--output-dir`` or the config's
``output_dir``, relative to the current folder), so the worker must see that path on a
shared filesystem; ``advloop status`` and ``advloop export`` then read the run where it
was written. A worker that cannot create the folder fails with a message saying so.

Scheduled deployments (``advloop serve --config``) instead name the config by absolute
path (:func:`advloop.flows.active_learning.run_config_file`): they run on the serving machine
and re-read the config each time, so an edited budget applies to the next scheduled run.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import yaml
from prefect import flow

from advloop.flows.dispatch import synchronous

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments.runner import RunnerDeployment

    from advloop.flows.config import RunConfig

# advloop.flows.config, advloop.flows.active_learning and advloop.potentials (its package
# imports the committee) import torch and schnetpack: they are imported where needed, so that
# `advloop status --server` stays quick.

SUBMISSION_FLOW = "advloop-submission"
SUBMISSION_DEPLOYMENT = "submissions"
#: ``<flow name>/<deployment name>`` of the submissions deployment, the same whether it
#: was made by ``advloop serve`` or by ``prefect deploy`` from ``infra/prefect.yaml``.
DEFAULT_DEPLOYMENT = f"{SUBMISSION_FLOW}/{SUBMISSION_DEPLOYMENT}"
DEFAULT_CRON = "0 2 * * *"
#: Tag on every flow run advloop creates; each also carries its system's name as a tag.
TAG = "advloop"
#: Submissions larger than this (config plus structures, bytes) are refused: flow-run
#: parameters live in the server's database, and a Prefect 3.8 server refuses parameters
#: above PREFECT_SERVER_API_MAX_PARAMETER_SIZE (512 KiB by default; base64 adds a third).
#: Put larger inputs on the shared filesystem.
MAX_SUBMISSION_BYTES = 360 * 2**10
#: Flow-run states in which a run may still write its run folder.
ACTIVE_STATES = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")


# ---------------------------------------------------------------------------------------
# The submission: made on the submitting machine, staged on the worker


@dataclass(frozen=True)
class Submission:
    """A validated config packed for a worker: the flow-run parameters of
    :func:`run_submission` plus the system's name (flow-run name and tag)."""

    system: str
    config_yaml: str
    structures_name: str
    structures_b64: str
    output_dir: str

    @classmethod
    def pack(cls, config_path: Path, config: RunConfig) -> Submission:
        """Pack ``config_path`` (already validated into ``config``). The run folder's
        parent becomes absolute here (see the module docstring).

        Raises :class:`ConfigError` if the inputs exceed :data:`MAX_SUBMISSION_BYTES`.
        """
        from advloop.flows.config import ConfigError

        text = Path(config_path).read_text()
        if config.system.structures is None:
            raise ConfigError(
                str(config_path),
                [
                    "system.parts: a submission carries one structure file; run a config "
                    "of several systems where its files are (advloop run), or as a "
                    "scheduled deployment (advloop serve --config)"
                ],
            )
        if config.initial_data.files:
            # the files stay where they are: the worker reads them by absolute path (a
            # shared filesystem), as it writes the run folder
            raw = yaml.safe_load(text)
            for entry, spec in zip(raw["initial_data"]["files"], config.initial_data.files):
                entry["path"] = str(Path(spec.path).resolve())
            text = yaml.safe_dump(raw, sort_keys=False)
        data = config.system.structures.read_bytes()
        size = len(text.encode()) + len(data)
        if size > MAX_SUBMISSION_BYTES:
            raise ConfigError(
                str(config_path),
                [
                    f"config and structures are {size / 2**10:.0f} KiB, above the "
                    f"{MAX_SUBMISSION_BYTES // 2**10} KiB a submission carries; put the structure "
                    "file on the shared filesystem and use a scheduled deployment "
                    "(advloop serve --config) or run it there (advloop run)"
                ],
            )
        return cls(
            system=config.system.name,
            config_yaml=text,
            structures_name=config.system.structures.name,
            structures_b64=base64.b64encode(data).decode("ascii"),
            output_dir=str(Path(config.output_dir).resolve()),
        )

    def parameters(self) -> dict[str, str]:
        """The flow-run parameters of :func:`run_submission`."""
        return {
            "config_yaml": self.config_yaml,
            "structures_name": self.structures_name,
            "structures_b64": self.structures_b64,
            "output_dir": self.output_dir,
        }


def stage_submission(
    config_yaml: str, structures_name: str, structures_b64: str, output_dir: str, label: str
) -> RunConfig:
    """Write a submission into ``<output_dir>/<system>/submissions/<label>/`` and return
    its validated config, whose structure file is the copy written there.

    The copy's config points at the structure file beside it, so
    ``advloop validate <that folder>/config.yaml`` works. Raises :class:`ConfigError`
    for an invalid submission (a structure file name with a folder in it, absolute or
    ``..``, included: nothing submitted is written outside the run folder) and
    :class:`OSError` (with the fix in its message) when the run folder cannot be
    created on this machine.

    Nothing submitted is unpickled or executed: the YAML is read with ``yaml.safe_load``
    and the structure file with ``ase.io.read``, none of whose formats unpickles; the
    one exception is a ``labels.kind: python`` calculator, imported by path, which is trusted
    configuration (see calculators/factory.py and docs/reliability.md).
    """
    from advloop.flows.config import ConfigError
    from advloop.flows.run_folder import RunLayout
    from advloop.flows.validation import validate_config

    source = "submitted config"
    try:
        raw = yaml.safe_load(config_yaml)
    except yaml.YAMLError as err:
        raise ConfigError(source, [f"not valid YAML: {err}"]) from err
    if not isinstance(raw, dict) or not isinstance(raw.get("system"), dict):
        raise ConfigError(source, ["the config must be a YAML mapping with a system section"])
    name = structures_name
    if Path(name).name != name or name in ("", ".", "..") or "\0" in name:
        # it is written into the run folder: a path could put it anywhere the worker writes
        raise ConfigError(
            source,
            [
                f"structures_name {structures_name!r} is not a plain file "
                "name (no folder, not '.' or '..')"
            ],
        )
    try:
        data = base64.b64decode(structures_b64, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ConfigError(source, [f"structures_b64 is not base64: {err}"]) from err
    raw["system"]["structures"] = name
    text = yaml.safe_dump(raw, sort_keys=False)

    with tempfile.TemporaryDirectory(prefix="advloop-submission-") as tmp:
        (Path(tmp) / "config.yaml").write_text(text)
        (Path(tmp) / name).write_bytes(data)
        try:
            config = validate_config(Path(tmp) / "config.yaml", output_dir)
        except ConfigError as err:  # name the submission, not a temporary file
            raise ConfigError(source, err.problems) from err

    keep = RunLayout(config.run_dir()).submissions / label
    try:
        keep.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(
            f"cannot create the run folder {config.run_dir()} on this worker ({err}); the "
            "worker must see the submitting machine's output folder at the same path on a "
            "shared filesystem, or submit with --output-dir naming a folder the worker "
            "can write"
        ) from err
    for path, content in ((keep / "config.yaml", text.encode()), (keep / name, data)):
        # a config can hold a site's calculator options: readable by its owner alone
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(content)
    return config.model_copy(
        update={"system": config.system.model_copy(update={"structures": keep / name})}
    )


@flow(name=SUBMISSION_FLOW)
def run_submission(
    config_yaml: str, structures_name: str, structures_b64: str, output_dir: str
) -> dict:
    """Deployment entrypoint for ``advloop submit``: stage the submitted config and
    structure file in the run folder (see :func:`stage_submission`), then run or resume
    the active-learning loop. Returns the run summary."""
    from prefect.runtime import flow_run

    from advloop.flows.active_learning import completed_with_reason, run_active_learning

    run_id = str(flow_run.get_id() or "local")
    label = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{run_id[:8]}"
    config = stage_submission(config_yaml, structures_name, structures_b64, output_dir, label)
    # the summary as the result, and why the run stopped as the state's message
    # (Prefect makes a returned state the run's own: callers get its result)
    return completed_with_reason(  # type: ignore[return-value]
        run_active_learning(config, return_state=True)
    )


# ---------------------------------------------------------------------------------------
# Deployments for `advloop serve`


def build_deployments(
    configs: Sequence[Path] = (),
    cron: str = DEFAULT_CRON,
    timezone: str | None = None,
    output_dir: Path | None = None,
) -> list[RunnerDeployment]:
    """The deployments ``advloop serve`` serves, built without contacting a server:

    - ``advloop-submission/submissions``: :func:`run_submission`, no schedule; the
      parameters come with each ``advloop submit``;
    - per config, ``advloop-run-config/<system>``:
      :func:`advloop.flows.active_learning.run_config_file` on the config's absolute path, on the ``cron`` schedule (in ``timezone``, default
      UTC), tagged ``advloop`` and the system's name. Each scheduled run resumes the run
      folder, so a finished run stops at once and a grown budget continues it.

    Entrypoints are module paths (``advloop.flows.deployments.run_submission``), importable
    wherever advloop is installed. Raises :class:`ConfigError` for an invalid config
    (every problem of the first bad one), ``ValueError`` for a bad cron string or
    timezone or two configs for one system.
    """
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from advloop.flows.active_learning import run_config_file
    from advloop.flows.validation import validate_config

    deployments = [
        synchronous(
            run_submission.to_deployment(
                name=SUBMISSION_DEPLOYMENT,
                tags=[TAG],
                entrypoint_type=EntrypointType.MODULE_PATH,
                description="advloop submit: a config and its structures, passed by value",
            )
        )
    ]
    seen: dict[str, Path] = {}
    for path in configs:
        config = validate_config(path, output_dir)
        name = config.system.name
        if name in seen:
            raise ValueError(
                f"{path} and {seen[name]} both run system {name!r} (one run folder): keep one"
            )
        seen[name] = path
        deployments.append(
            synchronous(
                run_config_file.to_deployment(
                    name=name,
                    schedule=Cron(cron, timezone=timezone),
                    tags=[TAG, name],
                    parameters={
                        "config_path": str(Path(path).resolve()),
                        "output_dir": str(Path(config.output_dir).resolve()),
                    },
                    entrypoint_type=EntrypointType.MODULE_PATH,
                    description=f"scheduled run of {Path(path).resolve()} (resumes {config.run_dir()})",
                )
            )
        )
    return deployments


# ---------------------------------------------------------------------------------------
# Talking to the server


class ServerError(Exception):
    """The Prefect server cannot do what was asked. The message is one line naming the
    fix; ``exit_code`` is 2 for a setting the user must change, 1 for a server that is
    down or failing."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def display_url(url: str) -> str:
    """``url`` without any user name or password in it, for printing."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def api_url() -> str:
    """The configured PREFECT_API_URL (environment or profile); raises
    :class:`ServerError` if none is set (a command would otherwise start a throwaway
    local server that no worker polls)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ServerError(
            "error: no Prefect server configured: set PREFECT_API_URL, e.g. "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api (see infra/README.md)",
            2,
        )
    return str(url)


def _causes(err: BaseException) -> Iterator[BaseException]:
    cause: BaseException | None = err
    while cause is not None:
        yield cause
        cause = cause.__cause__ or cause.__context__


def _translate(err: Exception, url: str) -> ServerError:
    import httpx

    shown = display_url(url)
    for cause in _causes(err):
        if isinstance(cause, httpx.HTTPStatusError):
            code = cause.response.status_code
            if code in (401, 403):
                return ServerError(
                    f"error: the Prefect server at {shown} refused the credentials ({code}): "
                    "set PREFECT_API_AUTH_STRING to the server's auth string (self-hosted) "
                    "or PREFECT_API_KEY (Prefect Cloud)",
                    2,
                )
            if code == 422 and "parameter" in cause.response.text.lower():
                return ServerError(
                    f"error: the Prefect server at {shown} refused the submission's size (422): "
                    "raise PREFECT_SERVER_API_MAX_PARAMETER_SIZE on the server, or put the "
                    "structure file on the shared filesystem and use advloop serve --config",
                    2,
                )
            return ServerError(
                f"error: the Prefect server at {shown} answered {code} "
                f"({cause.response.reason_phrase}); see its log",
                1,
            )
        if isinstance(cause, (httpx.TransportError, ConnectionError)):
            return ServerError(
                f"error: cannot reach the Prefect server at {shown} "
                f"({type(cause).__name__}): start it (prefect server start --host 127.0.0.1) "
                "or fix PREFECT_API_URL",
                1,
            )
        if isinstance(cause, RuntimeError) and "incompatible versions" in str(cause):
            return ServerError(f"error: {cause} (server at {shown})", 2)
    return ServerError(
        f"error: the Prefect server at {shown} failed: {type(err).__name__}: {err}", 1
    )


@contextlib.contextmanager
def server_client() -> Iterator[Any]:
    """A synchronous Prefect client for the configured server, checked with a quick
    health probe first; every failure, then or later in the block, becomes a one-line
    :class:`ServerError`."""
    from prefect.client.orchestration import get_client
    from prefect.settings import (
        PREFECT_API_REQUEST_TIMEOUT,
        PREFECT_CLIENT_MAX_RETRIES,
        temporary_settings,
    )

    url = api_url()
    try:
        # Probe without retries and with a short timeout: a wrong host should fail in
        # seconds, not after five retries of a 60 s timeout.
        with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0, PREFECT_API_REQUEST_TIMEOUT: 10.0}):
            with get_client(sync_client=True) as probe:
                failure = probe.api_healthcheck()
        if failure is not None:
            raise failure
        with get_client(sync_client=True) as client:
            yield client
    except ServerError:
        raise
    except Exception as err:
        raise _translate(err, url) from None


def flow_run_url(flow_run_id: Any) -> str | None:
    """The UI page of a flow run (from PREFECT_UI_URL, derived from PREFECT_API_URL)."""
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    return f"{display_url(str(base)).rstrip('/')}/runs/flow-run/{flow_run_id}" if base else None


@dataclass(frozen=True)
class Submitted:
    """What ``advloop submit`` created."""

    flow_run: FlowRun
    deployment: str
    work_pool: str | None
    workers_online: int | None
    url: str | None


def _active_runs(client: Any, system: str) -> list[FlowRun]:
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[TAG, system]),
            state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType(s) for s in ACTIVE_STATES])
            ),
        ),
        limit=5,
    )


def submit(
    submission: Submission, deployment: str = DEFAULT_DEPLOYMENT, force: bool = False
) -> Submitted:
    """Create a Scheduled flow run of ``deployment`` with the submission's parameters,
    named and tagged after the system; return it without waiting.

    Unless ``force``, refuse when the system already has a flow run that may still write
    its run folder (two runs of one folder would interleave their records). Raises
    :class:`ServerError`.
    """
    from prefect.exceptions import ObjectNotFound

    if "/" not in deployment:
        raise ServerError(
            f"error: --deployment {deployment!r} must be FLOW/DEPLOYMENT, "
            f"e.g. {DEFAULT_DEPLOYMENT}",
            2,
        )
    with server_client() as client:
        try:
            dep = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise ServerError(
                f"error: no deployment {deployment!r} on the server {display_url(api_url())}: "
                "start `advloop serve` or run `prefect deploy --all --prefect-file "
                "infra/prefect.yaml` (infra/README.md)",
                2,
            ) from None
        if not force and (active := _active_runs(client, submission.system)):
            run = active[0]
            raise ServerError(
                f"error: {submission.system!r} already has flow run {run.name!r} ({run.id}) in "
                f"state {run.state_name}, which writes the same run folder: wait for it, "
                f"cancel it (prefect flow-run cancel {run.id}), or pass --force",
                2,
            )
        flow_run = client.create_flow_run_from_deployment(
            dep.id,
            parameters=submission.parameters(),
            name=submission.system,
            tags=[TAG, submission.system],
        )
        online = None
        if dep.work_pool_name:
            workers = client.read_workers_for_work_pool(dep.work_pool_name)
            online = sum(
                1 for w in workers if str(getattr(w.status, "value", w.status)) == "ONLINE"
            )
    return Submitted(
        flow_run=flow_run,
        deployment=deployment,
        work_pool=dep.work_pool_name,
        workers_online=online,
        url=flow_run_url(flow_run.id),
    )


# ---------------------------------------------------------------------------------------
# Schedules that the server does not turn into runs

#: How long after a schedule is made (s) the server's scheduler may take to create its
#: first runs before advloop warns that it has none. The scheduler picks up a new or
#: changed deployment within PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS
#: (5 s by default) and tops up every schedule every
#: PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS (60 s); a healthy server keeps at least
#: three upcoming runs of each active schedule (PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS).
SCHEDULER_GRACE_S = 90.0


def no_upcoming_run_warning(deployment: str) -> str:
    """The one-line warning for a deployment (``<flow>/<deployment>``) whose active
    schedule has no Scheduled flow run."""
    return (
        f"warning: deployment {deployment} has an active schedule but no upcoming flow "
        "run, so it will never run: check that the server's scheduler service is on "
        "(PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED) and look for 'Error scheduling "
        "deployment' in the server's log; Prefect 3.8.8's scheduler fails on SQLAlchemy "
        "2.1 (pip install 'sqlalchemy>=2.0,<2.1' where the server runs)"
    )


def _next_scheduled_run(client: Any, deployment_id: Any) -> FlowRun | None:
    """The deployment's earliest flow run in a Scheduled state (Late included), or None."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
        ),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        limit=1,
    )
    return runs[0] if runs else None


def _schedule_age(deployment: Any) -> float | None:
    """Seconds since the newest active schedule of ``deployment`` was made (updating a
    deployment remakes its schedules), or None if it has no active schedule or is paused."""
    active = [s for s in deployment.schedules if s.active]
    if deployment.paused or not active:
        return None
    made = [t for s in active if (t := s.updated or s.created) is not None]
    if not made:
        return 0.0
    return (datetime.datetime.now(datetime.timezone.utc) - max(made)).total_seconds()


def schedules_without_runs(system: str | None = None, grace: float | None = None) -> list[str]:
    """``<flow>/<deployment>`` of each advloop deployment (tagged ``advloop``, and
    ``system`` if given) that has an active schedule made more than ``grace`` seconds ago
    (default :data:`SCHEDULER_GRACE_S`), is not paused, and has no flow run in a
    Scheduled state: the server's scheduler is off or failing. Raises :class:`ServerError`."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    grace = SCHEDULER_GRACE_S if grace is None else grace
    tags = [TAG] if system is None else [TAG, system]
    out = []
    with server_client() as client:
        for dep in client.read_deployments(
            deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=tags))
        ):
            age = _schedule_age(dep)
            if age is None or age < grace or _next_scheduled_run(client, dep.id) is not None:
                continue
            out.append(f"{client.read_flow(dep.flow_id).name}/{dep.name}")
    return sorted(out)


def schedule_ids(deployments: Sequence[str]) -> frozenset[Any]:
    """The ids of the schedules the named deployments (``<flow>/<deployment>``) have on
    the configured server now; deployments that do not exist have none. Registering a
    deployment remakes its schedules, so :func:`watch_schedules` tells the ones a serve
    registers from these. Raises :class:`ServerError`."""
    from prefect.exceptions import ObjectNotFound

    ids = set()
    with server_client() as client:
        for name in deployments:
            try:
                ids |= {s.id for s in client.read_deployment_by_name(name).schedules}
            except ObjectNotFound:
                pass
    return frozenset(ids)


def watch_schedules(
    deployments: Sequence[str],
    before: frozenset[Any] = frozenset(),
    wait: float | None = None,
    poll: float = 2.0,
) -> Iterator[tuple[str, datetime.datetime | None]]:
    """Follow the named deployments (``<flow>/<deployment>``) as ``prefect.serve``
    registers them on the configured server, and yield ``(name, start)`` for each once:
    ``start`` (UTC) of its next Scheduled flow run as soon as the server's scheduler has
    made one, or None if it has made none ``wait`` s (default :data:`SCHEDULER_GRACE_S`)
    after the deployment appeared with an active schedule other than those in ``before``
    (:func:`schedule_ids` taken before registering). A deployment that does not appear so
    within ``2 * wait`` s is dropped, unreported; so are errors reaching the server, which
    ``prefect.serve`` reports itself. Polls every ``poll`` s; ``advloop serve`` drains it
    in a daemon thread."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    wait = SCHEDULER_GRACE_S if wait is None else wait
    start = time.monotonic()
    appeared: dict[str, float] = {}
    pending = list(deployments)
    while pending:
        now = time.monotonic()
        for name in [n for n in pending if n not in appeared and now - start > 2 * wait]:
            pending.remove(name)  # never registered with an active schedule
        try:
            with get_client(sync_client=True) as client:
                for name in list(pending):
                    try:
                        dep = client.read_deployment_by_name(name)
                    except ObjectNotFound:
                        continue
                    ours = {s.id for s in dep.schedules if s.active} - before
                    if name not in appeared and (not ours or _schedule_age(dep) is None):
                        continue  # not registered by this serve yet, or paused
                    appeared.setdefault(name, now)
                    if (run := _next_scheduled_run(client, dep.id)) is not None:
                        when = run.expected_start_time
                        pending.remove(name)
                        yield name, when.astimezone(datetime.timezone.utc) if when else None
                    elif now - appeared[name] > wait:
                        pending.remove(name)
                        yield name, None
        except Exception:  # the server is down or restarting: prefect.serve says so
            pass
        if pending:
            time.sleep(poll)
