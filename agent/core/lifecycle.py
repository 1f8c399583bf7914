"""The lifecycle of one execution as a pure function: ``decide(state, event, now) -> (state, actions)``.

No I/O and no clock: ``now`` is wall-clock epoch seconds handed in by the runtime, timers are deadlines
kept in the state, and every effect (spawn, signal, publish) is returned as an action. Each change of the
published status bumps the revision by exactly one and yields a :class:`PublishStatus` carrying the
rendered document, so the runtime can store state and outbox in one transaction.
"""

from __future__ import annotations

from typing import Any

from agent.core.actions import Action, ClearStatus, EmitEvent, Forget, PublishStatus, Signal, Spawn
from agent.core.events import (
    DesiredDeleted,
    DesiredReceived,
    DesiredRejected,
    Event,
    ProcessExited,
    ProcessStarted,
    SpawnFailed,
    SpawnLost,
    TimerFired,
)
from agent.core.model import Absent, Execution, ProcessRef
from agent.core.status import event_document, status_document, status_view
from agent.protocol import DesiredDocument, ObservedState, ObservedStateType, RunOutput, Spec, rfc3339

# Timer names, kept in Execution.timers as name -> deadline.
WINDOW = "window"  # validation window: the workload has stayed up long enough to be stable
DEADLINE = "deadline"  # validation deadline: it did not become stable in time
GRACE = "grace"  # stop grace: time to escalate to SIGKILL
RESTART = "restart"  # restart backoff: time for the next attempt
TIMEOUT = "timeout"  # spec.timeout_s: the execution has run for too long, counted from its first start

Decision = tuple[Execution | Absent, list[Action]]


class _Step:
    """Accumulates one decision: state changes, a revision per published change, and the actions."""

    def __init__(self, state: Execution, now: float, published: dict[str, Any] | None) -> None:
        self.state = state
        self.now = now
        self.actions: list[Action] = []
        self._published = published

    def set(self, **fields: Any) -> None:
        self.state = self.state.model_copy(update=fields)

    def observe(self, state_type: ObservedStateType, message: str = "", **details: Any) -> None:
        """Move to an observed state (its details replace the old ones) and publish it as its own revision."""
        self.set(observed=ObservedState(state_type=state_type, message=message, details=details))
        self.publish()

    def publish(self) -> None:
        """Publish the status if it differs from the last one published; identical statuses are dropped."""
        view = status_view(self.state)
        if view == self._published:
            return
        self.set(revision=self.state.revision + 1, updated_at=self.now)
        self._published = view
        self.actions.append(
            PublishStatus(self.state.execution_id, self.state.revision, status_document(self.state))
        )

    def emit(self, event_type: str, **fields: Any) -> None:
        s = self.state
        self.actions.append(
            EmitEvent(event_document(event_type, s.node_id, s.execution_id, self.now, **fields))
        )

    def set_timer(self, name: str, delay_s: float) -> None:
        self.set(timers={**self.state.timers, name: self.now + delay_s})

    def clear_timers(self, *names: str) -> None:
        self.set(timers={k: v for k, v in self.state.timers.items() if k not in names})

    def at(self, epoch_s: float | None = None) -> str:
        return rfc3339(self.now if epoch_s is None else epoch_s) or ""

    def done(self) -> Decision:
        self.publish()
        return self.state, self.actions


