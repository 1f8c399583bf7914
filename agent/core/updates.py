"""Updates and autonomous rollback between executions of this node (docs/protocol.md).

N names P as ``previous_execution_id``. N tells P ``HandOver``; with ``stop_first`` P stops and tells N
``Released``, and only then does N start; with ``start_first`` N starts at once and tells P
``SuccessorStable`` when it is stable, and P stops. If N fails before it was ever stable it tells P
``RollbackFrom``; P, if it was stable and the orchestrator has not given it a newer generation since,
runs again (or simply keeps running) and answers ``RolledBack``. At most once per failed N; a P that is
already stable never asks its own predecessor, so there are no rollback loops.
"""

from __future__ import annotations

from agent.core.actions import Tell
from agent.core.clock import Now
from agent.core.events import HandOver, Mail, Released, RollbackFrom, RolledBack, SuccessorStable
from agent.core.model import Absent, Execution
from agent.core.moves import start, stop
from agent.core.step import Decision, Step
from agent.core.timers import Timer


def hand_over(step: Step) -> bool:
    """N is about to run for the first time: tell P. True if N must wait for P to stop first."""
    state = step.state
    assert state.spec is not None
    previous = state.previous_execution_id
    if previous is None or state.handover_sent:
        return False
    strategy = state.spec.update_strategy
    step.set(handover_sent=True)
    step.tell(previous, HandOver(state.execution_id, strategy))
    if strategy != "stop_first":
        return False
    step.set(waiting_for_previous=True)
    step.observe("pending", f"waiting for {previous} to stop (update_strategy stop_first)")
    return True


def on_mail(state: Execution | Absent, mail: Mail, now: Now) -> Decision:
    if isinstance(state, Absent):
        if isinstance(mail, HandOver):  # an update from an execution this node does not know: N just starts
            return state, [Tell(mail.successor, Released(state.execution_id, known=False))]
        return state, []
    step = Step.of(state, now)
    match mail:
        case HandOver(successor=successor, strategy=strategy):
            step.set(next_execution_id=successor, handover_generation=state.generation)
            if strategy == "stop_first":
                _retire(step, f"for the update to {successor}")
                if not step.state.active:
                    step.tell(successor, Released(state.execution_id, known=True))
        case Released():
            if state.waiting_for_previous:
                step.set(waiting_for_previous=False)
                wanted = state.desired is not None and state.desired.state_type == "running"
                if wanted and state.state_type == "pending" and not state.active:
                    start(step)
        case SuccessorStable(successor=successor):
            if state.next_execution_id == successor and state.generation == state.handover_generation:
                _retire(step, f"for the update to {successor}, which is stable")
        case RollbackFrom(successor=successor):
            _roll_back(step, successor)
        case RolledBack(previous=previous):
            step.set_detail("rolled_back_to", previous)
    return step.done()


def _retire(step: Step, why: str) -> None:
    """Stop P for its successor, if anything of it runs or is about to; a finished P is left as it is."""
    state = step.state
    if state.active or Timer.RESTART in state.deadlines:
        step.set(superseded=True)
        stop(step, f"stopping {why}" if state.active else f"stopped {why}")


def _roll_back(step: Step, successor: str) -> None:
    state = step.state
    already = (state.details.get("rollback") or {}).get("from") == successor
    if (
        not state.ever_stable
        or state.next_execution_id != successor
        or state.generation != state.handover_generation  # a newer generation from the orchestrator wins
        or already
        or not (state.active or state.superseded)  # a P that had finished (completed, failed) stays finished
        or state.desired is None
        or state.desired.state_type != "running"
    ):
        return
    step.set_detail("rollback", {"from": successor, "at": step.at()})
    step.emit("rollback", **{"from": successor, "to": state.execution_id})
    step.tell(successor, RolledBack(state.execution_id))
    if not state.active:  # stop_first: P had stopped for N; it runs again, through starting and validating
        step.set(superseded=False, recent_restarts=0)
        start(step, f"rolling back from {successor}")
