"""Crash detection on a Prefect server: an automation that marks flow runs whose
heartbeats stopped as Crashed.

Why: a flow run whose process dies without reporting (``kill -9``, a node that loses
power, the out-of-memory killer, a batch job past its wall time) stays ``Running`` on
the server for ever; ``advloop submit`` then refuses its system, and the UI shows a run
that is not running.

How (Prefect 3.8.8, checked in the installed package):

- every flow run's own process emits the event ``prefect.flow-run.heartbeat`` from a
  background thread every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (default 180,
  at least 30; ``PREFECT_RUNNER_HEARTBEAT_FREQUENCY`` is the old name, still read). Set
  it on the workers and on ``advloop serve``: their flow-run processes inherit it;
- the automation built here is Prefect's documented recipe ("detect zombie flows"): a
  *proactive* event trigger, per flow run (``for_each`` the flow run's resource id),
  armed by each heartbeat (``after``) and expecting any further event of the same flow
  run (``prefect.flow-run.*``: the next heartbeat or a state change) within N seconds;
  when none comes, its action ``change-flow-run-state`` sets the run ``CRASHED``.

The trigger is armed by heartbeats, not by ``prefect.flow-run.Running``: a run whose
client sends no heartbeats (heartbeats disabled, or a Prefect older than 3.6.22 with the
default) is then never marked, where arming on Running would crash every such run N
seconds after it started. A run killed before its first heartbeat (sent as the flow
starts) is not caught.

N must exceed the heartbeat interval with a margin for a loaded node: the default,
540 s, tolerates two lost heartbeats at the default 180 s (Prefect Cloud's managed
"unresponsive run detection" uses the same 9 minutes).

The automation lives on the server; the server's trigger services
(``PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED``, on by default) evaluate it, and they see
the heartbeats only when they run in the same process as the API or share a Redis
message broker with it (infra/server/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from prefect.automations import Automation

#: The automation's name on the server: `advloop automations create` creates or updates
#: the automation of this name.
CRASH_AUTOMATION = "advloop-crash-detection"
#: Seconds without an event from a running flow run after which it is marked Crashed.
DEFAULT_HEARTBEAT_SECONDS = 540
#: The least N accepted: twice the shortest heartbeat interval Prefect allows (30 s).
MIN_HEARTBEAT_SECONDS = 60
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
CRASH_MESSAGE = "advloop: no heartbeat from this flow run for {seconds} s; marked Crashed"


def crash_automation(
    heartbeat_seconds: int = DEFAULT_HEARTBEAT_SECONDS, name: str = CRASH_AUTOMATION
) -> Automation:
    """The crash-detection automation (not yet on any server): a proactive trigger per
    flow run, armed by each ``prefect.flow-run.heartbeat``, that fires when no further
    event of that flow run arrives within ``heartbeat_seconds``, and an action that sets
    the run CRASHED. Raises ``ValueError`` for fewer than :data:`MIN_HEARTBEAT_SECONDS`."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    if heartbeat_seconds < MIN_HEARTBEAT_SECONDS:
        raise ValueError(
            f"--heartbeat-seconds {heartbeat_seconds} is too short: flow runs send a heartbeat "
            f"at most every 30 s (PREFECT_FLOWS_HEARTBEAT_FREQUENCY), so use at least "
            f"{MIN_HEARTBEAT_SECONDS}, and about 3 x the workers' heartbeat frequency"
        )
    return Automation(
        name=name,
        description=(
            f"Marks a flow run Crashed when {heartbeat_seconds} s pass after one of its "
            f"heartbeats ({HEARTBEAT_EVENT}) without another heartbeat or a state change: "
            "its process died without reporting. Made by `advloop automations create`; "
            "flow runs send heartbeats every PREFECT_FLOWS_HEARTBEAT_FREQUENCY s "
            "(default 180)."
        ),
        enabled=True,
        trigger=EventTrigger(
            after={HEARTBEAT_EVENT},
            expect={"prefect.flow-run.*"},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=heartbeat_seconds),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED, message=CRASH_MESSAGE.format(seconds=heartbeat_seconds)
            )
        ],
    )


def signature(automation: Any) -> dict[str, Any]:
    """What makes two automations do the same (name, description, enabled, trigger and
    actions; not ids), as plain JSON data with sets sorted: compare with ``==``."""
    data = automation.model_dump(
        mode="json",
        include={
            "name",
            "description",
            "enabled",
            "trigger",
            "actions",
            "actions_on_trigger",
            "actions_on_resolve",
        },
    )
    trigger = {k: v for k, v in data["trigger"].items() if k != "id"}
    for key in ("after", "expect", "for_each"):
        if isinstance(trigger.get(key), list):
            trigger[key] = sorted(trigger[key])
    return {**data, "trigger": trigger}


#: what :func:`ensure_automation` did to the server's automation of that name
EnsureOutcome = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True)
class Ensured:
    """What :func:`ensure_automation` did: ``created``, ``updated`` (the server had one
    of that name that differed) or ``unchanged``; ``removed`` counts duplicates of the
    name it deleted."""

    automation: Any  # prefect.events.schemas.automations.Automation, as read back
    outcome: EnsureOutcome
    removed: int = 0


def ensure_automation(automation: Automation) -> Ensured:
    """Create ``automation`` on the configured server, or bring the one of the same name
    to match it: idempotent, so running it again changes nothing. Where several have the
    name (made by hand, or by two concurrent calls), the one updated last is kept, the others
    deleted. Raises :class:`advloop.flows.deployments.ServerError`."""
    from prefect.events.schemas.automations import AutomationCore

    from advloop.flows.deployments import server_client

    # without owner_resource, which the server's update schema forbids (as
    # prefect.automations.Automation.update leaves it out)
    desired = AutomationCore(**automation.model_dump(exclude={"id", "owner_resource"}))
    with server_client() as client:
        # most recently updated first
        same_name = [
            a for a in client.read_automations_by_name(desired.name) if a.name == desired.name
        ]
        removed = 0
        outcome: EnsureOutcome
        if not same_name:
            outcome, automation_id = "created", client.create_automation(desired)
        else:
            keep, *extra = same_name
            for other in extra:
                client.delete_automation(other.id)
            removed, automation_id = len(extra), keep.id
            if signature(keep) == signature(desired):
                outcome = "unchanged"
            else:
                outcome = "updated"
                client.update_automation(automation_id, desired)
        stored = client.read_automation(automation_id)
    return Ensured(automation=stored, outcome=outcome, removed=removed)


def ensure_crash_automation(heartbeat_seconds: int = DEFAULT_HEARTBEAT_SECONDS) -> Ensured:
    """:func:`crash_automation` on the configured server, created or updated by name
    (what ``advloop automations create`` runs). Raises ``ValueError`` for a too short
    ``heartbeat_seconds``, :class:`advloop.flows.deployments.ServerError` for server trouble."""
    return ensure_automation(crash_automation(heartbeat_seconds))


def heartbeat_frequency() -> int | None:
    """PREFECT_FLOWS_HEARTBEAT_FREQUENCY as set here (environment or profile): the
    interval of the heartbeats that flow runs started from this environment send."""
    from prefect.settings import get_current_settings

    return get_current_settings().flows.heartbeat_frequency
