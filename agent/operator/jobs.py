"""A job across the fleet: its executions on every node folded into one state (the seeds' JobState).

The rule is a pure function of the executions' observed states, first match wins:

| job state   | when                                                                        |
| ----------- | --------------------------------------------------------------------------- |
| `degraded`  | an execution is `degraded`, or one is up while another is `failed`/`lost`   |
| `running`   | an execution is `starting`, `validating` or `running`                       |
| `stopping`  | an execution is `stopping`                                                  |
| `pending`   | an execution is `pending` (or there are none)                               |
| `failed`    | all are final and one is `failed` or `lost`                                 |
| `stopped`   | all are final, none failed, and one is `stopped`                            |
| `completed` | all are `completed`                                                         |

Something alive beats something finished: a job is what it is doing now. A failure next to a live
execution is shown as `degraded` rather than hidden behind `running`: after a failed update that the
agent rolled back, the job runs, but the operator should still see that the update failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from agent.operator.status import ExecutionView

JobStateType = Literal["pending", "running", "degraded", "stopping", "completed", "failed", "stopped"]

UP = frozenset({"starting", "validating", "running", "degraded", "stopping"})
BROKEN = frozenset({"failed", "lost"})
FINAL = frozenset({"completed", "failed", "lost", "stopped"})


@dataclass(frozen=True)
class JobState:
    job_id: str
    executions: tuple[ExecutionView, ...]
    state: JobStateType
    version: int  # the highest generation any of its executions has acted on
    create_time: datetime | None  # the earliest created_at
    update_time: datetime | None  # the latest updated_at
    timeout_at: datetime | None  # the earliest timeout of its live executions (those with timeout_s)


def job_state_type(states: Sequence[str]) -> JobStateType:
    """The job's state from its executions' observed states (see the table above)."""
    present = set(states)
    if "degraded" in present or (present & UP and present & BROKEN):
        return "degraded"
    if present & {"starting", "validating", "running"}:
        return "running"
    if "stopping" in present:
        return "stopping"
    if not present or "pending" in present:
        return "pending"
    if present & BROKEN:
        return "failed"
    if "stopped" in present:
        return "stopped"
    if present == {"completed"}:
        return "completed"
    return "pending"  # a state this CLI does not know (a newer agent): claim nothing final


def job_state(job_id: str, executions: Sequence[ExecutionView]) -> JobState:
    mine = tuple(
        sorted((e for e in executions if e.job_id == job_id), key=lambda e: (e.node_id, e.execution_id))
    )
    created = [e.created_at for e in mine if e.created_at is not None]
    updated = [e.updated_at for e in mine if e.updated_at is not None]
    return JobState(
        job_id=job_id,
        executions=mine,
        state=job_state_type([e.state for e in mine]),
        version=max((e.observed_generation for e in mine), default=0),
        create_time=min(created, default=None),
        update_time=max(updated, default=None),
        timeout_at=min(
            (e.timeout_at for e in mine if e.timeout_at is not None and e.state not in FINAL), default=None
        ),
    )