def decide(state: Execution | Absent, event: Event, now: float) -> Decision:
    """The new state of one execution after ``event``, and what must be done about it."""
    if isinstance(state, Absent):
        return _decide_absent(state, event, now)
    step = _Step(state, now, status_view(state))
    match event:
        case DesiredReceived(document=document, digest=digest):
            _on_desired(step, document, digest)
        case DesiredRejected():
            _on_rejected(step, event)
        case DesiredDeleted():
            if not state.active:
                return _forget(step)
            step.set(deleting=True)
            _stop(step, "stopping for deletion")
        case ProcessStarted(ref=ref):
            if ref.attempt == state.attempt and state.spawn_pending:
                _on_started(step, ref)
        case SpawnFailed(attempt=attempt, error=error):
            if attempt == state.attempt and state.spawn_pending:
                step.set(spawn_pending=False, run_output=RunOutput(error=error))
                return _on_gone(step, exit_code=None, why=f"could not start: {error}")
        case SpawnLost(attempt=attempt):
            if attempt == state.attempt and state.spawn_pending:
                step.set(spawn_pending=False)
                if state.state_type == "stopping":
                    return _on_gone(step, exit_code=None, why="never started")
                _start(step, "spawning again: the agent stopped while spawning")  # not a restart
        case ProcessExited():
            if state.process is not None and event.attempt == state.process.attempt:
                step.set(
                    process=None,
                    run_output=RunOutput(
                        stdout=event.stdout.text,
                        stdout_truncated=event.stdout.truncated,
                        stderr=event.stderr.text,
                        stderr_truncated=event.stderr.truncated,
                        exit_code=event.exit_code,
                    ),
                )
                return _on_gone(step, event.exit_code, why=None)
        case TimerFired(name=name):
            if name in state.timers:
                step.clear_timers(name)
                _on_timer(step, name)
    return step.done()


# --- Desired state ----------------------------------------------------------------------------------------


def _decide_absent(state: Absent, event: Event, now: float) -> Decision:
    """Events for an execution the agent does not hold: only desired documents can create one."""
    if not isinstance(event, DesiredReceived | DesiredRejected):
        return state, []
    job_id = event.document.job if isinstance(event, DesiredReceived) else state.execution_id
    created = Execution(
        execution_id=state.execution_id,
        node_id=state.node_id,
        job_id=job_id,
        revision=state.revision,
        created_at=now,
        updated_at=now,
        observed=ObservedState(state_type="pending"),
    )
    step = _Step(created, now, None)
    if isinstance(event, DesiredReceived):
        _on_desired(step, event.document, event.digest)
    else:
        _on_rejected(step, event)
    return step.done()


def _fixed_after_start(state: Execution, document: DesiredDocument) -> str | None:
    """Why ``document`` may not replace the desired state of an execution that has started, or None."""
    if not state.started_once:
        return None
    changed = [
        name
        for name, old, new in (
            ("spec", state.spec, _spec_of(state, document)),
            ("job_id", state.job_id, _job_of(state, document)),
            ("previous_execution_id", state.previous_execution_id, _previous_of(state, document)),
        )
        if old != new
    ]
    if changed:
        return (
            f"{', '.join(changed)} cannot change once the execution has started; create a new execution "
            f"with previous_execution_id {state.execution_id!r} to update it"
        )
    if document.desired_state.state_type == "pending":
        return "desired_state pending is only valid before the execution first starts; use stopped"
    return None


# Once started, a later generation may leave out (or null) what cannot change anyway, as a short `stopped`
# document does: left out means kept. Before the first start a new generation replaces everything.
def _spec_of(state: Execution, document: DesiredDocument) -> Spec | None:
    return document.spec if document.spec is not None else state.spec


def _job_of(state: Execution, document: DesiredDocument) -> str:
    return document.job if document.job_id is not None or not state.started_once else state.job_id


def _previous_of(state: Execution, document: DesiredDocument) -> str | None:
    if document.previous_execution_id is not None or not state.started_once:
        return document.previous_execution_id
    return state.previous_execution_id


def _on_desired(step: _Step, document: DesiredDocument, digest: str) -> None:
    state = step.state
    if document.generation <= state.generation:
        return  # duplicate or stale: ignored, no revision
    problem = _fixed_after_start(state, document)
    if problem is not None:
        _on_rejected(step, DesiredRejected(document.generation, problem, digest))
        return
    step.set(
        generation=document.generation,
        desired=document.desired_state,
        spec=_spec_of(state, document),
        job_id=_job_of(state, document),
        previous_execution_id=_previous_of(state, document),
        details={k: v for k, v in state.details.items() if k != "rejected"},
        rejected_digest=None,
        deleting=False,
    )
    if state.generation == 0 and state.state_type == "failed":
        step.set(observed=ObservedState(state_type="pending"))  # it was only ever a rejection
    desired = document.desired_state
    if desired.state_type == "pending":
        step.observe("pending", desired.message)
        return
    if step.state.state_type == "pending":
        step.publish()  # a new execution is seen pending, with what is wanted of it, before it starts
    if desired.state_type == "stopped":
        _stop(step, "stopped by request")
    # Terminal results are kept: only a pending or stopped execution is (re)started by a new generation.
    elif step.state.state_type in ("pending", "stopped") and not step.state.active:
        _start(step)


