"""The moves every lifecycle rule is made of: start, stop, settle, fail, forget.

Each takes the decision in the making (:class:`Step`) and changes it; none looks at the event that
caused it. The rules in lifecycle.py, validation.py and updates.py combine them.
"""

from __future__ import annotations

from agent.core import publish, restarts
from agent.core.actions import ClearStatus, Forget, Signal, Spawn
from agent.core.events import Released, RollbackFrom
from agent.core.model import Absent, Execution, ProcessRef
from agent.core.step import Decision, Step
from agent.core.timers import Timer
from agent.protocol import ObservedStateType, RunOutput


def start(step: Step, message: str = "spawning", state_type: ObservedStateType = "starting") -> None:
    """Ask for a new attempt. The spec is fixed from here on, so every attempt runs the same one."""
    state = step.state
    assert state.spec is not None, "a running desired state always has a spec"
    step.set(attempt=state.attempt + 1, spawn_pending=True, started_once=True, superseded=False)
    step.observe(state_type, message)
    step.actions.append(Spawn(state.execution_id, step.state.attempt, state.spec))


def on_started(step: Step, ref: ProcessRef) -> None:
    """The workload runs: its validation window begins (or, with a probe, begins at the first pass)."""
    state = step.state
    assert state.spec is not None
    step.set(
        process=ref,
        spawn_pending=False,
        compute_reference=ref.compute_reference,
        run_output=RunOutput(),
        in_window=True,
        probe_passing=False,
        probe_failures=0,
    )
    if state.state_type == "stopping":  # stop, deletion or failure was decided while it was being spawned
        signal_stop(step, state.observed.message)
        return
    if state.spec.timeout_s is not None and Timer.TIMEOUT not in state.deadlines:
        step.set_timer(
            Timer.TIMEOUT, state.spec.timeout_s
        )  # restarts keep it: it counts from the run's start
        step.set(timeout_at=step.now.wall + state.spec.timeout_s)
    if Timer.DEADLINE not in state.deadlines and not state.ever_stable:
        step.set_timer(Timer.DEADLINE, state.spec.validation.deadline_s)  # a restart keeps the deadline too
    if state.spec.probe is None:
        step.set_timer(Timer.WINDOW, state.spec.validation.window_s)
    step.observe("degraded" if revalidating(state) else "validating", "validating")


def stop(step: Step, message: str) -> None:
    """Stop whatever runs (or is being spawned); an execution with nothing running is simply stopped."""
    state = step.state
    step.set(waiting_for_previous=False)
    if state.publishing is not None:
        # The workload has ended; a stop asked for now ends the publishing too, unpublished.
        publish.abandon(step)
        step.observe("stopped", f"{message}; results not published")
    elif not _halt(step, message) and state.state_type != "stopped":
        step.observe("stopped", message)


def _halt(step: Step, message: str) -> bool:
    """Stop the workload that runs or is being spawned, if any: True if there was one (it ends later)."""
    state = step.state
    if state.process is not None:
        if state.state_type != "stopping":
            signal_stop(step, message)
        return True
    if state.spawn_pending:
        step.observe("stopping", message)  # the spawn reports back; on_started stops it then
        return True
    return False


def signal_stop(step: Step, message: str) -> None:
    state = step.state
    assert state.process is not None
    assert state.spec is not None
    step.actions.append(Signal(state.execution_id, state.process, state.spec.stop.signal))
    step.set_timer(Timer.GRACE, state.spec.stop.grace_s)
    step.observe("stopping", message)


def fail_on_own(step: Step, reason: str) -> None:
    """The agent ends the execution itself (deadline, timeout): stop whatever runs, then land in failed."""
    state = step.state
    if state.active:
        step.set(stop_outcome=reason)  # on_gone lands it in failed once the workload has ended
    if not _halt(step, reason):
        failed(step, reason)


def failed(step: Step, reason: str) -> None:
    """Land in failed. An update that fails before it was ever stable asks its predecessor to take over."""
    step.observe("failed", reason)
    state = step.state
    if not state.ever_stable and state.previous_execution_id is not None and not state.rollback_asked:
        step.set(rollback_asked=True)
        step.tell(state.previous_execution_id, RollbackFrom(state.execution_id))


