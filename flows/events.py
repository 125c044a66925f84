"""Prefect events a run emits, for automations (notify on convergence, page someone when
DFT labels fail, start the next system when a run finishes).

Every event names the run as its resource, ``{"prefect.resource.id": "advloop.run.<system>"}``,
relates it to the flow run that emitted it, and carries a JSON-safe payload (NaN and
infinities become null):

- ``advloop.generation.finished``: the generation's record (as in generations.jsonl);
- ``advloop.run.converged``: the run stopped because the potential converged (reason
  ``converged`` or ``few_candidates``); payload: the run summary (as in summary.json);
- ``advloop.run.stopped``: the run stopped for any other reason (a budget, no candidates);
  payload: the run summary, whose ``stop_reason`` says which;
- ``advloop.labels.failure-ratio-exceeded``: more labels of a batch failed than
  ``budget.max_failure_ratio`` allows; the run fails right after it.

The ``*_event`` functions build events as plain data (testable without Prefect);
:func:`emit` sends one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from advloop.flows.records import CONVERGED, GenerationRecord, RunSummary

GENERATION_FINISHED = "advloop.generation.finished"
RUN_CONVERGED = "advloop.run.converged"
RUN_STOPPED = "advloop.run.stopped"
LABEL_FAILURES = "advloop.labels.failure-ratio-exceeded"


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf as None, numpy scalars as Python numbers, tuples as lists and
    anything else unknown as its ``str``."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    kind = getattr(getattr(value, "dtype", None), "kind", "")
    if kind == "b":
        return bool(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return None
    return int(number) if kind in ("i", "u") else number


def run_resource(system: str) -> dict[str, str]:
    """The Prefect resource that stands for the run of ``system``."""
    return {"prefect.resource.id": f"advloop.run.{system}", "prefect.resource.name": system}


@dataclass(frozen=True)
class RunEvent:
    """An event as plain data: its name, the run's resource and a JSON-safe payload."""

    event: str
    resource: dict[str, str]
    payload: dict[str, Any] = field(default_factory=dict)


def generation_finished_event(system: str, record: GenerationRecord) -> RunEvent:
    return RunEvent(GENERATION_FINISHED, run_resource(system), json_safe(record.to_dict()))


def run_finished_event(summary: RunSummary) -> RunEvent:
    """``advloop.run.converged`` or ``advloop.run.stopped``, by the summary's stop reason."""
    name = RUN_CONVERGED if summary.stop_reason in CONVERGED else RUN_STOPPED
    return RunEvent(name, run_resource(summary.system), json_safe(summary.to_dict()))


def failure_ratio_event(
    system: str,
    generation: int | None,
    failed: int,
    requested: int,
    max_failure_ratio: float,
    failures: list[str],
) -> RunEvent:
    """``failed`` of the ``requested`` labels of a step (those an earlier invocation
    stored included) failed; ``generation`` None: the initial dataset."""
    return RunEvent(
        LABEL_FAILURES,
        run_resource(system),
        json_safe(
            {
                "generation": generation,
                "failed": failed,
                "requested": requested,
                "failure_ratio": failed / requested if requested else None,
                "max_failure_ratio": max_failure_ratio,
                "failures": failures[:5],
            }
        ),
    )


def emit(event: RunEvent) -> None:
    """Send ``event`` to Prefect, related to the current flow run (if any)."""
    from prefect.events import emit_event
    from prefect.runtime import flow_run

    related = []
    if flow_run.id:
        related.append(
            {
                "prefect.resource.id": f"prefect.flow-run.{flow_run.id}",
                "prefect.resource.role": "flow-run",
                "prefect.resource.name": str(flow_run.name or ""),
            }
        )
    emit_event(event=event.event, resource=event.resource, payload=event.payload, related=related)
