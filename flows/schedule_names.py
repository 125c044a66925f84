"""Scheduled runs named after their system before they start.

The server's scheduler creates a schedule's upcoming flow runs ahead of time (3 to 100 of
them, infra/README.md) with Prefect's random names (``purple-skua``); a flow's
``flow_run_name`` applies only when a run starts, and a Prefect 3.8.8 deployment has no
setting that names the runs its schedule makes (its flow-run name template exists only
on the flow). So the process that serves the deployments (``advloop serve``) names them:
every :data:`NAMING_SECONDS` it renames each Scheduled flow run of its scheduled
deployments to ``<system>-scheduled-<expected start, UTC>``; when the run starts, the
flow renames it ``<system>-<start time>`` (:func:`advloop.flows.active_learning.run_config_file`).
Runs of deployments that no advloop process serves (``prefect deploy`` and workers) keep
Prefect's names; ``advloop status --server`` shows their system beside them.
"""

from __future__ import annotations

import datetime
import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["NAMING_SECONDS", "keep_naming", "name_scheduled_runs", "scheduled_run_name"]

#: Seconds between two passes over the served deployments' Scheduled runs.
NAMING_SECONDS = 10.0


def scheduled_run_name(system: str, start: datetime.datetime) -> str:
    """``<system>-scheduled-<YYYYmmddTHHMMZ>``: the name of a run of ``system`` that is
    to start at ``start``."""
    utc = start.astimezone(datetime.timezone.utc)
    return f"{system}-scheduled-{utc:%Y%m%dT%H%MZ}"


def name_scheduled_runs(client: Any, deployments: Mapping[str, str]) -> int:
    """Rename each flow run in a Scheduled state (Late included) of the ``deployments``
    (``<flow>/<deployment>`` → system name) that does not carry its
    :func:`scheduled_run_name` yet; return how many were renamed. Deployments that do
    not exist (yet) are skipped."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound

    renamed = 0
    for name, system in deployments.items():
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            continue
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            ),
        )
        for run in runs:
            when = run.expected_start_time or run.next_scheduled_start_time
            if when is None:
                continue
            wanted = scheduled_run_name(system, when)
            if run.name != wanted:
                client.update_flow_run(run.id, name=wanted)
                renamed += 1
    return renamed


def keep_naming(
    deployments: Mapping[str, str], stop: threading.Event, every: float = NAMING_SECONDS
) -> None:
    """:func:`name_scheduled_runs` on the configured server every ``every`` s (the first
    pass after ``every`` s, when ``prefect.serve`` has registered the deployments) until
    ``stop`` is set; errors reaching the server are skipped (``prefect.serve`` reports
    them itself). ``advloop serve`` runs it in a daemon thread."""
    from prefect.client.orchestration import get_client

    while not stop.wait(every):
        try:
            with get_client(sync_client=True) as client:
                name_scheduled_runs(client, deployments)
        except Exception:  # the server is down or restarting
            pass
