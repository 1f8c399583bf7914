"""The lifecycle of one execution as a pure function: ``decide(state, event, now) -> (state, actions)``.

No I/O and no clock: ``now`` is handed in by the runtime on both clocks (:mod:`agent.core.clock`: wall
time for what is published, boot time for timers), timers are deadlines kept in the state, and every effect (spawn, signal, publish, a message to another execution) is returned
as an action. Each change of the published status bumps the revision by exactly one and yields a
:class:`PublishStatus` with the rendered document, so the runtime can store state and outbox in one
transaction. The rules live in small modules: moves.py (start, stop, settle), validation.py (windows and
probes), updates.py (hand-over and rollback); this one dispatches events and owns the desired state.
"""

from __future__ import annotations

from agent.core import publish
from agent.core.actions import Signal
from agent.core.clock import Now
from agent.core.events import (
    DesiredDeleted,
    DesiredMissing,
    DesiredReceived,
    DesiredRejected,
    Event,
    HandOver,
    ProbeResult,
    ProcessExited,
    ProcessStarted,
    Published,
    PublishFailed,
    PublishResumed,
    Released,
    RollbackFrom,
    RolledBack,
    SpawnFailed,
    SpawnLost,
    SuccessorStable,
    TimerFired,
)
from agent.core.model import Absent, Execution
from agent.core.moves import (
    fail_on_own,
    failed,
    forget,
    on_gone,
    on_started,
    revalidating,
    start,
    stop,
    waiting_state,
)
from agent.core.step import Decision, Step
from agent.core.timers import Timer
from agent.core.updates import hand_over, on_mail
from agent.core.validation import on_probe, window_passed
from agent.protocol import (
    DesiredDocument,
    ObservedState,
    ObservedStateType,
    PublishedResults,
    RunOutput,
    Spec,
)

__all__ = ["Decision", "decide"]


def decide(state: Execution | Absent, event: Event, now: Now) -> Decision:
    """The new state of one execution after ``event``, and what must be done about it."""
    if isinstance(event, HandOver | Released | SuccessorStable | RollbackFrom | RolledBack):
        return on_mail(state, event, now)
    if isinstance(state, Absent):
        return _decide_absent(state, event, now)
    step = Step.of(state, now)
    match event:
        case DesiredReceived() | DesiredRejected() | DesiredMissing():
            _on_document(step, event)
        case DesiredDeleted():
            if not state.active:
                return forget(step)
            step.set(deleting=True)
            stop(step, "stopping for deletion")
        case ProcessStarted(ref=ref):
            if ref.attempt == state.attempt and state.spawn_pending:
                on_started(step, ref)
                if (
                    state.spec is not None
                    and state.spec.validation.window_s == 0
                    and state.spec.probe is None
                ):
                    window_passed(step)
        case SpawnFailed(attempt=attempt, error=error):
            if attempt == state.attempt and state.spawn_pending:
                step.set(spawn_pending=False, run_output=RunOutput(error=error))
                return on_gone(step, exit_code=None, why=f"could not start: {error}")
        case SpawnLost(attempt=attempt):
            if attempt == state.attempt and state.spawn_pending:
                step.set(spawn_pending=False)
                if state.state_type == "stopping":
                    return on_gone(step, exit_code=None, why="never started")
                again: ObservedStateType = "degraded" if revalidating(state) else "starting"
                start(step, "spawning again: the agent stopped while spawning", again)  # not a restart
        case ProcessExited():
            if state.process is not None and event.attempt == state.process.attempt:
                step.set(
                    process=None,
                    usage=event.usage or state.usage,
                    run_output=RunOutput(
                        stdout=event.stdout.text,
                        stdout_truncated=event.stdout.truncated,
                        stderr=event.stderr.text,
                        stderr_truncated=event.stderr.truncated,
                        exit_code=event.exit_code,
                    ),
                )
                why, note = _exit_account(event)
                return on_gone(step, event.exit_code, why=why, note=note)
        case ProbeResult(attempt=attempt, ok=ok, detail=detail):
            if state.process is not None and attempt == state.process.attempt:
                on_probe(step, ok, detail)
        case TimerFired(name=name):
            if name in state.deadlines:
                step.clear_timers(name)
                _on_timer(step, name)
        case Published(try_no=try_no, results=results):
            if _awaited(state, try_no):
                _published(step, results)
        case PublishFailed(try_no=try_no, error=error, retryable=retryable):
            if _awaited(state, try_no):
                if retryable:
                    publish.failed_try(step, error)
                else:
                    _publishing_failed(step, error)
        case PublishResumed():
            publish.resume(step)
    return step.done()


def _awaited(state: Execution, try_no: int) -> bool:
    """A report of the try in flight; any other (an earlier try, after a stop) comes too late."""
    publishing = state.publishing
    return publishing is not None and publishing.in_flight and try_no == publishing.tries