def on_gone(step: Step, exit_code: int | None, why: str | None, note: str = "") -> Decision:
    """The workload ended (or never started): settle, restart, or finish a stop or deletion.

    ``note`` (leftover processes killed, say) is added to whichever message the status gets.
    """
    state = step.state
    step.set(in_window=False, probe_passing=False)
    if state.state_type == "stopping":
        if state.deleting:
            step.observe("stopped", "stopped for deletion")
            _release_successor(step)  # a stop_first successor must not wait for an execution that is gone
            return forget(step)
        if state.stop_outcome is not None:
            step.set(stop_outcome=None)
            finish_failed(step, state.stop_outcome)
        elif state.superseded:
            step.observe("stopped", f"stopped for the update to {state.next_execution_id}")
            _release_successor(step)
        elif state.desired is not None and state.desired.state_type == "running":
            start(step)  # asked to run again while it was stopping
        else:
            step.observe("stopped", _noted(exit_message("stopped by request", exit_code), note))
        return step.done()
    if exit_code is None and why is None:
        # Lost is published as its own revision; a policy that restarts failures then restarts it too, so a
        # service lost while the agent was away comes back, and a batch job (policy never) stays lost.
        reason = _noted("the workload ended while nobody recorded its exit status", note)
        step.emit("lost", reason=reason)
        step.observe("lost", reason)
        if not restart(step, None, reason).restart:
            # Lost for good: the run is over. lost allows the run's deadline and timeout, as it is published
            # on the way to a restart that keeps them (core/timers.py), so they end here, by name.
            step.clear_timers(Timer.DEADLINE, Timer.TIMEOUT)
        return step.done()
    why = _noted(why or exit_message("exited", exit_code), note)
    verdict = restart(step, exit_code, why)
    if not verdict.restart:
        settle(step, exit_code, why, verdict)
    return step.done()


def _noted(message: str, note: str) -> str:
    return f"{message}; {note}" if note else message


def _release_successor(step: Step) -> None:
    state = step.state
    if state.superseded and state.next_execution_id is not None:
        step.tell(state.next_execution_id, Released(state.execution_id, known=True))


def restart(step: Step, exit_code: int | None, why: str) -> restarts.Verdict:
    """Schedule the next attempt if the restart policy says so (agent/core/restarts.py); its verdict."""
    state = step.state
    assert state.spec is not None
    validation_over = bool(step.due(Timer.DEADLINE))  # armed only while it was never stable
    verdict = restarts.verdict(state.spec.restart, exit_code, state.recent_restarts, validation_over)
    if not verdict.restart:
        return verdict
    step.set(restart_count=state.restart_count + 1, recent_restarts=state.recent_restarts + 1)
    step.set_timer(Timer.RESTART, verdict.delay_s)
    next_at = step.when(Timer.RESTART)
    step.emit("restart", exit_code=exit_code, restart_count=step.state.restart_count, next_restart_at=next_at)
    step.observe(waiting_state(state), f"{why}; restarting at {next_at}", next_restart_at=next_at)
    return verdict


def revalidating(state: Execution) -> bool:
    """The attempt being spawned restarts a stable execution after a crash: it stays degraded until it has
    passed the window again. A run asked for (stable or not) goes through starting and validating."""
    return state.state_type == "degraded"


def waiting_state(state: Execution) -> ObservedStateType:
    """Where a restart is waited for and spawned: a stable execution waits (and re-validates) in degraded."""
    return "degraded" if state.ever_stable else "starting"


def settle(step: Step, exit_code: int | None, why: str, verdict: restarts.Verdict) -> None:
    """The workload ended for good: completed, or failed with the reason (its results published first)."""
    if exit_code == 0:
        if publish.wanted(step, "completed"):
            publish.begin(step, "completed", why)
            return
        step.observe("completed", why)
    elif verdict.reason is restarts.Reason.VALIDATION_OVER:
        finish_failed(step, f"validation failed: {why} and validation.deadline_s has passed")
    elif verdict.reason is restarts.Reason.EXHAUSTED:
        finish_failed(step, f"{why}; {verdict.reason}")
    else:
        finish_failed(step, why)


def finish_failed(step: Step, reason: str) -> None:
    """The workload ended and the execution fails: with ``when: always``, after publishing its results."""
    if publish.wanted(step, "failed"):
        publish.begin(step, "failed", reason)
    else:
        failed(step, reason)


def forget(step: Step) -> Decision:
    eid = step.state.execution_id
    publish.abandon(step)
    step.actions += [ClearStatus(eid), Forget(eid, step.state.job_id)]
    return Absent(execution_id=eid, node_id=step.state.node_id, revision=step.state.revision), step.actions


def exit_message(prefix: str, exit_code: int | None) -> str:
    return prefix if exit_code is None else f"{prefix} with exit code {exit_code}"
