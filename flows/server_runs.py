"""advloop's flow runs on a Prefect server, and the run folder each one's parameters name
(what ``advloop status --server`` lists).

Each of advloop's three top-level flows names its run folder in its own parameters:

| flow | parameters | run folder |
| --- | --- | --- |
| ``advloop-active-learning`` (``advloop run``, and inside the other two) | ``config``: the validated RunConfig | ``config.output_dir / config.system.name`` |
| ``advloop-submission`` (``advloop submit``) | ``output_dir`` (absolute), ``config_yaml`` | ``output_dir / <system.name in the YAML>`` |
| ``advloop-run-config`` (scheduled deployments) | ``config_path``, ``output_dir`` (None: the config's) | ``output_dir / <system.name in the file>`` |

A relative path (``advloop run`` keeps the config's ``output_dir: runs``; ``infra/prefect.yaml``
names ``config_path: examples/ammonia.yaml``) is relative to the folder the flow run
started in: a deployment's working directory (its ``set_working_directory`` pull step, or
its ``path``) where the flow run has a deployment, else unknown to the server, and then
read from the current folder, and said so. A path this machine cannot see (a worker's
``/scratch``) is reported as such, not searched for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from advloop.flows.deployments import SUBMISSION_FLOW, TAG, server_client

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

__all__ = [
    "CONFIG_FILE_FLOW",
    "LOOP_FLOW",
    "TOP_FLOWS",
    "NamedFolder",
    "ServerRun",
    "deployment_workdir",
    "describe_folder",
    "named_folder",
    "system_tag",
    "top_flow_runs",
]

LOOP_FLOW = "advloop-active-learning"
CONFIG_FILE_FLOW = "advloop-run-config"
#: The flows whose runs are runs of advloop (the generation, training and labelling
#: sub-flows are parts of one of these).
TOP_FLOWS = (LOOP_FLOW, CONFIG_FILE_FLOW, SUBMISSION_FLOW)


@dataclass(frozen=True)
class NamedFolder:
    """The run folder a flow run's parameters name."""

    system: str | None  # None: the parameters do not say
    path: Path | None  # as this machine reads it; None: not known here
    note: str = ""  # why ``path`` is None, or how a relative path was read

    @property
    def visible(self) -> bool:
        """Whether this machine sees where the folder is (or will be): its parent, the
        ``output_dir``, or the folder that holds that (a run not started yet may not have
        made its ``output_dir``; a worker's ``/scratch/runs`` has neither here)."""
        return self.path is not None and (
            self.path.parent.is_dir() or self.path.parent.parent.is_dir()
        )


def _system_of(raw: Any) -> str | None:
    if isinstance(raw, dict) and isinstance(raw.get("system"), dict):
        name = raw["system"].get("name")
        return str(name) if name is not None else None
    return None


def _folder(system: str | None, output_dir: Any, base: Path, where: str) -> NamedFolder:
    if system is None:
        return NamedFolder(None, None, "its parameters name no system")
    if output_dir is None or output_dir == "":
        output_dir = "runs"  # RunConfig's default
    out = Path(str(output_dir)).expanduser()
    note = ""
    if not out.is_absolute():
        note = f"relative output_dir {str(out)!r}, read from {where}"
        out = base / out
    return NamedFolder(system, out / system, note)


def named_folder(
    flow_name: str, parameters: dict[str, Any], workdir: Path | None = None
) -> NamedFolder:
    """The run folder that a flow run of ``flow_name`` (one of :data:`TOP_FLOWS`) with
    ``parameters`` writes (module doc); relative paths are read from ``workdir`` (the
    flow run's deployment's working directory, :func:`deployment_workdir`) if given, else
    from the current folder. Never raises: what cannot be read is said in ``note``."""
    base = Path.cwd() if workdir is None else workdir
    where = (
        "the current folder (the server does not record where the run was started)"
        if workdir is None
        else f"the deployment's working directory {workdir}"
    )
    if flow_name == LOOP_FLOW:
        config = parameters.get("config")
        out = config.get("output_dir") if isinstance(config, dict) else None
        return _folder(_system_of(config), out, base, where)
    if flow_name == SUBMISSION_FLOW:
        try:
            raw = yaml.safe_load(parameters.get("config_yaml") or "")
        except yaml.YAMLError:
            raw = None
        return _folder(_system_of(raw), parameters.get("output_dir"), base, where)
    if flow_name == CONFIG_FILE_FLOW:
        path = Path(str(parameters.get("config_path") or "")).expanduser()
        if not path.is_absolute():
            path = base / path
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            return NamedFolder(None, None, f"config file {path} not visible from this machine")
        except (OSError, yaml.YAMLError) as err:
            return NamedFolder(None, None, f"config file {path} not readable here: {err}")
        out = parameters.get("output_dir")
        if out is None and isinstance(raw, dict):  # the config's own
            out = raw.get("output_dir")
        return _folder(_system_of(raw), out, base, where)
    return NamedFolder(None, None, f"{flow_name} is not one of advloop's run flows")


