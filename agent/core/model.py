"""The stored state of one execution: everything the lifecycle decides from, and nothing it does not need.

It is plain data, persisted as JSON by the store and rendered into the status document by
:mod:`agent.core.status`. Published times are wall-clock epoch seconds; timer deadlines are seconds since
boot (:mod:`agent.core.clock`).
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict, Unpack

from pydantic import BaseModel, ConfigDict, Field

from agent.core.timers import ARMED_IN, ONLY_WHILE, Timer, While
from agent.protocol import DesiredState, ObservedState, ObservedStateType, PublishedResults, RunOutput, Spec


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProcessRef(_Frozen):
    """A running workload and the supervisor that reaps it.

    Start times (seconds since boot, in the kernel's clock ticks: immune to wall-clock steps) guard
    against a recycled pid: a process is only ours if both pid and start time match.
    """

    attempt: int
    pid: int
    started: float
    supervisor_pid: int
    supervisor_started: float
    cgroup: str | None = None  # the attempt's cgroup directory; None where process groups contain it

    @property
    def compute_reference(self) -> str:
        return f"pid:{self.pid}"


class Publishing(_Frozen):
    """Results being published (docs/protocol.md, Results): the workload has ended, the outcome waits.

    ``outcome`` and ``reason`` are what the execution lands in once the archive is out (``failed`` only
    with ``when: always``); ``tries`` numbers the publish actions, so a late report of an earlier try is
    recognised and ignored.
    """

    attempt: int  # the workload attempt whose output directory is packed
    exit_code: int | None
    outcome: Literal["completed", "failed"]
    reason: str
    ended_at: float  # when the workload ended: publisher.deadline_s counts from here
    tries: int = 1
    in_flight: bool = True  # a Publish action is out and has not reported back
    failures: int = 0
    last_error: str | None = None
    next_try_at: float | None = None

    def replace(self, **fields: Unpack[PublishingFields]) -> Publishing:
        """A copy with ``fields`` changed; the type checker checks each name and type."""
        return self.model_copy(update=fields)


class PublishingFields(TypedDict, total=False):
    """The fields of :class:`Publishing`, for typed updates (tests/unit/test_model_fields.py keeps them equal)."""

    attempt: int
    exit_code: int | None
    outcome: Literal["completed", "failed"]
    reason: str
    ended_at: float
    tries: int
    in_flight: bool
    failures: int
    last_error: str | None
    next_try_at: float | None


class Usage(_Frozen):
    """What one attempt's cgroup has used, sampled at ``at`` (wall-clock epoch seconds)."""

    cpu_seconds: float
    processes: int
    memory_bytes: int | None  # None without the memory controller
    at: float


class Absent(_Frozen):
    """An execution the agent does not know (never seen, or deleted): only its revision high-water mark."""

    execution_id: str
    node_id: str
    revision: int = 0


class Execution(_Frozen):
    execution_id: str
    node_id: str
    job_id: str
    revision: int
    generation: int = 0
    desired: DesiredState | None = None
    spec: Spec | None = None
    previous_execution_id: str | None = None
    next_execution_id: str | None = None
    created_at: float
    updated_at: float
    stable_at: float | None = None
    observed: ObservedState
    compute_reference: str | None = None  # the last workload's pid, kept after it ends
    restart_count: int = 0  # every restart the agent made, never reset
    run_output: RunOutput = Field(default_factory=RunOutput)
    details: dict[str, Any] = Field(default_factory=dict)
    # Fields added after the first stored schema have defaults, so a row written before them still loads.
    published_results: PublishedResults | None = None
    # Internal bookkeeping, never published as such.
    started_once: bool = False
    attempt: int = 0  # spawns asked for so far; each attempt has its own exit-status file
    spawn_pending: bool = False  # a Spawn for ``attempt`` is under way and has not reported back
    process: ProcessRef | None = None
    deadlines: dict[Timer, float] = Field(default_factory=dict)  # -> seconds since boot (core/clock.py)
    # The wall-clock time the timeout deadline fell at when it was set: published as details.timeout_at
    # while that deadline is set (a stored time, so a status does not change with every reading of the clocks).
    timeout_at: float | None = None
    usage: Usage | None = None  # the latest sample of the current (or last) attempt, published or not
    recent_restarts: int = 0  # restarts since the last run that passed its window: drives backoff
    deleting: bool = False
    stop_outcome: str | None = None  # why the agent stops it on its own: it lands in failed with this
    rejected_digest: str | None = None  # the last rejected payload, so a redelivery is not re-reported
    # Validation and probes of the current run.
    in_window: bool = False  # the current run has not yet passed its validation window
    probe_passing: bool = False  # the last probe check of the current run passed
    probe_failures: int = 0  # consecutive failed probe checks
    # Updates (docs/protocol.md, "Updates and rollback").
    handover_sent: bool = False  # N: P has been told about this update
    waiting_for_previous: bool = False  # N (stop_first): P must stop before N starts
    superseded: bool = False  # P: stopping or stopped because N replaces it, not because it was asked to
    handover_generation: int | None = None  # P: its generation when N took over; a newer one wins
    rollback_asked: bool = False  # N: P has been asked to take over again
    publishing: Publishing | None = None  # results are being published; the outcome waits for them

    @property
    def state_type(self) -> ObservedStateType:
        return self.observed.state_type

    @property
    def ever_stable(self) -> bool:
        """It has passed its validation window once (``stable_at`` is set then, and never changes)."""
        return self.stable_at is not None

    @property
    def active(self) -> bool:
        """A workload exists or is being spawned for this execution."""
        return self.process is not None or self.spawn_pending

    def armable(self) -> frozenset[Timer]:
        """The timers that may be armed in this state (agent/core/timers.py)."""
        return frozenset(timer for timer in ARMED_IN[self.state_type] if self.allows(timer))

    def allows(self, timer: Timer) -> bool:
        """Whether ``timer`` may be armed in this state (agent/core/timers.py)."""
        return timer in ARMED_IN[self.state_type] and all(
            self._holds(condition) for condition in ONLY_WHILE[timer]
        )

    def _holds(self, condition: While) -> bool:
        match condition:
            case While.WORKLOAD:
                return self.process is not None
            case While.IDLE:
                return not self.active
            case While.NEVER_STABLE:
                return not self.ever_stable
            case While.RUN:
                return self.publishing is None
            case While.PUBLISHING:
                return self.publishing is not None

    @property
    def next_timer(self) -> tuple[Timer, float] | None:
        if not self.deadlines:
            return None
        name = min(self.deadlines, key=lambda n: self.deadlines[n])
        return name, self.deadlines[name]

    def replace(self, **fields: Unpack[ExecutionFields]) -> Execution:
        """A copy with ``fields`` changed; the type checker checks each name and type.

        pydantic's ``model_copy(update=)`` validates nothing (a misspelt field would simply be added, a
        wrong type stored), and validating every change would cost more than the rest of a decision, so
        the check is the type checker's: ``fields`` is :class:`ExecutionFields`.
        """
        return self.model_copy(update=fields)


class ExecutionFields(TypedDict, total=False):
    """The fields of :class:`Execution`, for typed updates (tests/unit/test_model_fields.py keeps them equal)."""

    execution_id: str
    node_id: str
    job_id: str
    revision: int
    generation: int
    desired: DesiredState | None
    spec: Spec | None
    previous_execution_id: str | None
    next_execution_id: str | None
    created_at: float
    updated_at: float
    stable_at: float | None
    observed: ObservedState
    compute_reference: str | None
    restart_count: int
    run_output: RunOutput
    details: dict[str, Any]
    published_results: PublishedResults | None
    started_once: bool
    attempt: int
    spawn_pending: bool
    process: ProcessRef | None
    deadlines: dict[Timer, float]
    timeout_at: float | None
    usage: Usage | None
    recent_restarts: int
    deleting: bool
    stop_outcome: str | None
    rejected_digest: str | None
    in_window: bool
    probe_passing: bool
    probe_failures: int
    handover_sent: bool
    waiting_for_previous: bool
    superseded: bool
    handover_generation: int | None
    rollback_asked: bool
    publishing: Publishing | None


class NeverAccepted(_Frozen):
    """An execution the agent knows only from rejected documents: what its next status needs, no more.

    Anyone can publish bad documents under new execution ids, so these must cost the agent nothing while
    it runs: the runtime keeps them in the store only (agent/store.py), and holds an :class:`Execution`
    just while deciding about one. :meth:`of` and :meth:`execution` turn one into the other exactly, so
    the lifecycle sees, and the status renders, the same as if the whole execution had been kept.
    """

    execution_id: str
    node_id: str
    revision: int
    created_at: float
    updated_at: float
    message: str  # observed_state.message: the first words of the status, why it failed
    rejected: dict[str, Any]  # details.rejected: generation, reason, at
    rejected_digest: str | None  # so a redelivery of the same payload is not reported again

    def execution(self) -> Execution:
        return Execution(
            execution_id=self.execution_id,
            node_id=self.node_id,
            job_id=self.execution_id,
            revision=self.revision,
            created_at=self.created_at,
            updated_at=self.updated_at,
            observed=ObservedState(state_type="failed", message=self.message),
            details={"rejected": dict(self.rejected)},
            rejected_digest=self.rejected_digest,
        )

    @classmethod
    def of(cls, execution: Execution) -> NeverAccepted | None:
        """``execution`` as a record if it is nothing but a rejection (it never had a generation), else None."""
        rejected = execution.details.get("rejected")
        if execution.generation != 0 or execution.state_type != "failed" or not isinstance(rejected, dict):
            return None
        record = cls(
            execution_id=execution.execution_id,
            node_id=execution.node_id,
            revision=execution.revision,
            created_at=execution.created_at,
            updated_at=execution.updated_at,
            message=execution.observed.message,
            rejected=rejected,
            rejected_digest=execution.rejected_digest,
        )
        return record if record.execution() == execution else None
