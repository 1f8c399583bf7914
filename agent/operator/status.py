"""Execution status documents as the operator reads them: tolerant, because they come off a broker.

The agent's status documents are well formed, but a retained topic may hold anything anyone published,
so a payload that is not a status document is skipped rather than allowed to end ``get`` or ``watch``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ExecutionView:
    node_id: str
    execution_id: str
    job_id: str
    state: str  # observed_state.state_type
    message: str
    revision: int
    observed_generation: int
    created_at: datetime | None
    updated_at: datetime | None
    stable: bool
    restarts: int
    exit_code: int | None
    rejected_generation: int | None  # details.rejected.generation: the agent refused this generation
    rejected_reason: str
    results: dict[str, Any] | None  # published_results: where the results went, once published
    timeout_at: datetime | None  # details.timeout_at: when spec.timeout_s ends the run
    document: dict[str, Any]  # as published, for -o json

    @property
    def name(self) -> str:
        return f"{self.node_id}/{self.execution_id}"


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)  # 3.11 reads the Z suffix
    except ValueError:
        return None


def parse_status(payload: bytes, node_id: str, execution_id: str) -> ExecutionView | None:
    """The view of one retained status payload, or None if it is empty or not a status document."""
    if not payload:
        return None
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    observed = doc.get("observed_state")
    revision = doc.get("revision")
    if not isinstance(observed, dict) or not isinstance(revision, int):
        return None
    rejected = _object(_object(doc.get("details")).get("rejected"))
    run_output = _object(doc.get("run_output"))
    return ExecutionView(
        # The topic names the node and execution; the document's copy could be anything.
        node_id=node_id,
        execution_id=execution_id,
        job_id=_str(doc.get("job_id")) or execution_id,
        state=_str(observed.get("state_type")) or "unknown",
        message=_str(observed.get("message")),
        revision=revision,
        observed_generation=_int(doc.get("observed_generation")) or 0,
        created_at=parse_time(doc.get("created_at")),
        updated_at=parse_time(doc.get("updated_at")),
        stable=doc.get("stable_at") is not None,
        restarts=_int(doc.get("restart_count")) or 0,
        exit_code=_int(run_output.get("exit_code")),
        rejected_generation=_int(rejected.get("generation")),
        rejected_reason=_str(rejected.get("reason")),
        results=_object(doc.get("published_results")) or None,
        timeout_at=parse_time(_object(doc.get("details")).get("timeout_at")),
        document=doc,
    )


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