def _on_rejected(step: _Step, event: DesiredRejected) -> None:
    state = step.state
    if event.generation is not None and event.generation <= state.generation:
        return  # stale: older than the document in force, whatever is wrong with it
    if event.digest == state.rejected_digest:
        return  # the same bad payload again (a retained redelivery): already reported
    rejected = {"generation": event.generation, "reason": event.reason, "at": step.at()}
    step.set(details={**state.details, "rejected": rejected}, rejected_digest=event.digest)
    step.emit("desired_rejected", generation=event.generation, reason=event.reason)
    if state.generation == 0:  # never accepted: the execution exists only as this failure
        step.observe("failed", f"desired document rejected: {event.reason}")
    step.publish()


def _forget(step: _Step) -> Decision:
    eid = step.state.execution_id
    step.actions += [ClearStatus(eid), Forget(eid)]
    return Absent(execution_id=eid, node_id=step.state.node_id, revision=step.state.revision), step.actions


# --- Processes ----------------------------------------------------------------------------------------


def _start(step: _Step, message: str = "spawning") -> None:
    """Ask for a new attempt. A once-stable execution waits in degraded, never in starting."""
    state = step.state
    assert state.spec is not None, "a running desired state always has a spec"
    # The spec is fixed from the first spawn asked for, so every attempt of an execution runs the same spec.
    step.set(attempt=state.attempt + 1, spawn_pending=True, started_once=True)
    step.clear_timers(RESTART)
    step.observe("degraded" if state.stable_at is not None else "starting", message)
    step.actions.append(Spawn(state.execution_id, step.state.attempt, state.spec))


def _on_started(step: _Step, ref: ProcessRef) -> None:
    state = step.state
    assert state.spec is not None
    step.set(
        process=ref,
        spawn_pending=False,
        started_once=True,
        compute_reference=ref.compute_reference,
        run_output=RunOutput(),
    )
    if state.state_type == "stopping":  # stop or deletion was asked while it was being spawned
        _signal_stop(step, state.observed.message)
        return
    if state.spec.timeout_s is not None and TIMEOUT not in state.timers:
        step.set_timer(TIMEOUT, state.spec.timeout_s)  # restarts keep it: it counts from the run's start
    validation = state.spec.validation
    if DEADLINE not in state.timers and state.stable_at is None:
        step.set_timer(DEADLINE, validation.deadline_s)  # restarts restart the window, not the deadline
    step.set_timer(WINDOW, validation.window_s)
    # A stable execution that crashed stays degraded until it has passed the window again.
    step.observe("degraded" if state.stable_at is not None else "validating", "validating")
    if validation.window_s == 0:
        step.clear_timers(WINDOW)
        _on_timer(step, WINDOW)


def _on_gone(step: _Step, exit_code: int | None, why: str | None) -> Decision:
    """The workload ended (or never started): settle, restart, or finish a stop or deletion."""
    state = step.state
    step.clear_timers(WINDOW, GRACE)
    if state.state_type == "stopping":
        if state.deleting:
            step.observe("stopped", "stopped for deletion")
            return _forget(step)
        if state.stop_outcome is not None:
            step.set(stop_outcome=None)
            step.observe("failed", state.stop_outcome)
        elif state.desired is not None and state.desired.state_type == "running":
            _start(step)  # asked to run again while it was stopping
        else:
            step.observe("stopped", _exit_message("stopped by request", exit_code))
        return step.done()
    if exit_code is None and why is None:
        # Lost is published as its own revision; a policy that restarts failures then restarts it too, so a
        # service lost while the agent was away comes back, and a batch job (policy never) stays lost.
        reason = "the workload ended while nobody recorded its exit status"
        step.emit("lost", reason=reason)
        step.observe("lost", reason)
        if not _restart(step, None, reason):
            step.clear_timers(DEADLINE, TIMEOUT)
        return step.done()
    why = why or _exit_message("exited", exit_code)
    if not _restart(step, exit_code, why):
        _settle(step, exit_code, why)
    return step.done()