def _published(step: Step, results: PublishedResults) -> None:
    """The archive is out: land in the outcome the workload had, with ``published_results``."""
    publishing = step.state.publishing
    assert publishing is not None
    publish.abandon(step)
    step.set(published_results=results)
    if publishing.outcome == "completed":
        step.observe("completed", publishing.reason)
    else:
        failed(step, publishing.reason)


def _publishing_failed(step: Step, reason: str) -> None:
    publish.abandon(step)
    failed(step, f"publishing results failed: {reason}")


def _on_timer(step: Step, name: Timer) -> None:
    state = step.state
    if name == Timer.WINDOW:
        window_passed(step)
    elif name == Timer.GRACE and state.process is not None:
        step.actions.append(_kill(step))
    elif name == Timer.RESTART and not state.active:
        start(step, "restarting", waiting_state(state))
    elif name == Timer.DEADLINE and not state.ever_stable:
        fail_on_own(step, "validation failed: not stable before validation.deadline_s passed")
    elif name == Timer.TIMEOUT:
        fail_on_own(step, "timed out: ran longer than timeout_s")
    elif name == Timer.PUBLISH_RETRY and state.publishing is not None:
        publish.retry(step)
    elif name == Timer.PUBLISH_DEADLINE and state.publishing is not None:
        last = state.publishing.last_error
        why = "still not published" if last is None else last
        _publishing_failed(step, f"{why}; publisher.deadline_s passed")
    elif name == Timer.USAGE and state.process is not None:
        step.refresh_usage()


def _exit_account(event: ProcessExited) -> tuple[str | None, str]:
    """How the end of a contained workload reads: (why it failed, if not its exit code; a note)."""
    why = None
    if event.oom_kills and event.exit_code not in (None, 0):
        why = f"killed by the OOM killer: over its memory limit (spec.resources.memory_max_bytes), exit code {event.exit_code}"
    notes = []
    if event.oom_kills and why is None:
        notes.append(f"the OOM killer killed {_processes(event.oom_kills)} of it")
    if event.leftovers:
        if event.exit_code is None:
            notes.append(f"its supervisor was gone; {_processes(event.leftovers)} left running, killed")
        else:
            notes.append(f"{_processes(event.leftovers)} left after the main process exited, killed")
    return why, "; ".join(notes)


def _processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def _kill(step: Step) -> Signal:
    assert step.state.process is not None
    return Signal(step.state.execution_id, step.state.process, "SIGKILL")


# --- Desired state ----------------------------------------------------------------------------------------


def _decide_absent(state: Absent, event: Event, now: Now) -> Decision:
    """Events for an execution the agent does not hold: only desired documents can create one."""
    if not isinstance(event, DesiredReceived | DesiredRejected):
        return state, []
    job_id = event.document.job if isinstance(event, DesiredReceived) else state.execution_id
    created = Execution(
        execution_id=state.execution_id,
        node_id=state.node_id,
        job_id=job_id,
        revision=state.revision,
        created_at=now.wall,
        updated_at=now.wall,
        observed=ObservedState(state_type="pending"),
    )
    step = Step(created, now, None)
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


# --- A desired document gone from the broker (docs/protocol.md, "Desired documents gone missing") ---------
# Absence is no deletion: a broker restarted without persistence has lost every retained message, and an
# agent that stopped its workloads for that would turn a broker incident into an outage. So the execution
# is kept as it is, and marked, with an event, until the orchestrator deletes it or restores its document.
MISSING = "desired_missing_since"


def _on_document(step: Step, event: DesiredReceived | DesiredRejected | DesiredMissing) -> None:
    if isinstance(event, DesiredMissing):
        _missing(step)
        return
    _restored(step)
    if isinstance(event, DesiredReceived):
        _on_desired(step, event.document, event.digest)
    else:
        _on_rejected(step, event)


def _missing(step: Step) -> None:
    state = step.state
    if state.deleting or MISSING in state.details:
        return  # its deletion is under way (no document is what that looks like), or already marked
    step.set_detail(MISSING, step.at())
    step.emit(
        "desired_missing",
        reason="no retained desired document on the broker; kept running as it is until it is deleted "
        "(an empty retained payload) or published again",
    )


def _restored(step: Step) -> None:
    """Any retained payload under the topic, good or bad, ends the mark: the document is there again."""
    since = step.state.details.get(MISSING)
    if since is None:
        return
    step.set_detail(MISSING, None)
    step.emit("desired_restored", missing_since=since)


def _on_desired(step: Step, document: DesiredDocument, digest: str) -> None:
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
        stop(step, "stopped by request")
        return
    # Terminal results are kept: only a pending or stopped execution is (re)started by a new generation.
    current = step.state
    startable = current.state_type in ("pending", "stopped") and not current.active
    if startable and not current.waiting_for_previous and not hand_over(step):
        start(step)


def _on_rejected(step: Step, event: DesiredRejected) -> None:
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