@dataclass(frozen=True)
class ServerRun:
    """A flow run of :data:`TOP_FLOWS`, its flow's name, and the working directory of
    its deployment (None: no deployment, or one that does not say)."""

    flow_run: FlowRun
    flow_name: str
    workdir: Path | None

    def folder(self) -> NamedFolder:
        return named_folder(self.flow_name, self.flow_run.parameters, self.workdir)


def deployment_workdir(deployment: Any) -> Path | None:
    """Where a deployment's flow runs start: the folder of its ``set_working_directory``
    pull step (``prefect deploy`` of ``infra/prefect.yaml``), else its ``path`` if
    absolute, else None."""
    for step in deployment.pull_steps or []:
        for name, args in step.items():
            if name.endswith("set_working_directory") and isinstance(args, dict):
                directory = args.get("directory")
                if isinstance(directory, str) and Path(directory).is_absolute():
                    return Path(directory)
    path = getattr(deployment, "path", None)
    return Path(path) if path and Path(path).is_absolute() else None


def top_flow_runs(system: str | None = None, limit: int = 10) -> list[ServerRun]:
    """The newest flow runs of :data:`TOP_FLOWS` that no other flow run started (a
    submission's loop is its own flow run's part), of ``system`` (tagged with its name,
    or named after it) or of every system, newest first. Raises
    :class:`~advloop.flows.deployments.ServerError`."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterName,
        FlowRunFilterParentTaskRunId,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.exceptions import ObjectNotFound

    flows = FlowFilter(name=FlowFilterName(any_=list(TOP_FLOWS)))
    top = FlowRunFilterParentTaskRunId(is_null_=True)
    which = (
        [FlowRunFilter(parent_task_run_id=top)]
        if system is None
        else [
            FlowRunFilter(parent_task_run_id=top, tags=FlowRunFilterTags(all_=[system])),
            FlowRunFilter(parent_task_run_id=top, name=FlowRunFilterName(any_=[system])),
        ]
    )
    with server_client() as client:
        by_id: dict[Any, FlowRun] = {}
        for flow_run_filter in which:
            for r in client.read_flow_runs(
                flow_filter=flows,
                flow_run_filter=flow_run_filter,
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=limit,
            ):
                by_id.setdefault(r.id, r)

        def when(r: FlowRun) -> float:
            t = r.start_time or r.expected_start_time or r.created
            return t.timestamp() if t else 0.0

        found = sorted(by_id.values(), key=when, reverse=True)[:limit]
        names = {fid: client.read_flow(fid).name for fid in {r.flow_id for r in found}}
        workdirs: dict[Any, Path | None] = {}
        for did in {r.deployment_id for r in found if r.deployment_id is not None}:
            try:
                workdirs[did] = deployment_workdir(client.read_deployment(did))
            except ObjectNotFound:  # deleted since
                workdirs[did] = None
    return [ServerRun(r, names[r.flow_id], workdirs.get(r.deployment_id)) for r in found]


def system_tag(flow_run: FlowRun) -> str | None:
    """The system a flow run is tagged with (its tags other than ``advloop``), if one."""
    others = [t for t in flow_run.tags if t not in (TAG, "auto-scheduled")]
    return others[0] if len(others) == 1 else None


def describe_folder(named: NamedFolder, state_type: str | None, now: float) -> str:
    """One line on what ``named`` says of its run, for ``advloop status --server``: the
    folder and :meth:`advloop.flows.progress.FolderStatus.line`, or why it cannot be read
    here. ``state_type`` is the flow run's (``SCHEDULED``, ``RUNNING``, ...)."""
    from advloop.flows.progress import folder_status

    if named.path is None:
        return f"run folder: unknown ({named.note})"
    where = f"run folder {named.path}"
    if named.note:
        where += f" ({named.note})"
    if not named.visible:
        return f"{where}: not visible from this machine (no folder {named.path.parent} here)"
    if named.path.parent.is_dir() and not os.access(named.path.parent, os.R_OK | os.X_OK):
        return f"{where}: not readable by this user"
    status = folder_status(named.path) if named.path.is_dir() else None
    if status is None:
        if state_type in ("SCHEDULED", "PENDING"):
            return f"{where}: not made yet (the flow run has not started)"
        return f"{where}: no run folder there"
    return f"{where}: {status.line(now)}"
