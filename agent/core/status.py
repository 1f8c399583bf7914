"""Rendering of the documents the agent publishes, from core state. Pure."""

from __future__ import annotations

from typing import Any, Literal

from agent.core.model import Execution, Usage
from agent.core.timers import Timer
from agent.protocol import rfc3339


def status_document(execution: Execution) -> dict[str, Any]:
    """The execution status document of PROTOCOL.md, field for field."""
    desired = execution.desired
    return {
        "execution_id": execution.execution_id,
        "job_id": execution.job_id,
        "node_id": execution.node_id,
        "revision": execution.revision,
        "observed_generation": execution.generation,
        "created_at": rfc3339(execution.created_at),
        "updated_at": rfc3339(execution.updated_at),
        "stable_at": rfc3339(execution.stable_at),
        "desired_state": desired.model_dump(mode="json") if desired is not None else None,
        "observed_state": execution.observed.model_dump(mode="json"),
        "previous_execution_id": execution.previous_execution_id,
        "next_execution_id": execution.next_execution_id,
        "compute_reference": execution.compute_reference,
        "restart_count": execution.restart_count,
        "run_output": execution.run_output.model_dump(mode="json"),
        "published_results": _published_results(execution),
        "details": _details(execution),
    }


def _published_results(execution: Execution) -> dict[str, Any] | None:
    results = execution.published_results
    return None if results is None else results.model_dump(mode="json")


def _details(execution: Execution) -> dict[str, Any]:
    """The execution's details, plus ``timeout_at`` while ``spec.timeout_s`` counts (the job's timeout_at)."""
    details = dict(execution.details)
    if Timer.TIMEOUT in execution.deadlines and execution.timeout_at is not None:
        details["timeout_at"] = rfc3339(execution.timeout_at)  # wall clock: the deadline is on the boot clock
    return details


def status_view(execution: Execution | None) -> dict[str, Any] | None:
    """What makes two statuses different: the document without its revision and update time."""
    if execution is None:
        return None
    return view_of(status_document(execution))


def view_of(document: dict[str, Any]) -> dict[str, Any]:
    """:func:`status_view` of the execution ``document`` renders, without rendering it again."""
    return {k: v for k, v in document.items() if k not in ("revision", "updated_at")}


# The events the lifecycle emits about one execution (docs/protocol.md, Events); the runtime emits node events.
ExecutionEventType = Literal[
    "lost", "restart", "rollback", "desired_rejected", "desired_missing", "desired_restored"
]


def event_document(
    event_type: str, node_id: str, execution_id: str | None, at: float, **fields: Any
) -> dict[str, Any]:
    return {"type": event_type, "node_id": node_id, "execution_id": execution_id, "at": rfc3339(at), **fields}


def usage_document(usage: Usage) -> dict[str, Any]:
    """details.usage: what the attempt's processes used, all of them together."""
    return {
        "cpu_seconds": round(usage.cpu_seconds, 3),
        "processes": usage.processes,
        "memory_bytes": usage.memory_bytes,
        "at": rfc3339(usage.at),
    }