def _wants_restart(state: Execution, exit_code: int | None) -> bool:
    assert state.spec is not None
    policy = state.spec.restart.policy
    return policy == "always" or (policy == "on-failure" and exit_code != 0)


def _restart(step: _Step, exit_code: int | None, why: str) -> bool:
    """Schedule the next attempt if the policy, its budget and the validation deadline allow it."""
    state = step.state
    assert state.spec is not None
    policy = state.spec.restart
    deadline = state.timers.get(DEADLINE)
    in_time = deadline is None or deadline > step.now
    if not (_wants_restart(state, exit_code) and state.recent_restarts < policy.max_restarts and in_time):
        return False
    delay = min(policy.backoff_s * 2**state.recent_restarts, policy.backoff_max_s)
    step.set(restart_count=state.restart_count + 1, recent_restarts=state.recent_restarts + 1)
    step.set_timer(RESTART, delay)
    next_at = step.at(step.state.timers[RESTART])
    step.emit("restart", exit_code=exit_code, restart_count=step.state.restart_count, next_restart_at=next_at)
    waiting: ObservedStateType = "degraded" if state.stable_at is not None else "starting"
    step.observe(waiting, f"{why}; restarting at {next_at}", next_restart_at=next_at)
    return True


def _settle(step: _Step, exit_code: int | None, why: str) -> None:
    """The workload ended for good: completed, or failed with the reason."""
    state = step.state
    deadline = state.timers.get(DEADLINE)
    step.clear_timers(DEADLINE, TIMEOUT)
    if exit_code == 0:
        step.observe("completed", why)
    elif deadline is not None and deadline <= step.now and state.stable_at is None:
        step.observe("failed", f"validation failed: {why} and validation.deadline_s has passed")
    else:
        step.observe("failed", f"{why}; restarts exhausted" if _wants_restart(state, exit_code) else why)


def _stop(step: _Step, message: str) -> None:
    state = step.state
    step.clear_timers(RESTART, WINDOW, DEADLINE, TIMEOUT)
    if state.process is not None:
        if state.state_type != "stopping":
            _signal_stop(step, message)
    elif state.spawn_pending:
        step.observe("stopping", message)  # the spawn reports back; _on_started stops it then
    elif state.state_type != "stopped":
        step.observe("stopped", message)


def _signal_stop(step: _Step, message: str) -> None:
    state = step.state
    assert state.process is not None
    assert state.spec is not None
    step.actions.append(Signal(state.execution_id, state.process, state.spec.stop.signal))
    step.clear_timers(WINDOW, RESTART)  # a stopping workload can no longer become stable
    step.set_timer(GRACE, state.spec.stop.grace_s)
    step.observe("stopping", message)


# --- Timers -------------------------------------------------------------------------------------------


def _on_timer(step: _Step, name: str) -> None:
    state = step.state
    if name == WINDOW and state.process is not None and state.state_type in ("validating", "degraded"):
        step.clear_timers(DEADLINE)
        step.set(stable_at=state.stable_at if state.stable_at is not None else step.now, recent_restarts=0)
        step.observe("running", "stable")
    elif name == GRACE and state.process is not None:
        step.actions.append(Signal(state.execution_id, state.process, "SIGKILL"))
    elif name == RESTART and not state.active:
        _start(step, "restarting")
    elif name == DEADLINE and state.stable_at is None:
        _fail_on_own(step, "validation failed: not stable before validation.deadline_s passed")
    elif name == TIMEOUT:
        _fail_on_own(step, "timed out: ran longer than timeout_s")


def _fail_on_own(step: _Step, reason: str) -> None:
    """The agent ends the execution itself (deadline, timeout): stop whatever runs, then land in failed."""
    state = step.state
    step.clear_timers(RESTART, DEADLINE, TIMEOUT)
    if state.process is not None:
        step.set(stop_outcome=reason)
        _signal_stop(step, reason)
    elif state.spawn_pending:
        step.set(stop_outcome=reason)
        step.observe("stopping", reason)  # the spawn reports back; _on_started stops it then
    else:
        step.observe("failed", reason)


def _exit_message(prefix: str, exit_code: int | None) -> str:
    return prefix if exit_code is None else f"{prefix} with exit code {exit_code}"
